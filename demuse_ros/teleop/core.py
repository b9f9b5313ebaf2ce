"""Teleoperation, device independent: the command, the limits, the twist → waypoint math.

An input device (keyboard, SpaceMouse) produces :class:`TeleopCommand`\\ s: a TCP
twist in the robot base frame (m/s, rad/s), the deadman/enable flag, the operator's
speed scale and gripper targets, stamped with the host time of the device read.
:class:`~demuse_ros.teleop.controller.TeleopController` turns them into short
chunks of timestamped TCP waypoints for the arm driver, which vets them with the
same safety filter as the policy's.

The pure functions here (:func:`shape_twist`, :func:`ramp_twist`,
:func:`integrate_twist`) are the whole motion law, tested without a robot:

1. per axis, the device twist is normalized by the full-scale speed, a deadband is
   removed (rescaled so the output stays continuous) and clipped to ±1;
2. times the full-scale speed and the speed scale, then the linear and the
   angular norms are capped at the scaled full-scale speeds (diagonals are not faster);
3. the commanded twist approaches that target at most at the acceleration limits;
4. it is integrated into poses: position + v·dt, rotation exp(ω·dt)·R (base frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from demuse_ros.config.schema import ConfigError, param, validate_fields
from demuse_ros.drivers.ft_signal import MAX_FORCE_N, MAX_WIDTH_M
from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix

#: The RG2's grip force range (commands outside it are clipped by the gripper).
MIN_GRIP_FORCE_N = 3.0

#: Teleop speeds and accelerations may use at most this fraction of the safety
#: filter's limits: a chunk's first segment starts from the arm's servo target at
#: the moment the driver receives it, which can ask for up to dt/(dt - delay) of
#: the commanded speed; the rest is margin. Checked when the controller starts.
SAFETY_FRACTION = 0.6


@dataclass(frozen=True)
class TeleopConfig:
    """Teleoperation limits and steps (``teleop:`` in the policy node's parameters)."""

    rate_hz: float = param(
        10.0, doc="Chunks sent per second (the policy's rate).", unit="Hz", range=(2.0, 100.0)
    )
    horizon_steps: int = param(
        3,
        doc="Waypoints per chunk, one period apart: how far the arm runs on if teleop stalls.",
        range=(1, 20),
    )
    max_linear_speed_m_s: float = param(
        0.1,
        doc="Full-scale TCP speed (speed scale 1).",
        unit="m/s",
        range=(0.001, 1.0),
    )
    max_angular_speed_rad_s: float = param(
        0.4, doc="Full-scale TCP angular speed.", unit="rad/s", range=(0.001, 2.0)
    )
    max_linear_accel_m_s2: float = param(
        0.5, doc="TCP acceleration toward the commanded speed.", unit="m/s^2", range=(0.01, 10.0)
    )
    max_angular_accel_rad_s2: float = param(
        2.0, doc="TCP angular acceleration.", unit="rad/s^2", range=(0.01, 50.0)
    )
    speed_scale: float = param(
        0.5, doc="Speed scale at start (fraction of full scale).", range=(0.05, 1.0)
    )
    speed_scale_step: float = param(0.1, doc="Speed scale change per +/- key.", range=(0.01, 0.5))
    deadband: float = param(
        0.1,
        doc="Per-axis deadband as a fraction of full scale (SpaceMouse rest noise).",
        range=(0.0, 0.5),
    )
    stale_timeout_s: float = param(
        0.3,
        doc="No device update for this long: hold (plan cut, arm stopped).",
        unit="s",
        range=(0.05, 5.0),
    )
    gripper_open_width_m: float = param(
        MAX_WIDTH_M, doc="Width the open key goes to.", unit="m", range=(0.0, MAX_WIDTH_M)
    )
    gripper_force_n: float = param(
        20.0,
        doc="Grip force at start.",
        unit="N",
        range=(MIN_GRIP_FORCE_N, MAX_FORCE_N),
    )
    gripper_force_step_n: float = param(
        5.0, doc="Grip force change per [ / ] key.", unit="N", range=(0.5, 20.0)
    )

    def __post_init__(self) -> None:
        validate_fields(self)

    @property
    def period_ns(self) -> int:
        return round(1e9 / self.rate_hz)

    @property
    def full_scale(self) -> np.ndarray:
        """Full-scale twist per axis (6,): m/s ×3, rad/s ×3."""
        return np.array([self.max_linear_speed_m_s] * 3 + [self.max_angular_speed_rad_s] * 3)

    def check_against(self, safety: object) -> None:
        """Raise :class:`ConfigError` unless speeds and accelerations are well under the arm
        safety filter's (``safety``: a :class:`~demuse_ros.safety.filter.SafetyConfig`)."""
        pairs = (
            ("max_linear_speed_m_s", "max_tcp_speed_m_s"),
            ("max_angular_speed_rad_s", "max_tcp_angular_speed_rad_s"),
            ("max_linear_accel_m_s2", "max_tcp_accel_m_s2"),
            ("max_angular_accel_rad_s2", "max_tcp_angular_accel_rad_s2"),
        )
        for mine, theirs in pairs:
            limit = SAFETY_FRACTION * float(getattr(safety, theirs))
            if getattr(self, mine) > limit:
                raise ConfigError(
                    f"= {getattr(self, mine)} exceeds {SAFETY_FRACTION:.0%} of the arm safety "
                    f"filter's {theirs} = {getattr(safety, theirs)}; set at most {limit:.3g}",
                    key=mine,
                )


@dataclass(frozen=True)
class TeleopCommand:
    """What an input device asks for at host time ``t_ns``.

    Attributes:
        t_ns: Host monotonic time of the device read this came from (staleness).
        twist: TCP twist in the base frame, ``[vx, vy, vz, wx, wy, wz]`` (m/s, rad/s);
            a device's full deflection is the config's full-scale speed.
        enable: The deadman: False = no motion, the arm holds.
        speed_scale: Fraction of the twist to execute (None: keep the current one).
        gripper_width_m: Gripper target width (None: keep the current target).
        gripper_force_n: Grip force (None: keep the current one).
    """

    t_ns: int
    twist: np.ndarray = field(default_factory=lambda: np.zeros(6))
    enable: bool = False
    speed_scale: float | None = None
    gripper_width_m: float | None = None
    gripper_force_n: float | None = None


def shape_twist(twist: np.ndarray, config: TeleopConfig, speed_scale: float) -> np.ndarray:
    """Device twist → target twist: deadband, full-scale clip, speed scale, norm caps."""
    full = config.full_scale
    x = np.asarray(twist, dtype=float) / full
    x = np.where(np.isfinite(x), x, 0.0)
    d = config.deadband
    x = np.sign(x) * np.clip((np.abs(x) - d) / (1.0 - d), 0.0, 1.0)
    scale = float(np.clip(speed_scale, 0.0, 1.0))
    out = x * full * scale
    for sl, cap in ((slice(0, 3), full[0] * scale), (slice(3, 6), full[3] * scale)):
        n = float(np.linalg.norm(out[sl]))
        if n > cap:
            out[sl] *= cap / n
    return out


def ramp_twist(
    current: np.ndarray, target: np.ndarray, config: TeleopConfig, dt_s: float
) -> np.ndarray:
    """``current`` moved toward ``target`` by at most the acceleration limits over ``dt_s``."""
    out = np.array(current, dtype=float)
    for sl, accel in (
        (slice(0, 3), config.max_linear_accel_m_s2),
        (slice(3, 6), config.max_angular_accel_rad_s2),
    ):
        dv = target[sl] - out[sl]
        n = float(np.linalg.norm(dv))
        step = accel * dt_s
        out[sl] = target[sl] if n <= step else out[sl] + dv * (step / n)
    return out


def integrate_twist(pose: np.ndarray, twist: np.ndarray, dt_s: float) -> np.ndarray:
    """The pose after moving at ``twist`` (base frame) for ``dt_s``."""
    out = np.array(pose, dtype=float)
    out[:3] += twist[:3] * dt_s
    w = np.asarray(twist[3:], dtype=float) * dt_s
    if np.any(w):
        out[3:] = matrix_to_rotvec(rotvec_to_matrix(w) @ rotvec_to_matrix(out[3:]))
    return out


def plan_horizon(
    start: np.ndarray,
    twist: np.ndarray,
    target: np.ndarray,
    config: TeleopConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """``horizon_steps`` poses one period apart from ``start``, the twist ramping from
    ``twist`` toward ``target`` (the operator is assumed to keep the command).

    Returns ``(poses (H, 6), twists (H, 6))``; ``twists[0]`` is the twist of the first step.
    """
    dt = 1.0 / config.rate_hz
    poses, twists = [], []
    pose, v = np.asarray(start, dtype=float), np.asarray(twist, dtype=float)
    for _ in range(config.horizon_steps):
        v = ramp_twist(v, target, config, dt)
        pose = integrate_twist(pose, v, dt)
        poses.append(pose)
        twists.append(v)
    return np.array(poses), np.array(twists)


__all__ = [
    "MIN_GRIP_FORCE_N",
    "SAFETY_FRACTION",
    "TeleopCommand",
    "TeleopConfig",
    "integrate_twist",
    "plan_horizon",
    "ramp_twist",
    "shape_twist",
]
