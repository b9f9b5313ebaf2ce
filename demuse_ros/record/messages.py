"""ROS 2 message definitions and builders: ring records -> ROS 2 message dicts.

The definitions are the full concatenated ``ros2msg`` text that ``ros2 bag``
(rosbag2's MCAP storage) writes as a channel's schema: the type itself, then
every dependency after a line of 80 ``=`` and ``MSG: pkg/Type``. Foxglove and
``mcap_ros2`` decode from this text alone; ``ros2 bag play`` uses the installed
types of the same names (all standard: ``sensor_msgs``, ``geometry_msgs``,
``trajectory_msgs``, ``tf2_msgs``).

Builders turn one ring record (:mod:`demuse_ros.sync.streams` schemas) into
``(topic, message)`` pairs. Header stamps are the record's capture time in wall
clock: host ``CLOCK_MONOTONIC`` ns + one ``wall_offset_ns`` (``CLOCK_REALTIME −
CLOCK_MONOTONIC``, sampled once at episode start and stored in the episode
metadata), so a reader maps every stamp back to the monotonic clock exactly.

Units and encodings: colour ``rgb8``; depth ``16UC1`` millimetres, 0 = unknown
(REP 118); wrenches N and N·m; joints rad and rad/s; poses metres with a
quaternion (from the rotation vector via scipy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

NS_PER_S = 1_000_000_000
UR_JOINT_NAMES = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)
GRIPPER_JOINT_NAME = "gripper_width"

# ---------------------------------------------------------------------- .msg texts
_MSG: dict[str, str] = {
    "builtin_interfaces/Time": "int32 sec\nuint32 nanosec\n",
    "builtin_interfaces/Duration": "int32 sec\nuint32 nanosec\n",
    "std_msgs/Header": "builtin_interfaces/Time stamp\nstring frame_id\n",
    "geometry_msgs/Vector3": "float64 x\nfloat64 y\nfloat64 z\n",
    "geometry_msgs/Point": "float64 x\nfloat64 y\nfloat64 z\n",
    "geometry_msgs/Quaternion": "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
    "geometry_msgs/Pose": "geometry_msgs/Point position\ngeometry_msgs/Quaternion orientation\n",
    "geometry_msgs/Transform": (
        "geometry_msgs/Vector3 translation\ngeometry_msgs/Quaternion rotation\n"
    ),
    "geometry_msgs/Twist": "geometry_msgs/Vector3 linear\ngeometry_msgs/Vector3 angular\n",
    "geometry_msgs/Wrench": "geometry_msgs/Vector3 force\ngeometry_msgs/Vector3 torque\n",
    "geometry_msgs/WrenchStamped": "std_msgs/Header header\ngeometry_msgs/Wrench wrench\n",
    "geometry_msgs/PoseStamped": "std_msgs/Header header\ngeometry_msgs/Pose pose\n",
    "geometry_msgs/TwistStamped": "std_msgs/Header header\ngeometry_msgs/Twist twist\n",
    "geometry_msgs/TransformStamped": (
        "std_msgs/Header header\nstring child_frame_id\ngeometry_msgs/Transform transform\n"
    ),
    "tf2_msgs/TFMessage": "geometry_msgs/TransformStamped[] transforms\n",
    "sensor_msgs/Image": (
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
        "uint8 is_bigendian\nuint32 step\nuint8[] data\n"
    ),
    "sensor_msgs/RegionOfInterest": (
        "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n"
    ),
    "sensor_msgs/CameraInfo": (
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n"
        "float64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\n"
        "uint32 binning_y\nsensor_msgs/RegionOfInterest roi\n"
    ),
    "sensor_msgs/JointState": (
        "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\n"
        "float64[] effort\n"
    ),
    "sensor_msgs/TimeReference": (
        "std_msgs/Header header\nbuiltin_interfaces/Time time_ref\nstring source\n"
    ),
    "trajectory_msgs/MultiDOFJointTrajectoryPoint": (
        "geometry_msgs/Transform[] transforms\ngeometry_msgs/Twist[] velocities\n"
        "geometry_msgs/Twist[] accelerations\nbuiltin_interfaces/Duration time_from_start\n"
    ),
    "trajectory_msgs/MultiDOFJointTrajectory": (
        "std_msgs/Header header\nstring[] joint_names\n"
        "trajectory_msgs/MultiDOFJointTrajectoryPoint[] points\n"
    ),
    "trajectory_msgs/JointTrajectoryPoint": (
        "float64[] positions\nfloat64[] velocities\nfloat64[] accelerations\n"
        "float64[] effort\nbuiltin_interfaces/Duration time_from_start\n"
    ),
    "trajectory_msgs/JointTrajectory": (
        "std_msgs/Header header\nstring[] joint_names\n"
        "trajectory_msgs/JointTrajectoryPoint[] points\n"
    ),
}

_SEPARATOR = "=" * 80


def _dependencies(datatype: str, seen: list[str]) -> None:
    for line in _MSG[datatype].splitlines():
        ftype = line.split()[0].split("[")[0]
        if "/" in ftype and ftype not in seen:
            seen.append(ftype)
            _dependencies(ftype, seen)


def msgdef(datatype: str) -> str:
    """The concatenated ``ros2msg`` schema text of ``datatype`` (as ``ros2 bag`` stores it)."""
    if datatype not in _MSG:
        raise KeyError(f"no message definition for {datatype!r}; known: {sorted(_MSG)}")
    deps: list[str] = []
    _dependencies(datatype, deps)
    parts = [_MSG[datatype]]
    parts += [f"{_SEPARATOR}\nMSG: {dep}\n{_MSG[dep]}" for dep in deps]
    return "".join(parts)


#: topic -> ROS 2 datatype of every channel an episode can have.
TOPICS: dict[str, str] = {
    "camera/color/image_raw": "sensor_msgs/Image",
    "camera/color/camera_info": "sensor_msgs/CameraInfo",
    "camera/aligned_depth_to_color/image_raw": "sensor_msgs/Image",
    "camera/time_reference": "sensor_msgs/TimeReference",
    "ft/wrench": "geometry_msgs/WrenchStamped",
    "ft/left/wrench": "geometry_msgs/WrenchStamped",
    "ft/right/wrench": "geometry_msgs/WrenchStamped",
    "gripper/joint_states": "sensor_msgs/JointState",
    "ft/time_reference": "sensor_msgs/TimeReference",
    "joint_states": "sensor_msgs/JointState",
    "tcp_pose": "geometry_msgs/PoseStamped",
    "tcp_speed": "geometry_msgs/TwistStamped",
    "tf": "tf2_msgs/TFMessage",
    "arm/time_reference": "sensor_msgs/TimeReference",
    "action_chunk": "trajectory_msgs/MultiDOFJointTrajectory",
    "action_chunk/gripper": "trajectory_msgs/JointTrajectory",
}

#: ring stream -> the topic whose messages carry that stream's exact source stamps.
TIME_REFERENCE_TOPICS = {
    "camera": "camera/time_reference",
    "ft": "ft/time_reference",
    "arm": "arm/time_reference",
}


# ---------------------------------------------------------------------- frames, intrinsics
@dataclass(frozen=True)
class Frames:
    """TF frame names used in headers (defaults follow realsense-ros and the UR driver)."""

    base: str = "base"
    tool: str = "tool0"
    camera: str = "camera_color_optical_frame"
    wrench: str = "tool0"
    left_sensor: str = "rg2ft_left_sensor"
    right_sensor: str = "rg2ft_right_sensor"


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the colour camera (depth is aligned to it), in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    d: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------- small pieces
def stamp(t_wall_ns: int) -> dict[str, int]:
    """``builtin_interfaces/Time`` of a wall-clock nanosecond count."""
    sec, nanosec = divmod(int(t_wall_ns), NS_PER_S)
    return {"sec": sec, "nanosec": nanosec}


def duration(ns: int) -> dict[str, int]:
    """``builtin_interfaces/Duration`` (nanosec always in [0, 1e9), sec may be negative)."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return {"sec": sec, "nanosec": nanosec}


