"""Motion generators of the emulated UR controller: one joint setpoint per control period.

Every generator is a small state machine stepped with the previous setpoint
``(q, qd)`` and the period ``dt``; it returns the next setpoint and whether it is
finished (a synchronous command completes when its generator finishes). Because
each generator starts from the current setpoint, switching between them
(servo → stop, move → servo, …) never jumps in position.

* :class:`ServoTracker` — ``servoj`` (and ``servol`` after IK). Model: the target is
  followed through a **critically damped second-order filter**
  ``q̈ = ω²(q_t − q) − 2ω q̇``, integrated exactly for a target held constant over
  the period (stable for any ``ω·dt``). Its bandwidth is
  ``ω = ω_ref · sqrt((gain / 300) · (0.1 / lookahead_time))`` with ``gain`` clamped
  to [100, 2000] and ``lookahead_time`` to [0.03, 0.2] s, so a higher gain tracks
  faster and a longer lookahead smooths more and lags more. The steady-state lag on
  a constant-velocity target is ``2/ω`` (40 ms at the defaults gain 300, lookahead
  0.1, ``ω_ref`` = 50 rad/s; 8.5 ms at gain 2000 / lookahead 0.03). The step is then
  limited to the joint acceleration limit and the per-joint velocity limits (vector
  scaled, direction kept), with a discrete braking bound (``q̇²/2a + 1.5 q̇ dt ≤ |e|``)
  while limited, so that large target jumps overshoot by a few mrad at most. ``t``,
  ``a`` and ``v`` of servoj are ignored (the UR ignores ``a``/``v`` too; the target is
  re-read every period). Parameters: ``ω_ref`` = ``URControllerConfig.servo_bandwidth_rad_s``
  (50), the acceleration limit ``joint_acceleration_limit_rad_s2`` (40, ur_rtde's
  ceiling), the velocity limits of the arm model (2.094 / 3.14 rad/s).
* :class:`JointMove` — ``movej``: synchronous trapezoidal profile, the leading joint
  at ``v``/``a`` (``v`` reduced so that no joint exceeds its velocity limit).
* :class:`LinearMove` — ``movel``: straight line in Cartesian space (orientation by
  slerp) on a trapezoidal profile of the path length at ``v`` m/s, ``a`` m/s² (the
  rotation angle in rad/s when the translation is below 0.1 mm), IK every period
  seeded at the previous setpoint. Starts from rest (no blending).
* :class:`SpeedJoint` / :class:`SpeedLinear` — ``speedj`` / ``speedl``: the commanded
  joint (or TCP, base frame) velocity ramps to the target at ``a`` and falls to zero
  ``time`` seconds after the last command when ``time > 0``; speedl maps the twist
  through the Jacobian (damped least squares).
* :class:`StopJoint` / :class:`StopLinear` — ``stopj`` / ``stopl``: the joint (or TCP)
  speed decays linearly at ``a`` to zero, direction kept.

:class:`FastKinematics` is :class:`~demuse_ros.kinematics.URKinematics` (same DH
model, conventions and IK algorithm; tested equal) without scipy in the loop, fast
enough for IK in the 2 ms e-Series cycle.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from demuse_ros.kinematics import IKError, URModel


class Motion(Protocol):
    """A motion generator: ``kind`` is "move", "servo", "speed" or "stop"."""

    kind: str

    def step(
        self, q: np.ndarray, qd: np.ndarray, dt: float
    ) -> tuple[np.ndarray, np.ndarray, bool]: ...


SERVO_REFERENCE_GAIN = 300.0  # servoj gain and lookahead at which ω = ω_ref
SERVO_REFERENCE_LOOKAHEAD_S = 0.1


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Rotation vector → 3×3 rotation matrix (Rodrigues)."""
    x, y, z = float(rv[0]), float(rv[1]), float(rv[2])
    th = math.sqrt(x * x + y * y + z * z)
    if th < 1e-12:
        return np.array([[1.0, -z, y], [z, 1.0, -x], [-y, x, 1.0]])
    x, y, z = x / th, y / th, z / th
    c, s = math.cos(th), math.sin(th)
    C = 1.0 - c
    return np.array(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ]
    )


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """3×3 rotation matrix → rotation vector (Shepperd's quaternion, robust near π)."""
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = R.tolist()
    tr = r00 + r11 + r22
    best = max(tr, r00, r11, r22)
    if best == tr:
        w = math.sqrt(1.0 + tr) * 0.5
        f = 0.25 / w
        x, y, z = (r21 - r12) * f, (r02 - r20) * f, (r10 - r01) * f
    elif best == r00:
        x = math.sqrt(1.0 + 2.0 * r00 - tr) * 0.5
        f = 0.25 / x
        w, y, z = (r21 - r12) * f, (r01 + r10) * f, (r02 + r20) * f
    elif best == r11:
        y = math.sqrt(1.0 + 2.0 * r11 - tr) * 0.5
        f = 0.25 / y
        w, x, z = (r02 - r20) * f, (r01 + r10) * f, (r12 + r21) * f
    else:
        z = math.sqrt(1.0 + 2.0 * r22 - tr) * 0.5
        f = 0.25 / z
        w, x, y = (r10 - r01) * f, (r02 + r20) * f, (r12 + r21) * f
    if w < 0.0:
        w, x, y, z = -w, -x, -y, -z
    n = math.sqrt(x * x + y * y + z * z)
    angle = 2.0 * math.atan2(n, w)
    scale = 2.0 + angle * angle / 12.0 if angle < 1e-3 else angle / math.sin(angle / 2.0)
    return np.array([x * scale, y * scale, z * scale])


