"""Time alignment of the camera, force/torque and arm streams (DESIGN §4)."""

from demuse_ros.sync.align import choose, interpolate_pose, slerp_rotvec
from demuse_ros.sync.observation import InvalidReason, Observation
from demuse_ros.sync.streams import arm_schema, camera_schema, ft_schema
from demuse_ros.sync.synchronizer import SyncConfig, Synchronizer

__all__ = [
    "InvalidReason",
    "Observation",
    "SyncConfig",
    "Synchronizer",
    "arm_schema",
    "camera_schema",
    "choose",
    "ft_schema",
    "interpolate_pose",
    "slerp_rotvec",
]