def _header(t_wall_ns: int, frame_id: str) -> dict[str, Any]:
    return {"stamp": stamp(t_wall_ns), "frame_id": frame_id}


def _xyz(v: Any) -> dict[str, float]:
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


def _quat(q: Any) -> dict[str, float]:
    return {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])}


def _wrench(header: dict[str, Any], w: Any) -> dict[str, Any]:
    return {"header": header, "wrench": {"force": _xyz(w[:3]), "torque": _xyz(w[3:6])}}


def _time_reference(header: dict[str, Any], device_time_s: float, source: str) -> dict[str, Any]:
    """Device time to the nanosecond in ``time_ref``; ``source`` says which clock (none: NaN)."""
    if not np.isfinite(device_time_s):
        return {"header": header, "time_ref": {"sec": 0, "nanosec": 0}, "source": "none"}
    return {"header": header, "time_ref": stamp(round(device_time_s * NS_PER_S)), "source": source}


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """float32 metres -> uint16 millimetres (REP 118): 0 for unknown, NaN or beyond 65.535 m."""
    mm = np.multiply(depth_m, np.float32(1000.0), dtype=np.float32)
    mm += np.float32(0.5)  # round half up (values are >= 0 where valid)
    mm[~((mm >= 0.0) & (mm < 65536.0))] = 0.0  # NaN compares False: unknown
    return mm.astype("<u2")


