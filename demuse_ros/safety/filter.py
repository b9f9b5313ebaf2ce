"""The safety filter: always between a command source (policy, teleop) and the servo controller.

Two gates, both counted by reason:

* :meth:`SafetyFilter.check_chunk` vets a chunk of timestamped TCP waypoints
  before the servo controller accepts it. Any non-finite value, a waypoint
  outside the workspace box, a linear or angular speed or acceleration above its
  limit (between consecutive waypoints, and from the current pose to the first
  one), or non-increasing stamps rejects the **whole** chunk, and the arm keeps
  holding. A partly executed unsafe chunk is worse than a pause.
* :meth:`SafetyFilter.limit_step` runs every servo tick on the interpolated
  target and clamps the step from the previous command to ``max_step_m`` /
  ``max_step_rad``. It is the last line against anything that slipped through.

A force/torque reading above its limit latches a protective hold
(:meth:`observe_wrench`): every chunk is rejected until :meth:`reset`.
Poses are ``[x, y, z, rx, ry, rz]`` (m, rotation vector rad) in the base frame.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from demuse_ros.config import ConfigError, param, validate_fields
from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix


@dataclass(frozen=True)
class SafetyConfig:
    """Limits of the safety filter (``arm_node: ros__parameters: safety:``)."""

    workspace_min_m: tuple[float, float, float] = param(
        (-1.2, -0.8, 0.005),
        doc="Lower corner of the allowed TCP box (base frame).",
        unit="m",
        range=(-2.0, 2.0),
    )
    workspace_max_m: tuple[float, float, float] = param(
        (0.2, 0.8, 1.0),
        doc="Upper corner of the allowed TCP box (base frame).",
        unit="m",
        range=(-2.0, 2.0),
    )
    max_tcp_speed_m_s: float = param(
        0.25, doc="Largest TCP linear speed a chunk may ask for.", unit="m/s", range=(0.001, 3.0)
    )
    max_tcp_angular_speed_rad_s: float = param(
        1.0, doc="Largest TCP angular speed.", unit="rad/s", range=(0.001, 3.14)
    )
    max_tcp_accel_m_s2: float = param(
        2.5,
        doc="Largest TCP linear acceleration between waypoints.",
        unit="m/s^2",
        range=(0.01, 150.0),
    )
    max_tcp_angular_accel_rad_s2: float = param(
        10.0, doc="Largest TCP angular acceleration.", unit="rad/s^2", range=(0.01, 100.0)
    )
    max_step_m: float = param(
        0.004,
        doc="Largest TCP translation per servo tick (125 Hz: 0.5 m/s).",
        unit="m",
        range=(1e-5, 0.05),
    )
    max_step_rad: float = param(
        0.016, doc="Largest TCP rotation per servo tick.", unit="rad", range=(1e-5, 0.2)
    )
    max_force_n: float = param(
        40.0,
        doc="Measured force magnitude that latches a protective hold.",
        unit="N",
        range=(0.1, 500.0),
    )
    max_torque_nm: float = param(
        4.0,
        doc="Measured torque magnitude that latches a protective hold.",
        unit="N·m",
        range=(0.01, 100.0),
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if any(lo >= hi for lo, hi in zip(self.workspace_min_m, self.workspace_max_m, strict=True)):
            raise ConfigError(
                f"= {self.workspace_min_m} must be below workspace_max_m = {self.workspace_max_m} "
                "on every axis",
                key="workspace_min_m",
            )


class Verdict(NamedTuple):
    """The filter's answer for one chunk."""

    ok: bool
    reason: str = ""  # one of REASONS when not ok
    detail: str = ""


REASONS = (
    "non_finite",
    "bad_stamps",
    "workspace",
    "speed",
    "angular_speed",
    "accel",
    "angular_accel",
    "protective_hold",
    "step_clamped",
)


def _rotation_angle(r0: np.ndarray, r1: np.ndarray) -> float:
    """Angle (rad) of the rotation from rotation vector ``r0`` to ``r1``."""
    return float(np.linalg.norm(matrix_to_rotvec(rotvec_to_matrix(r1) @ rotvec_to_matrix(r0).T)))


