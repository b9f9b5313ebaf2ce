"""Conversions between ring records and ROS 2 message fields (pure Python: no rclpy).

* Time: one offset maps host ``CLOCK_MONOTONIC`` (the core's clock) to ROS time
  (:class:`TimeMap`); a header stamp is the record's capture time plus that
  offset, and a subscriber maps it back with its own offset.
* Messages are built as plain field mappings by
  :mod:`demuse_ros.record.messages` (the recorder writes the same messages to
  MCAP) and copied into rclpy message objects by :func:`fill_message`.
* The reverse direction (subscriptions → ring records, trajectories → chunks)
  takes plain values, so it is tested without ROS.

Units: SI; depth ``16UC1`` millimetres on topics (REP 118), float32 metres in
the core; poses as a rotation vector in the core, a quaternion ``(x, y, z, w)``
on topics.
"""

from __future__ import annotations

import array
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from demuse_ros.record.messages import depth_to_mm
from demuse_ros.timing.clock import NS_PER_S


# ---------------------------------------------------------------------- time
class TimeMap:
    """Host monotonic ns ↔ ROS time ns through one offset sampled at start-up.

    Args:
        ros_now_ns: ROS time now (``node.get_clock().now().nanoseconds``).
        mono_now_ns: ``time.monotonic_ns()`` sampled right after it.
    """

    def __init__(self, ros_now_ns: int, mono_now_ns: int) -> None:
        self.offset_ns = int(ros_now_ns) - int(mono_now_ns)

    def to_ros_ns(self, mono_ns: int) -> int:
        return int(mono_ns) + self.offset_ns

    def to_mono_ns(self, ros_ns: int) -> int:
        return int(ros_ns) - self.offset_ns

    def stamp(self, mono_ns: int) -> tuple[int, int]:
        """``(sec, nanosec)`` of a header stamp for a monotonic time."""
        return split_ns(self.to_ros_ns(mono_ns))

    def from_stamp(self, sec: int, nanosec: int) -> int:
        """Monotonic ns of a header stamp."""
        return self.to_mono_ns(int(sec) * NS_PER_S + int(nanosec))


def split_ns(ns: int) -> tuple[int, int]:
    """``builtin_interfaces/Time`` fields ``(sec, nanosec)`` of a nanosecond count."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


# ---------------------------------------------------------------------- rotations
def rotvec_to_quat(rotvec: Sequence[float]) -> np.ndarray:
    """Rotation vector (rad) → unit quaternion ``(x, y, z, w)`` with ``w >= 0``."""
    q = Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64)).as_quat()
    return -q if q[3] < 0 else q


def quat_to_rotvec(quat_xyzw: Sequence[float]) -> np.ndarray:
    """Quaternion ``(x, y, z, w)`` (normalised here) → rotation vector (rad)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"quaternion {q.tolist()} has no rotation (zero or non-finite norm)")
    return Rotation.from_quat(q / norm).as_rotvec()


def look_at_quaternion(eye_m: Sequence[float], target_m: Sequence[float]) -> np.ndarray:
    """Orientation ``(x, y, z, w)`` of a camera *optical* frame at ``eye_m`` looking at
    ``target_m`` with world z up: z along the optical axis, x image right, y image down."""
    eye, target = np.asarray(eye_m, float), np.asarray(target_m, float)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("the camera looks straight up or down: its image x axis is undefined")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    q = Rotation.from_matrix(np.column_stack([right, down, forward])).as_quat()
    return -q if q[3] < 0 else q


# ---------------------------------------------------------------------- images
def mm_to_depth_m(depth_mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres (REP 118, 0 = unknown) → float32 metres (0 = unknown)."""
    return np.multiply(depth_mm, np.float32(1e-3), dtype=np.float32)


_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "16UC1": (np.uint16, 1),
    "mono16": (np.uint16, 1),
}


def image_array(
    data: Any, height: int, width: int, step: int, encoding: str, *, is_bigendian: bool = False
) -> np.ndarray:
    """A ``sensor_msgs/Image``'s pixels as (H, W, 3) uint8 RGB or (H, W) uint16.

    ``bgr8`` is reordered to RGB. The result is a copy (the message buffer is
    not kept alive).

    Raises:
        ValueError: Unsupported encoding, or a buffer too short for ``step × height``.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(
            f"image encoding {encoding!r} is not supported; use one of {list(_ENCODINGS)}"
        )
    dtype, channels = _ENCODINGS[encoding]
    itemsize = np.dtype(dtype).itemsize
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    row = width * channels * itemsize
    if step < row or len(buf) < step * height:
        raise ValueError(
            f"{encoding} image {width}x{height}: step {step} and {len(buf)} bytes do not hold it"
        )
    rows = buf[: step * height].reshape(height, step)[:, :row]
    order = ">" if is_bigendian else "<"
    out = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order))
    out = out.reshape((height, width, channels) if channels > 1 else (height, width))
    if encoding == "bgr8":
        out = out[..., ::-1]
    return np.ascontiguousarray(out.astype(dtype, copy=False))


# ---------------------------------------------------------------------- trajectories
def chunk_from_points(
    stamp_ns: int, points: Sequence[tuple[int, Sequence[float], Sequence[float]]], times: TimeMap
) -> tuple[np.ndarray, np.ndarray]:
    """An ``action_chunk`` (``MultiDOFJointTrajectory``) as the arm driver's chunk.

    Args:
        stamp_ns: ``header.stamp`` in ROS ns; each point's absolute time is
            ``header.stamp + time_from_start``.
        points: ``(time_from_start ns, translation xyz, rotation xyzw)`` per point.
        times: This node's monotonic ↔ ROS mapping.

    Returns:
        Host-monotonic waypoint times (N,) int64 and TCP poses (N, 6) (m, rotation vector).
    """
    t = np.array([times.to_mono_ns(stamp_ns + int(p[0])) for p in points], dtype=np.int64)
    poses = np.empty((len(points), 6))
    for i, (_, xyz, quat) in enumerate(points):
        poses[i, :3] = xyz
        poses[i, 3:] = quat_to_rotvec(quat)
    return t, poses


