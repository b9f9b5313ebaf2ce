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
from scipy.spatial.transform import Rotation


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


def pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """``[x, y, z, rx, ry, rz]`` → 4×4 homogeneous transform."""
    pose = np.asarray(pose, dtype=float)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(pose[3:6]).as_matrix()
    T[:3, 3] = pose[:3]
    return T


def matrix_to_pose(T: np.ndarray) -> np.ndarray:
    """4×4 homogeneous transform → ``[x, y, z, rx, ry, rz]``."""
    return np.concatenate([T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_rotvec()])


def _dh(d: float, a: float, alpha: float, theta: float) -> np.ndarray:
    ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
    return np.array(
        [
            [ct, -st * ca, st * sa, a * ct],
            [st, ct * ca, -ct * sa, a * st],
            [0.0, sa, ca, d],
            [0, 0, 0, 1.0],
        ]
    )


class URKinematics:
    """FK, Jacobian and IK of a UR arm with an optional TCP offset (flange → TCP).

    Args:
        model: :data:`UR10` or :data:`UR10E`.
        tcp_offset: ``[x, y, z, rx, ry, rz]`` of the TCP in the flange frame
            (what ``set_tcp`` takes on the controller).
    """

    def __init__(self, model: URModel = UR10, tcp_offset: np.ndarray | None = None) -> None:
        self.model = model
        self.set_tcp_offset(np.zeros(6) if tcp_offset is None else tcp_offset)

    def set_tcp_offset(self, tcp_offset: np.ndarray) -> None:
        self.tcp_offset = np.asarray(tcp_offset, dtype=float).copy()
        self._T_tcp = pose_to_matrix(self.tcp_offset)

    def frames(self, q: np.ndarray) -> list[np.ndarray]:
        """Base-frame transforms of the base and each joint frame 1..6 (the flange last)."""
        m = self.model
        T = np.eye(4)
        out = [T]
        for i in range(6):
            T = T @ _dh(m.d[i], m.a[i], m.alpha[i], float(q[i]))
            out.append(T)
        return out

    def fk_matrix(self, q: np.ndarray) -> np.ndarray:
        """Base → TCP transform."""
        return self.frames(q)[-1] @ self._T_tcp

    def fk(self, q: np.ndarray) -> np.ndarray:
        """TCP pose ``[x, y, z, rx, ry, rz]`` for joint angles ``q``."""
        return matrix_to_pose(self.fk_matrix(q))

    def flange_pose(self, q: np.ndarray) -> np.ndarray:
        """Tool flange pose (TCP offset ignored)."""
        return matrix_to_pose(self.frames(q)[-1])

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """Geometric Jacobian (6×6) of the TCP: rows vx, vy, vz, wx, wy, wz in the base frame."""
        frames = self.frames(q)
        p_tcp = (frames[-1] @ self._T_tcp)[:3, 3]
        axes = np.array([T[:3, 2] for T in frames[:6]])  # (6, 3) joint axes z_0..z_5
        origins = np.array([T[:3, 3] for T in frames[:6]])  # (6, 3)
        J = np.empty((6, 6))
        J[:3] = np.cross(axes, p_tcp - origins).T
        J[3:] = axes.T
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

        Returns the solution on the branch of ``q_near`` (the arm configuration
        does not flip), which is what a servo loop wants.

        Raises:
            IKError: the pose is out of reach or the iteration did not converge.
        """
        target = pose_to_matrix(pose)
        q = np.array(q_near, dtype=float)
        damping = 1e-3
        for _ in range(max_iterations):
            T = self.fk_matrix(q)
            err = np.empty(6)
            err[:3] = target[:3, 3] - T[:3, 3]
            err[3:] = Rotation.from_matrix(target[:3, :3] @ T[:3, :3].T).as_rotvec()
            if (
                np.linalg.norm(err[:3]) <= max_position_error_m
                and np.linalg.norm(err[3:]) <= max_orientation_error_rad
            ):
                return q
            J = self.jacobian(q)
            # Damped least squares: robust near singularities, exact Newton step away from them.
            dq = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(6), err)
            step = float(np.max(np.abs(dq)))
            if step > 0.5:  # keep each step within the linear region
                dq *= 0.5 / step
            q += dq
        raise IKError(
            f"no IK solution for pose {np.round(pose, 4).tolist()} from q_near "
            f"{np.round(q_near, 3).tolist()} (residual {np.linalg.norm(err[:3]):.2e} m, "
            f"{np.linalg.norm(err[3:]):.2e} rad); is the pose within the {self.model.name}'s reach?"
        )