class SafetyFilter:
    """Vets waypoint chunks, clamps servo steps, latches force holds; counts interventions."""

    def __init__(self, config: SafetyConfig | None = None) -> None:
        self.config = config or SafetyConfig()
        self._lo = np.asarray(self.config.workspace_min_m, dtype=float)
        self._hi = np.asarray(self.config.workspace_max_m, dtype=float)
        self.interventions: Counter[str] = Counter()
        self.hold_reason = ""

    # ------------------------------------------------------------------ chunks
    def check_chunk(
        self, current_pose: np.ndarray, t_now_ns: int, t_ns: np.ndarray, poses: np.ndarray
    ) -> Verdict:
        """Vet waypoints ``poses`` (N, 6) at absolute times ``t_ns`` (N,) from ``current_pose``."""
        verdict = self._check(
            np.asarray(current_pose, float),
            int(t_now_ns),
            np.asarray(t_ns),
            np.asarray(poses, float),
        )
        if not verdict.ok:
            self.interventions[verdict.reason] += 1
        return verdict

    def _check(self, pose0: np.ndarray, t0: int, t_ns: np.ndarray, poses: np.ndarray) -> Verdict:
        c = self.config
        if self.hold_reason:
            return Verdict(
                False, "protective_hold", f"holding after {self.hold_reason}; reset first"
            )
        if poses.ndim != 2 or poses.shape[1] != 6 or len(t_ns) != len(poses) or len(poses) == 0:
            return Verdict(
                False,
                "bad_stamps",
                f"expected (N, 6) poses with N stamps, got {poses.shape} and {len(t_ns)}",
            )
        if not (np.isfinite(poses).all() and np.isfinite(pose0).all()):
            return Verdict(False, "non_finite", "NaN or Inf in the waypoints or the current pose")
        times = np.concatenate([[t0], t_ns.astype(np.int64)])
        if np.any(np.diff(times) <= 0):
            return Verdict(False, "bad_stamps", "waypoint times must increase and lie after now")
        outside = np.any((poses[:, :3] < self._lo) | (poses[:, :3] > self._hi), axis=1)
        if outside.any():
            i = int(np.argmax(outside))
            return Verdict(
                False,
                "workspace",
                f"waypoint {i} at {np.round(poses[i, :3], 3).tolist()} "
                f"m is outside the box {self._lo.tolist()}..{self._hi.tolist()}",
            )
        path = np.vstack([pose0, poses])
        dt = np.diff(times) * 1e-9
        v = np.linalg.norm(np.diff(path[:, :3], axis=0), axis=1) / dt
        w = (
            np.array([_rotation_angle(path[i, 3:], path[i + 1, 3:]) for i in range(len(poses))])
            / dt
        )
        for values, limit, reason, unit in (
            (v, c.max_tcp_speed_m_s, "speed", "m/s"),
            (w, c.max_tcp_angular_speed_rad_s, "angular_speed", "rad/s"),
        ):
            if values.max() > limit:
                i = int(np.argmax(values))
                return Verdict(
                    False, reason, f"segment {i} needs {values[i]:.3f} {unit} > {limit} {unit}"
                )
        if len(poses) >= 2:
            # Accelerations between consecutive segments (velocity vectors, not speeds).
            vel = np.diff(path[:, :3], axis=0) / dt[:, None]
            acc = np.linalg.norm(np.diff(vel, axis=0), axis=1) / (0.5 * (dt[1:] + dt[:-1]))
            ang_acc = np.abs(np.diff(w)) / (0.5 * (dt[1:] + dt[:-1]))
            for values, limit, reason, unit in (
                (acc, c.max_tcp_accel_m_s2, "accel", "m/s^2"),
                (ang_acc, c.max_tcp_angular_accel_rad_s2, "angular_accel", "rad/s^2"),
            ):
                if values.max() > limit:
                    i = int(np.argmax(values))
                    return Verdict(
                        False,
                        reason,
                        f"waypoint {i + 1} needs {values[i]:.2f} {unit} > {limit} {unit}",
                    )
        return Verdict(True)

    # ------------------------------------------------------------------ servo ticks
    def limit_step(self, previous: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, bool]:
        """Clamp the per-tick step from ``previous`` to ``target``; returns (pose, clamped).

        A non-finite target returns ``previous`` (hold) and counts as ``non_finite``.
        """
        c = self.config
        previous, target = np.asarray(previous, float), np.asarray(target, float)
        if not np.isfinite(target).all():
            self.interventions["non_finite"] += 1
            return previous.copy(), True
        out = target.copy()
        clamped = False
        dp = target[:3] - previous[:3]
        dist = float(np.linalg.norm(dp))
        if dist > c.max_step_m:
            out[:3] = previous[:3] + dp * (c.max_step_m / dist)
            clamped = True
        R0 = rotvec_to_matrix(previous[3:])
        rel = matrix_to_rotvec(rotvec_to_matrix(target[3:]) @ R0.T)
        angle = float(np.linalg.norm(rel))
        if angle > c.max_step_rad:
            out[3:] = matrix_to_rotvec(rotvec_to_matrix(rel * (c.max_step_rad / angle)) @ R0)
            clamped = True
        if clamped:
            self.interventions["step_clamped"] += 1
        return out, clamped

    # ------------------------------------------------------------------ force/torque
    def observe_wrench(self, wrench: np.ndarray) -> bool:
        """Feed a measured wrench (N, N·m); returns True while a protective hold is latched."""
        c = self.config
        w = np.asarray(wrench, float)
        force, torque = float(np.linalg.norm(w[:3])), float(np.linalg.norm(w[3:]))
        if not self.hold_reason:
            if not math.isfinite(force + torque):
                self.hold_reason = "non-finite force/torque reading"
            elif force > c.max_force_n:
                self.hold_reason = f"force {force:.1f} N > {c.max_force_n} N"
            elif torque > c.max_torque_nm:
                self.hold_reason = f"torque {torque:.2f} N·m > {c.max_torque_nm} N·m"
            if self.hold_reason:
                self.interventions["protective_hold"] += 1
        return bool(self.hold_reason)

    def hold(self, reason: str) -> None:
        """Latch a protective hold for a reason found outside the wrench (e.g. no F/T data)."""
        if not self.hold_reason:
            self.hold_reason = reason
            self.interventions["protective_hold"] += 1

    def reset(self) -> None:
        """Clear a latched protective hold (an explicit operator action)."""
        self.hold_reason = ""

    def stats(self) -> dict[str, int]:
        """Interventions by reason (every reason listed, zeros included)."""
        return {reason: self.interventions.get(reason, 0) for reason in REASONS}