def gripper_from_points(
    stamp_ns: int, points: Sequence[tuple[int, Sequence[float], Sequence[float]]], times: TimeMap
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """An ``action_chunk/gripper`` (``JointTrajectory`` of ``gripper_width``) as a plan.

    Args:
        points: ``(time_from_start ns, positions, effort)`` per point; the width is
            ``positions[0]`` (m), the grip force ``effort[0]`` (N) when given.

    Returns:
        Monotonic times (N,), widths (N,) and the force of the first point (None
        when the message carries none).
    """
    t = np.array([times.to_mono_ns(stamp_ns + int(p[0])) for p in points], dtype=np.int64)
    widths = np.array([float(p[1][0]) for p in points])
    force = next((float(p[2][0]) for p in points if len(p[2])), None)
    return t, widths, force


# ---------------------------------------------------------------------- records
def camera_record(color: np.ndarray, depth_mm: np.ndarray, frame_number: int) -> dict[str, Any]:
    """Ring fields (:func:`~demuse_ros.sync.streams.camera_schema`) of a colour + depth pair."""
    return {"rgb": color, "depth_m": mm_to_depth_m(depth_mm), "frame_number": int(frame_number)}


def ft_record(
    wrench: Sequence[float],
    gripper_width_m: float,
    left: Sequence[float] | None = None,
    right: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Ring fields (:func:`~demuse_ros.sync.streams.ft_schema`); missing fingers read NaN."""
    fingers = np.full((2, 6), np.nan)
    if left is not None:
        fingers[0] = left
    if right is not None:
        fingers[1] = right
    return {
        "wrench": np.asarray(wrench, dtype=np.float64),
        "finger_wrenches": fingers,
        "gripper_width_m": float(gripper_width_m),
    }


def arm_record(
    positions: Sequence[float],
    velocities: Sequence[float],
    xyz: Sequence[float],
    quat_xyzw: Sequence[float],
    twist: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Ring fields (:func:`~demuse_ros.sync.streams.arm_schema`) of joint states and a TCP
    pose. Controller modes are not on the topics: they read -1 (unknown)."""
    q = np.asarray(positions, dtype=np.float64)
    qd = np.asarray(velocities, dtype=np.float64) if len(velocities) else np.full(6, np.nan)
    return {
        "joint_positions_rad": q,
        "joint_velocities_rad_s": qd,
        "tcp_pose": np.r_[np.asarray(xyz, dtype=np.float64), quat_to_rotvec(quat_xyzw)],
        "tcp_speed": np.asarray(twist, dtype=np.float64)
        if twist is not None
        else np.full(6, np.nan),
        "robot_mode": -1,
        "safety_mode": -1,
        "runtime_state": -1,
    }


def joint_order(names: Sequence[str], wanted: Sequence[str]) -> list[int] | None:
    """Indices of ``wanted`` joints in a ``JointState.name`` list (None if one is missing)."""
    index = {n: i for i, n in enumerate(names)}
    try:
        return [index[n] for n in wanted]
    except KeyError:
        return None


# ---------------------------------------------------------------------- message objects
def fill_message(msg: Any, values: Mapping[str, Any], resolve: Callable[[str], type]) -> Any:
    """Copies a field mapping (as :mod:`demuse_ros.record.messages` builds) into ``msg``.

    ``msg`` is a generated ROS 2 message (or anything with the same
    ``get_fields_and_field_types()`` interface); nested mappings fill nested
    messages; lists of mappings become lists of ``resolve(type)()`` elements;
    ``bytes`` for a ``sequence<uint8>`` field become an ``array.array('B')`` (one
    copy, no per-element checks). Returns ``msg``.

    Raises:
        KeyError: A key that is not a field of ``msg``.
    """
    types = msg.get_fields_and_field_types()
    for name, value in values.items():
        if name not in types:
            raise KeyError(f"{type(msg).__name__} has no field {name!r}; fields: {list(types)}")
        kind = types[name]
        if isinstance(value, Mapping):
            fill_message(getattr(msg, name), value, resolve)
        elif isinstance(value, (bytes, bytearray, memoryview)) and kind in (
            "sequence<uint8>",
            "sequence<octet>",
        ):
            setattr(msg, name, array.array("B", bytes(value)))
        elif kind.startswith("sequence<") and "/" in kind:
            elem = resolve(kind[len("sequence<") : -1].split(",")[0])
            setattr(msg, name, [fill_message(elem(), v, resolve) for v in value])
        else:
            setattr(msg, name, value)
    return msg


def message_class(type_name: str) -> type:
    """``"geometry_msgs/msg/Pose"`` or ``"geometry_msgs/Pose"`` → the class (imports it)."""
    import importlib

    parts = type_name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ValueError(f"not a ROS 2 interface type name: {type_name!r}")
    module = importlib.import_module(f"{parts[0]}.{parts[1]}")
    return getattr(module, parts[2])


__all__ = [
    "TimeMap",
    "arm_record",
    "camera_record",
    "chunk_from_points",
    "depth_to_mm",
    "fill_message",
    "ft_record",
    "gripper_from_points",
    "image_array",
    "joint_order",
    "look_at_quaternion",
    "message_class",
    "mm_to_depth_m",
    "quat_to_rotvec",
    "rotvec_to_quat",
    "split_ns",
]
