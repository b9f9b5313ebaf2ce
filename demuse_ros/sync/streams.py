"""Record schemas of the three device streams the synchronizer aligns.

Drivers write these records; the synchronizer, the recorder and the dataset
loader read them. Units are SI (m, rad, N, N·m, s) in REP 103 frames. Field
names carry the unit where one unit applies; poses are ``[x, y, z, rx, ry, rz]``
(metres, rotation vector in radians) in the robot base frame.
"""

from __future__ import annotations

import numpy as np

from demuse_ros.transport.schema import RecordSchema

#: D435i default stream size used throughout (width, height).
DEFAULT_IMAGE_SIZE = (640, 480)


def camera_schema(
    width: int = DEFAULT_IMAGE_SIZE[0], height: int = DEFAULT_IMAGE_SIZE[1]
) -> RecordSchema:
    """RGB + aligned depth frames.

    ``rgb``: (H, W, 3) uint8 RGB. ``depth_m``: (H, W) float32 metres, aligned to
    the colour camera, 0 where unknown. ``frame_number``: the camera's hardware
    frame counter (used to drop duplicate frames).
    """
    return RecordSchema(
        {
            "rgb": ((height, width, 3), np.uint8),
            "depth_m": ((height, width), np.float32),
            "frame_number": ((), np.int64),
        },
        name="camera",
    )


def ft_schema() -> RecordSchema:
    """Fingertip force/torque and gripper state from the RG2-FT.

    ``wrench``: combined wrench ``[Fx, Fy, Fz, Tx, Ty, Tz]`` (N, N·m), the mean of
    the two fingertip sensors. ``finger_wrenches``: (2, 6) raw per-finger wrenches
    (left, right) in their own sensor frames. ``gripper_width_m``: finger opening.
    """
    return RecordSchema(
        {
            "wrench": ((6,), np.float64),
            "finger_wrenches": ((2, 6), np.float64),
            "gripper_width_m": ((), np.float64),
        },
        name="ft",
    )


def arm_schema() -> RecordSchema:
    """UR arm state as streamed over RTDE.

    ``tcp_pose``: actual TCP pose (m, rad rotation vector). ``tcp_speed``: TCP
    twist (m/s, rad/s). Joint vectors are shoulder_pan … wrist_3. Modes are the
    controller's integer codes.
    """
    return RecordSchema(
        {
            "joint_positions_rad": ((6,), np.float64),
            "joint_velocities_rad_s": ((6,), np.float64),
            "tcp_pose": ((6,), np.float64),
            "tcp_speed": ((6,), np.float64),
            "robot_mode": ((), np.int32),
            "safety_mode": ((), np.int32),
            "runtime_state": ((), np.int32),
        },
        name="arm",
    )
