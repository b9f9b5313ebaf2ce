"""Fast CDR (little-endian XCDR1, as ROS 2 uses) encoders for the recorder's hot message types.

``mcap_ros2``'s dynamic encoder walks the message definition field by field in
Python (~100 µs for a ``JointState``); at ~1000 messages/s that is a tenth of a
core on a two-core machine. These encoders write the same bytes with a few
``struct`` calls per message. The tests check them byte for byte against the
dynamic encoder; types not listed here fall back to it.

CDR rules used: a 4-byte encapsulation header (``00 01 00 00``); every primitive
aligned to its size, counted from the end of the header; strings as uint32
length (with the terminating NUL), bytes, NUL; sequences as uint32 count, then
the elements; fixed arrays without a count.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

_HEADER = b"\x00\x01\x00\x00"
_U32 = struct.Struct("<I")
_TIME = struct.Struct("<iI")


class _Out:
    """Append-only CDR body with alignment bookkeeping."""

    __slots__ = ("n", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = [_HEADER]
        self.n = 0  # bytes after the encapsulation header

    def align(self, size: int) -> None:
        pad = -self.n % size
        if pad:
            self.parts.append(b"\x00" * pad)
            self.n += pad

    def raw(self, data: bytes) -> None:
        self.parts.append(data)
        self.n += len(data)

    def u32(self, value: int) -> None:
        self.align(4)
        self.raw(_U32.pack(value))

    def string(self, value: str) -> None:
        data = value.encode()
        self.u32(len(data) + 1)
        self.raw(data + b"\x00")

    def strings(self, values: list[str]) -> None:
        self.u32(len(values))
        for v in values:
            self.string(v)

    def f64s(self, values: Any, fixed: bool = False) -> None:
        values = list(values)
        if not fixed:
            self.u32(len(values))
        if values:
            self.align(8)
            self.raw(struct.pack(f"<{len(values)}d", *values))

    def header(self, h: dict[str, Any]) -> None:
        self.align(4)
        self.raw(_TIME.pack(h["stamp"]["sec"], h["stamp"]["nanosec"]))
        self.string(h["frame_id"])

    def xyz(self, v: dict[str, float], w: bool = False) -> None:
        self.align(8)
        if w:
            self.raw(struct.pack("<4d", v["x"], v["y"], v["z"], v["w"]))
        else:
            self.raw(struct.pack("<3d", v["x"], v["y"], v["z"]))

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _image(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.header(m["header"])
    o.u32(m["height"])
    o.u32(m["width"])
    o.string(m["encoding"])
    o.raw(bytes((m["is_bigendian"],)))
    o.u32(m["step"])
    o.u32(len(m["data"]))
    o.raw(m["data"])
    return o.bytes()


def _camera_info(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.header(m["header"])
    o.u32(m["height"])
    o.u32(m["width"])
    o.string(m["distortion_model"])
    o.f64s(m["d"])
    o.f64s(m["k"], fixed=True)
    o.f64s(m["r"], fixed=True)
    o.f64s(m["p"], fixed=True)
    o.u32(m["binning_x"])
    o.u32(m["binning_y"])
    roi = m["roi"]
    for key in ("x_offset", "y_offset", "height", "width"):
        o.u32(roi[key])
    o.raw(b"\x01" if roi["do_rectify"] else b"\x00")
    return o.bytes()


def _wrench_stamped(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.header(m["header"])
    o.xyz(m["wrench"]["force"])
    o.xyz(m["wrench"]["torque"])
    return o.bytes()


def _pose_stamped(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.header(m["header"])
    o.xyz(m["pose"]["position"])
    o.xyz(m["pose"]["orientation"], w=True)
    return o.bytes()


def _twist_stamped(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.header(m["header"])
    o.xyz(m["twist"]["linear"])
    o.xyz(m["twist"]["angular"])
    return o.bytes()


def _joint_state(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.header(m["header"])
    o.strings(m["name"])
    o.f64s(m["position"])
    o.f64s(m["velocity"])
    o.f64s(m["effort"])
    return o.bytes()


def _tf_message(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.u32(len(m["transforms"]))
    for tf in m["transforms"]:
        o.header(tf["header"])
        o.string(tf["child_frame_id"])
        o.xyz(tf["transform"]["translation"])
        o.xyz(tf["transform"]["rotation"], w=True)
    return o.bytes()


def _time_reference(m: dict[str, Any]) -> bytes:
    o = _Out()
    o.header(m["header"])
    o.align(4)
    o.raw(_TIME.pack(m["time_ref"]["sec"], m["time_ref"]["nanosec"]))
    o.string(m["source"])
    return o.bytes()


#: datatype -> fast encoder (message dict -> CDR bytes).
ENCODERS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "sensor_msgs/Image": _image,
    "sensor_msgs/CameraInfo": _camera_info,
    "geometry_msgs/WrenchStamped": _wrench_stamped,
    "geometry_msgs/PoseStamped": _pose_stamped,
    "geometry_msgs/TwistStamped": _twist_stamped,
    "sensor_msgs/JointState": _joint_state,
    "tf2_msgs/TFMessage": _tf_message,
    "sensor_msgs/TimeReference": _time_reference,
}

__all__ = ["ENCODERS"]
