"""Kinematics of the arms the runtime drives."""

from demuse_ros.kinematics.ur import (
    MODELS,
    UR10,
    UR10E,
    IKError,
    URKinematics,
    URModel,
    matrix_to_pose,
    matrix_to_rotvec,
    pose_to_matrix,
    rotvec_to_matrix,
)

__all__ = [
    "MODELS",
    "UR10",
    "UR10E",
    "IKError",
    "URKinematics",
    "URModel",
    "matrix_to_pose",
    "matrix_to_rotvec",
    "pose_to_matrix",
    "rotvec_to_matrix",
]
