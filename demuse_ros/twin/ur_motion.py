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
* :class:`Freedrive` — ``teach_mode`` / ``freedrive_mode``: the arm does not hold a
  position; the setpoint follows the measured joints (the stiff plant servo then
  only compensates gravity and damps), and an operator's hand
  (:meth:`Freedrive.guide`, a TCP twist for a while) moves it.

Kinematics: :class:`~demuse_ros.kinematics.URKinematics` (fast enough for IK in the
2 ms e-Series cycle).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from demuse_ros.kinematics.ur import URKinematics, matrix_to_rotvec, rotvec_to_matrix


class Motion(Protocol):
    """A motion generator: ``kind`` is "move", "servo", "speed" or "stop"."""

    kind: str

    def step(
        self, q: np.ndarray, qd: np.ndarray, dt: float
    ) -> tuple[np.ndarray, np.ndarray, bool]: ...


SERVO_REFERENCE_GAIN = 300.0  # servoj gain and lookahead at which ω = ω_ref
SERVO_REFERENCE_LOOKAHEAD_S = 0.1


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

    def __init__(self, kin: URKinematics, q0: np.ndarray, pose1: np.ndarray, v: float, a: float):
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

    def __init__(self, kin: URKinematics, q: np.ndarray, qd: np.ndarray, vmax: np.ndarray):
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

    def __init__(self, kin: URKinematics, a: float) -> None:
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


#: How fast the emulated operator's hand reaches its twist (m/s² and rad/s²).
HAND_ACCEL = 1.0


class Freedrive:
    """Teach mode: compliant arm, moved by an operator's hand (module docstring).

    The twin has no hand to push the arm with, so :meth:`guide` stands in for one:
    the tool moves at a TCP twist (base frame) for ``seconds`` (ramped at
    :data:`HAND_ACCEL`, through the Jacobian like ``speedl``); without a hand the
    setpoint is the measured position ``actual()``, so nothing holds the arm.
    Never finishes by itself (``endTeachMode`` ends it).
    """

    kind = "freedrive"

    def __init__(self, kin: URKinematics, vmax: np.ndarray, actual: Callable[[], np.ndarray]):
        self.kin, self.vmax, self.actual = kin, vmax, actual
        self.hand: SpeedLinear | None = None

    def guide(self, q: np.ndarray, qd: np.ndarray, twist: np.ndarray, seconds: float) -> None:
        """The hand moves the tool at ``twist`` (m/s, rad/s) for ``seconds`` from now."""
        hand = self.hand or SpeedLinear(self.kin, q, qd, self.vmax)
        hand.set_target(np.asarray(twist, dtype=float), HAND_ACCEL, max(seconds, 1e-9), True)
        self.hand = hand

    def step(self, q: np.ndarray, qd: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, bool]:
        hand = self.hand
        if hand is not None:
            q1, qd1, _ = hand.step(q, qd, dt)
            if hand.remaining_s <= 0.0 and not np.any(hand.twist):
                self.hand = None  # let go
            return q1, qd1, False
        return np.array(self.actual(), dtype=float), np.zeros(6), False
