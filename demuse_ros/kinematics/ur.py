"""UR10 / UR10e kinematics from the standard DH table.

Forward kinematics, the geometric Jacobian and a damped-least-squares inverse
kinematics seeded near a given configuration (what ``get_inverse_kin(pose,
qnear)`` does on the controller). Poses are ``[x, y, z, rx, ry, rz]`` in the
robot base frame (metres, rotation vector in radians); joint vectors run
shoulder_pan … wrist_3 (radians).

DH values: ``Universal_Robots_ROS2_Description/config/ur10*/default_kinematics.yaml``
and UR's DH article (standard DH, α = [π/2, 0, 0, π/2, −π/2, 0]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class URModel:
    """Kinematic parameters and limits of one UR arm model."""

    name: str
    d: tuple[float, ...]  # m
    a: tuple[float, ...]  # m
    alpha: tuple[float, ...]  # rad
    joint_velocity_limits_rad_s: tuple[float, ...]
    joint_position_limits_rad: tuple[float, ...]  # symmetric ±limit per joint
    payload_kg: float


_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
_VEL = (2.094, 2.094, 3.14, 3.14, 3.14, 3.14)  # 120°/s base+shoulder, 180°/s the rest
_POS = (2 * math.pi, 2 * math.pi, math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi)

UR10 = URModel(
    "UR10",
    d=(0.1273, 0.0, 0.0, 0.163941, 0.1157, 0.0922),
    a=(0.0, -0.612, -0.5723, 0.0, 0.0, 0.0),
    alpha=_ALPHA,
    joint_velocity_limits_rad_s=_VEL,
    joint_position_limits_rad=_POS,
    payload_kg=10.0,
)
UR10E = URModel(
    "UR10e",
    d=(0.1807, 0.0, 0.0, 0.17415, 0.11985, 0.11655),
    a=(0.0, -0.6127, -0.57155, 0.0, 0.0, 0.0),
    alpha=_ALPHA,
    joint_velocity_limits_rad_s=_VEL,
    joint_position_limits_rad=_POS,
    payload_kg=12.5,
)
MODELS: dict[str, URModel] = {"ur10": UR10, "ur10e": UR10E}


class IKError(RuntimeError):
    """No joint solution reaches the pose within tolerance from the given seed."""


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


def canonical_rotvec(rv: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The rotation vector of ``rv``'s rotation nearest ``reference``.

    A rotation by θ about n is also ``(θ − 2π)·n``; near θ = π (a tool pointing
    down, the usual UR pose) the controller reports either, so a learned policy
    would see its state jump between ``r`` and about ``−r``. Picking the
    representation nearest a fixed reference moves that discontinuity to the
    orientations farthest from it. Works on ``(..., 3)`` arrays.
    """
    rv = np.asarray(rv, dtype=np.float64)
    theta = np.linalg.norm(rv, axis=-1, keepdims=True)
    axis = np.divide(rv, theta, out=np.zeros_like(rv), where=theta > 1e-12)
    other = rv - 2.0 * np.pi * axis
    near = np.linalg.norm(rv - reference, axis=-1, keepdims=True)
    far = np.linalg.norm(other - reference, axis=-1, keepdims=True)
    return np.where(far < near, other, rv)


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


def pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """``[x, y, z, rx, ry, rz]`` → 4×4 homogeneous transform."""
    pose = np.asarray(pose, dtype=float)
    T = np.eye(4)
    T[:3, :3] = rotvec_to_matrix(pose[3:6])
    T[:3, 3] = pose[:3]
    return T


def matrix_to_pose(T: np.ndarray) -> np.ndarray:
    """4×4 homogeneous transform → ``[x, y, z, rx, ry, rz]``."""
    return np.concatenate([T[:3, 3], matrix_to_rotvec(T[:3, :3])])


class URKinematics:
    """FK, Jacobian and IK of a UR arm with an optional TCP offset (flange → TCP).

    Written for the servo loop: no scipy in the hot path and few allocations
    (FK ~20 µs, a servo-step IK ~0.1–0.3 ms on a 2-core CPU).

    Args:
        model: :data:`UR10` or :data:`UR10E`.
        tcp_offset: ``[x, y, z, rx, ry, rz]`` of the TCP in the flange frame
            (what ``set_tcp`` takes on the controller).
    """

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
        """Joint angles reaching ``pose``, found from ``q_near`` (damped least squares).

        Returns the solution on the branch of ``q_near`` (the arm configuration does
        not flip), which is what a servo loop wants.

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