class FastKinematics:
    """:class:`~demuse_ros.kinematics.URKinematics` (same DH model, conventions and IK
    algorithm) with fewer allocations and no scipy in the loop: FK ~20 µs and a
    servo-step IK ~0.1–0.3 ms instead of ~0.2 ms / ~1.5 ms, which the 500 Hz cycle needs."""

    def __init__(self, model: URModel, tcp_offset: np.ndarray | None = None) -> None:
        self.model = model
        d, a = np.asarray(model.d, dtype=float), np.asarray(model.a, dtype=float)
        ca, sa = np.cos(model.alpha), np.sin(model.alpha)
        # DH transform of joint i = K0[i] + cos(q_i) KC[i] + sin(q_i) KS[i]
        self._K0, self._KC, self._KS = np.zeros((6, 4, 4)), np.zeros((6, 4, 4)), np.zeros((6, 4, 4))
        self._K0[:, 2, 1], self._K0[:, 2, 2], self._K0[:, 2, 3], self._K0[:, 3, 3] = sa, ca, d, 1.0
        self._KC[:, 0, 0], self._KC[:, 0, 3], self._KC[:, 1, 1], self._KC[:, 1, 2] = 1.0, a, ca, -sa
        self._KS[:, 0, 1], self._KS[:, 0, 2], self._KS[:, 1, 0], self._KS[:, 1, 3] = -ca, sa, 1.0, a
        self.set_tcp_offset(np.zeros(6) if tcp_offset is None else tcp_offset)

    def set_tcp_offset(self, tcp_offset: np.ndarray) -> None:
        self.tcp_offset = np.asarray(tcp_offset, dtype=float).copy()
        self._T_tcp = np.eye(4)
        self._T_tcp[:3, :3] = rotvec_to_matrix(self.tcp_offset[3:])
        self._T_tcp[:3, 3] = self.tcp_offset[:3]

    def frames(self, q: np.ndarray) -> np.ndarray:
        """(7, 4, 4) base-frame transforms of the base and joint frames 1..6 (flange last)."""
        q = np.asarray(q, dtype=float)
        A = self._K0 + np.cos(q)[:, None, None] * self._KC + np.sin(q)[:, None, None] * self._KS
        out = np.empty((7, 4, 4))
        out[0] = np.eye(4)
        out[1] = A[0]
        for i in range(1, 6):
            np.matmul(out[i], A[i], out=out[i + 1])
        return out

    def fk_matrix(self, q: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        return (self.frames(q) if frames is None else frames)[-1] @ self._T_tcp

    def fk(self, q: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        T = self.fk_matrix(q, frames)
        return np.concatenate([T[:3, 3], matrix_to_rotvec(T[:3, :3])])

    def flange_pose(self, q: np.ndarray) -> np.ndarray:
        T = self.frames(q)[-1]
        return np.concatenate([T[:3, 3], matrix_to_rotvec(T[:3, :3])])

    def jacobian(self, q: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        """Geometric TCP Jacobian (rows vx, vy, vz, wx, wy, wz; base frame)."""
        F = self.frames(q) if frames is None else frames
        p_tcp = F[6, :3, :3] @ self._T_tcp[:3, 3] + F[6, :3, 3]
        z = F[:6, :3, 2].T  # (3, 6)
        r = p_tcp[:, None] - F[:6, :3, 3].T
        J = np.empty((6, 6))
        J[0] = z[1] * r[2] - z[2] * r[1]
        J[1] = z[2] * r[0] - z[0] * r[2]
        J[2] = z[0] * r[1] - z[1] * r[0]
        J[3:] = z
        return J

    def ik(
        self,
        pose: np.ndarray,
        q_near: np.ndarray,
        *,
        max_position_error_m: float = 1e-6,
        max_orientation_error_rad: float = 1e-6,
        max_iterations: int = 50,
    ) -> np.ndarray:
        """Damped-least-squares IK from ``q_near`` (the algorithm of ``URKinematics.ik``).

        Raises:
            IKError: No convergence within ``max_iterations``.
        """
        pose = np.asarray(pose, dtype=float)
        R_t, p_t = rotvec_to_matrix(pose[3:]), pose[:3]
        q = np.array(q_near, dtype=float)
        damping2 = 1e-6 * np.eye(6)
        err = np.zeros(6)
        for _ in range(max_iterations):
            frames = self.frames(q)
            T = frames[-1] @ self._T_tcp
            err[:3] = p_t - T[:3, 3]
            err[3:] = matrix_to_rotvec(R_t @ T[:3, :3].T)
            if (
                math.sqrt(err[0] ** 2 + err[1] ** 2 + err[2] ** 2) <= max_position_error_m
                and math.sqrt(err[3] ** 2 + err[4] ** 2 + err[5] ** 2) <= max_orientation_error_rad
            ):
                return q
            J = self.jacobian(q, frames)
            dq = J.T @ np.linalg.solve(J @ J.T + damping2, err)
            step = float(np.max(np.abs(dq)))
            if step > 0.5:
                dq *= 0.5 / step
            q += dq
        raise IKError(
            f"no IK solution for pose {np.round(pose, 4).tolist()} from q_near "
            f"{np.round(np.asarray(q_near, dtype=float), 3).tolist()} (residual "
            f"{np.linalg.norm(err[:3]):.2e} m, {np.linalg.norm(err[3:]):.2e} rad); "
            f"is the pose within the {self.model.name}'s reach?"
        )


def _scale_to_limit(v: np.ndarray, limit: np.ndarray | float) -> tuple[np.ndarray, bool]:
    """``v`` scaled down uniformly so that ``|v_i| <= limit_i``; and whether it was."""
    ratio = float(np.max(np.abs(v) / limit))
    return (v / ratio, True) if ratio > 1.0 else (v, False)


def _dls_solve(J: np.ndarray, twist: np.ndarray, damping: float = 1e-4) -> np.ndarray:
    return J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(6), twist)


class Trapezoid:
    """Trapezoidal (or triangular) velocity profile over ``distance`` with peak ``v``, ``a``."""

    def __init__(self, distance: float, v: float, a: float) -> None:
        self.distance = max(float(distance), 0.0)
        self.a = max(float(a), 1e-6)
        v = max(float(v), 1e-6)
        self.t_acc = v / self.a
        if self.a * self.t_acc**2 >= self.distance:  # triangular: never reaches v
            self.t_acc = math.sqrt(self.distance / self.a)
            v = self.a * self.t_acc
            self.t_flat = 0.0
        else:
            self.t_flat = (self.distance - self.a * self.t_acc**2) / v
        self.v = v
        self.duration = 2.0 * self.t_acc + self.t_flat

    def at(self, t: float) -> tuple[float, float]:
        """Path position and speed at time ``t``."""
        a, ta = self.a, self.t_acc
        if t <= 0.0:
            return 0.0, 0.0
        if t < ta:
            return 0.5 * a * t * t, a * t
        t -= ta
        if t < self.t_flat:
            return 0.5 * a * ta * ta + self.v * t, self.v
        t = ta - (t - self.t_flat)
        if t > 0.0:
            return self.distance - 0.5 * a * t * t, a * t
        return self.distance, 0.0


class JointMove:
    """movej: all joints start and stop together, the leading one at ``v``, ``a``."""

    kind = "move"

    def __init__(self, q0: np.ndarray, q1: np.ndarray, v: float, a: float, vmax: np.ndarray):
        self.q0 = np.array(q0, dtype=float)
        self.target_q = np.array(q1, dtype=float)
        self.delta = self.target_q - self.q0
        dist = float(np.max(np.abs(self.delta)))
        if dist > 0.0:  # the leading joint's speed such that no joint exceeds its limit
            v = min(v, float(np.min(vmax * dist / np.maximum(np.abs(self.delta), 1e-12))))
        self.profile = Trapezoid(dist, v, a)
        self.t = 0.0

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        self.t += dt
        p = self.profile
        if p.distance == 0.0 or self.t >= p.duration:
            return self.target_q.copy(), np.zeros(6), True
        s, sd = p.at(self.t)
        return self.q0 + self.delta * (s / p.distance), self.delta * (sd / p.distance), False


class LinearMove:
    """movel: straight Cartesian line and slerped orientation, IK every period.

    Raises :class:`~demuse_ros.kinematics.IKError` from :meth:`step` if a pose on the
    line has no solution near the previous setpoint.
    """

    kind = "move"

    def __init__(self, kin: FastKinematics, q0: np.ndarray, pose1: np.ndarray, v: float, a: float):
        self.kin = kin
        pose0 = kin.fk(q0)
        self.p0, self.target_pose = pose0[:3], np.array(pose1, dtype=float)
        self.dp = self.target_pose[:3] - self.p0
        self.r0 = rotvec_to_matrix(pose0[3:])
        self.drot = matrix_to_rotvec(rotvec_to_matrix(self.target_pose[3:]) @ self.r0.T)
        length, angle = float(np.linalg.norm(self.dp)), float(np.linalg.norm(self.drot))
        self.profile = Trapezoid(length if length > 1e-4 else angle, v, a)
        self.t = 0.0
        self.target_q: np.ndarray | None = None

    def _pose(self, frac: float) -> np.ndarray:
        rot = rotvec_to_matrix(self.drot * frac) @ self.r0
        return np.concatenate([self.p0 + self.dp * frac, matrix_to_rotvec(rot)])

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        self.t += dt
        p = self.profile
        done = p.distance == 0.0 or self.t >= p.duration
        frac = 1.0 if done else p.at(self.t)[0] / p.distance
        q_new = self.kin.ik(self._pose(frac), q)
        qd_new = np.zeros(6) if done else (q_new - q) / dt
        if done:
            self.target_q = q_new
        return q_new, qd_new, done


class ServoTracker:
    """servoj: critically damped second-order tracking of the latest target (module doc)."""

    kind = "servo"

    def __init__(self, q: np.ndarray, vmax: np.ndarray, amax: float, omega_ref: float) -> None:
        self.target_q = np.array(q, dtype=float)
        self.vmax, self.amax, self.omega_ref = vmax, amax, omega_ref
        self.omega = omega_ref

    @staticmethod
    def bandwidth(omega_ref: float, lookahead_time: float, gain: float) -> float:
        gain = min(max(gain, 100.0), 2000.0)
        lookahead = min(max(lookahead_time, 0.03), 0.2)
        return omega_ref * math.sqrt(
            (gain / SERVO_REFERENCE_GAIN) * (SERVO_REFERENCE_LOOKAHEAD_S / lookahead)
        )

    def set_target(self, q: np.ndarray, lookahead_time: float, gain: float) -> None:
        self.target_q = np.array(q, dtype=float)
        self.omega = self.bandwidth(self.omega_ref, lookahead_time, gain)

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        w, r = self.omega, self.target_q
        e0 = q - r
        c = qd + w * e0
        decay = math.exp(-w * dt)
        e1 = (e0 + c * dt) * decay
        v1 = (qd - w * c * dt) * decay
        a_dt = self.amax * dt
        dv, acc_limited = _scale_to_limit(v1 - qd, a_dt)
        v1 = qd + dv
        if acc_limited:  # large jump: brake in time (discrete: v²/2a + 1.5 v dt <= |e|)
            brake = self.amax * (np.sqrt(2.25 * dt * dt + 2.0 * np.abs(e0) / self.amax) - 1.5 * dt)
            brake = np.maximum(brake, np.abs(qd) - a_dt)  # never decelerate harder than amax
            toward = np.sign(v1) == -np.sign(e0)
            v1 = np.where(toward & (np.abs(v1) > brake), np.sign(v1) * brake, v1)
        v1, vel_limited = _scale_to_limit(v1, self.vmax)
        if acc_limited or vel_limited:
            return q + 0.5 * (qd + v1) * dt, v1, False
        return r + e1, v1, False


class SpeedJoint:
    """speedj: joint velocity ramp at ``a`` (leading joint), zero after ``time`` if > 0."""

    kind = "speed"

    def __init__(self, qd: np.ndarray, vmax: np.ndarray) -> None:
        self.target = np.zeros(6)
        self.a, self.remaining_s, self.vmax = 1.0, math.inf, vmax
        self.qd = np.array(qd, dtype=float)

    def set_target(self, qd: np.ndarray, a: float, time_s: float, fresh: bool) -> None:
        self.target, self.a = np.array(qd, dtype=float), max(a, 1e-6)
        if fresh:
            self.remaining_s = time_s if time_s > 0.0 else math.inf

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        self.remaining_s -= dt
        target = self.target if self.remaining_s > 0.0 else np.zeros(6)
        dv, _ = _scale_to_limit(target - qd, self.a * dt)
        v1, _ = _scale_to_limit(qd + dv, self.vmax)
        return q + 0.5 * (qd + v1) * dt, v1, False


class SpeedLinear:
    """speedl: TCP twist (base frame) ramp at ``a`` (m/s² and rad/s²), mapped by J⁻¹."""

    kind = "speed"

    def __init__(self, kin: FastKinematics, q: np.ndarray, qd: np.ndarray, vmax: np.ndarray):
        self.kin, self.vmax = kin, vmax
        self.twist = kin.jacobian(q) @ qd
        self.target = np.zeros(6)
        self.a, self.remaining_s = 1.0, math.inf

    def set_target(self, xd: np.ndarray, a: float, time_s: float, fresh: bool) -> None:
        self.target, self.a = np.array(xd, dtype=float), max(a, 1e-6)
        if fresh:
            self.remaining_s = time_s if time_s > 0.0 else math.inf

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        self.remaining_s -= dt
        target = self.target if self.remaining_s > 0.0 else np.zeros(6)
        dv = target - self.twist
        for sl in (slice(0, 3), slice(3, 6)):
            n = float(np.linalg.norm(dv[sl]))
            if n > self.a * dt:
                dv[sl] *= self.a * dt / n
        self.twist = self.twist + dv
        v1, _ = _scale_to_limit(_dls_solve(self.kin.jacobian(q), self.twist), self.vmax)
        return q + v1 * dt, v1, False


class StopJoint:
    """stopj: joint speeds decay at ``a`` (leading joint), direction kept."""

    kind = "stop"

    def __init__(self, a: float) -> None:
        self.a = max(a, 1e-6)

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        speed = float(np.max(np.abs(qd)))
        if speed <= self.a * dt:
            return q + 0.5 * qd * dt, np.zeros(6), True
        v1 = qd * (1.0 - self.a * dt / speed)
        return q + 0.5 * (qd + v1) * dt, v1, False


class StopLinear:
    """stopl: TCP linear (and angular) speed decays at ``a``, mapped back through J⁻¹."""

    kind = "stop"

    def __init__(self, kin: FastKinematics, a: float) -> None:
        self.kin, self.a = kin, max(a, 1e-6)

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        if not np.any(qd):
            return q.copy(), np.zeros(6), True
        J = self.kin.jacobian(q)
        twist = J @ qd
        done = True
        for sl in (slice(0, 3), slice(3, 6)):
            n = float(np.linalg.norm(twist[sl]))
            if n > self.a * dt:
                twist[sl] *= 1.0 - self.a * dt / n
                done = False
            else:
                twist[sl] = 0.0
        v1 = np.zeros(6) if done else _dls_solve(J, twist)
        return q + 0.5 * (qd + v1) * dt, v1, done