def image_msg(header: dict[str, Any], array: np.ndarray, encoding: str) -> dict[str, Any]:
    """``sensor_msgs/Image`` of a C-contiguous (H, W[, C]) array."""
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    return {
        "header": header,
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(array.strides[0]),
        "data": array.tobytes(),
    }


def camera_info_msg(header: dict[str, Any], intr: CameraIntrinsics) -> dict[str, Any]:
    fx, fy, cx, cy = intr.fx, intr.fy, intr.cx, intr.cy
    return {
        "header": header,
        "height": intr.height,
        "width": intr.width,
        "distortion_model": intr.distortion_model,
        "d": [float(v) for v in intr.d],
        "k": [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        "binning_x": 0,
        "binning_y": 0,
        "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False},
    }


# ---------------------------------------------------------------------- record builders
Built = list[tuple[str, dict[str, Any]]]


def camera_messages(
    record: dict[str, Any],
    wall_offset_ns: int,
    frames: Frames,
    intrinsics: CameraIntrinsics | None,
) -> Built:
    """Colour, aligned depth (mm), camera info and the frame's source stamps."""
    header = _header(record["t_capture_ns"] + wall_offset_ns, frames.camera)
    out: Built = [
        ("camera/color/image_raw", image_msg(header, record["rgb"], "rgb8")),
        (
            "camera/aligned_depth_to_color/image_raw",
            image_msg(header, depth_to_mm(record["depth_m"]), "16UC1"),
        ),
    ]
    if intrinsics is not None:
        out.append(("camera/color/camera_info", camera_info_msg(header, intrinsics)))
    out.append(
        (
            "camera/time_reference",
            _time_reference(
                header, record["device_time_s"], f"camera frame={int(record['frame_number'])}"
            ),
        )
    )
    return out


def ft_messages(record: dict[str, Any], wall_offset_ns: int, frames: Frames) -> Built:
    """Combined wrench, the two raw fingertip wrenches, gripper width, source stamps."""
    t = record["t_capture_ns"] + wall_offset_ns
    fingers = np.asarray(record["finger_wrenches"])
    return [
        ("ft/wrench", _wrench(_header(t, frames.wrench), record["wrench"])),
        ("ft/left/wrench", _wrench(_header(t, frames.left_sensor), fingers[0])),
        ("ft/right/wrench", _wrench(_header(t, frames.right_sensor), fingers[1])),
        (
            "gripper/joint_states",
            {
                "header": _header(t, ""),
                "name": [GRIPPER_JOINT_NAME],
                "position": [float(record["gripper_width_m"])],
                "velocity": [],
                "effort": [],
            },
        ),
        ("ft/time_reference", _time_reference(_header(t, ""), record["device_time_s"], "ft")),
    ]


def arm_messages(record: dict[str, Any], wall_offset_ns: int, frames: Frames) -> Built:
    """Joint states, TCP pose (PoseStamped + TF base -> tool), TCP twist, source stamps."""
    t = record["t_capture_ns"] + wall_offset_ns
    pose = np.asarray(record["tcp_pose"], dtype=np.float64)
    quat = Rotation.from_rotvec(pose[3:6]).as_quat()  # (x, y, z, w)
    speed = np.asarray(record["tcp_speed"], dtype=np.float64)
    header = _header(t, frames.base)
    return [
        (
            "joint_states",
            {
                "header": _header(t, ""),
                "name": list(UR_JOINT_NAMES),
                "position": np.asarray(record["joint_positions_rad"], np.float64).tolist(),
                "velocity": np.asarray(record["joint_velocities_rad_s"], np.float64).tolist(),
                "effort": [],
            },
        ),
        (
            "tcp_pose",
            {"header": header, "pose": {"position": _xyz(pose), "orientation": _quat(quat)}},
        ),
        (
            "tcp_speed",
            {"header": header, "twist": {"linear": _xyz(speed), "angular": _xyz(speed[3:])}},
        ),
        (
            "tf",
            {
                "transforms": [
                    {
                        "header": header,
                        "child_frame_id": frames.tool,
                        "transform": {"translation": _xyz(pose), "rotation": _quat(quat)},
                    }
                ]
            },
        ),
        ("arm/time_reference", _time_reference(_header(t, ""), record["device_time_s"], "ur_rtde")),
    ]


def chunk_messages(
    t_ns: int,
    waypoints_t_ns: np.ndarray,
    poses: np.ndarray,
    gripper_width_m: np.ndarray | None,
    wall_offset_ns: int,
    frames: Frames,
) -> Built:
    """Commanded waypoints: header.stamp = send time, each point's absolute time is
    ``header.stamp + time_from_start`` (exact in ns)."""
    t_ns = int(t_ns)
    header = _header(t_ns + wall_offset_ns, frames.base)
    rel = [int(t) - t_ns for t in np.asarray(waypoints_t_ns, dtype=np.int64)]
    poses = np.asarray(poses, dtype=np.float64).reshape(len(rel), 6)
    quats = Rotation.from_rotvec(poses[:, 3:6]).as_quat() if len(rel) else np.zeros((0, 4))
    points = [
        {
            "transforms": [{"translation": _xyz(p), "rotation": _quat(q)}],
            "velocities": [],
            "accelerations": [],
            "time_from_start": duration(r),
        }
        for p, q, r in zip(poses, quats, rel, strict=True)
    ]
    out: Built = [
        ("action_chunk", {"header": header, "joint_names": [frames.tool], "points": points})
    ]
    if gripper_width_m is not None:
        widths = np.asarray(gripper_width_m, dtype=np.float64).reshape(len(rel))
        gpoints = [
            {
                "positions": [float(w)],
                "velocities": [],
                "accelerations": [],
                "effort": [],
                "time_from_start": duration(r),
            }
            for w, r in zip(widths, rel, strict=True)
        ]
        out.append(
            (
                "action_chunk/gripper",
                {"header": header, "joint_names": [GRIPPER_JOINT_NAME], "points": gpoints},
            )
        )
    return out


__all__ = [
    "TIME_REFERENCE_TOPICS",
    "TOPICS",
    "UR_JOINT_NAMES",
    "CameraIntrinsics",
    "Frames",
    "arm_messages",
    "camera_messages",
    "chunk_messages",
    "depth_to_mm",
    "duration",
    "ft_messages",
    "msgdef",
    "stamp",
]
