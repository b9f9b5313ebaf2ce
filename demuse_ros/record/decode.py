"""Decoded ROS 2 messages -> numpy, and episode messages -> the drivers' ring records."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from demuse_ros.record.messages import NS_PER_S, TIME_REFERENCE_TOPICS

#: ring stream -> its topics (the time reference last).
STREAM_TOPICS = {
    "camera": (
        "camera/color/image_raw",
        "camera/aligned_depth_to_color/image_raw",
        "camera/time_reference",
    ),
    "ft": (
        "ft/wrench",
        "ft/left/wrench",
        "ft/right/wrench",
        "gripper/joint_states",
        "ft/time_reference",
    ),
    "arm": ("joint_states", "tcp_pose", "tcp_speed", "arm/time_reference"),
}


def fill_record(record: dict[str, Any], topic: str, value: Any) -> None:
    if topic == "camera/color/image_raw":
        record["rgb"] = value
    elif topic == "camera/aligned_depth_to_color/image_raw":
        record["depth_m"] = value.astype(np.float32) / np.float32(1000.0)
    elif topic in TIME_REFERENCE_TOPICS.values():
        record["device_time_s"] = value["device_time_s"]
        if value["source"].startswith("camera frame="):
            record["frame_number"] = int(value["source"].split("=", 1)[1])
    elif topic == "ft/wrench":
        record["wrench"] = value
    elif topic in ("ft/left/wrench", "ft/right/wrench"):
        record.setdefault("finger_wrenches", np.zeros((2, 6)))[int(topic == "ft/right/wrench")] = (
            value
        )
    elif topic == "gripper/joint_states":
        record["gripper_width_m"] = float(value["position"][0])
    elif topic == "joint_states":
        record["joint_positions_rad"] = value["position"]
        record["joint_velocities_rad_s"] = value["velocity"]
    elif topic == "tcp_pose":
        record["tcp_pose"] = np.r_[value[:3], Rotation.from_quat(value[3:]).as_rotvec()]
    elif topic == "tcp_speed":
        record["tcp_speed"] = value


def _time_ns(t: Any) -> int:
    return int(t.sec) * NS_PER_S + int(t.nanosec)


def decode(msg: Any, wall_offset_ns: int = 0) -> Any:
    """A decoded ROS 2 message as numpy, by type (absolute times back to monotonic ns):

    Image → (H, W, 3) uint8 (rgb8) or (H, W) uint16 (16UC1, mm); WrenchStamped →
    (6,) [F, τ]; PoseStamped → (7,) [xyz, qx qy qz qw]; TwistStamped → (6,);
    JointState → {name, position, velocity}; CameraInfo → {width, height, k (3, 3),
    d, distortion_model}; TimeReference → {device_time_s (NaN: none), source};
    TFMessage → [(parent, child, (7,))]; MultiDOFJointTrajectory → {t_ns (N,),
    poses (N, 6) rotation vectors}; JointTrajectory → {t_ns, positions (N, k)}.
    """
    name = type(msg).__name__
    if name == "Image":
        dtype, channels = {"rgb8": (np.uint8, 3), "16UC1": ("<u2", 1), "mono8": (np.uint8, 1)}[
            msg.encoding
        ]
        arr = np.frombuffer(msg.data, dtype=dtype)
        shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
        return arr.reshape(shape)
    if name == "WrenchStamped":
        f, t = msg.wrench.force, msg.wrench.torque
        return np.array([f.x, f.y, f.z, t.x, t.y, t.z])
    if name == "PoseStamped":
        p, q = msg.pose.position, msg.pose.orientation
        return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
    if name == "TwistStamped":
        v, w = msg.twist.linear, msg.twist.angular
        return np.array([v.x, v.y, v.z, w.x, w.y, w.z])
    if name == "JointState":
        return {
            "name": list(msg.name),
            "position": np.asarray(msg.position, dtype=np.float64),
            "velocity": np.asarray(msg.velocity, dtype=np.float64),
        }
    if name == "CameraInfo":
        return {
            "width": msg.width,
            "height": msg.height,
            "k": np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
            "d": np.asarray(msg.d, dtype=np.float64),
            "distortion_model": msg.distortion_model,
        }
    if name == "TimeReference":
        none = msg.source == "none"
        device = np.nan if none else msg.time_ref.sec + msg.time_ref.nanosec / NS_PER_S
        return {"device_time_s": device, "source": msg.source}
    if name == "TFMessage":
        out = []
        for tf in msg.transforms:
            tr, q = tf.transform.translation, tf.transform.rotation
            out.append(
                (
                    tf.header.frame_id,
                    tf.child_frame_id,
                    np.array([tr.x, tr.y, tr.z, q.x, q.y, q.z, q.w]),
                )
            )
        return out
    if name in ("MultiDOFJointTrajectory", "JointTrajectory"):
        t0 = _time_ns(msg.header.stamp) - wall_offset_ns
        t_ns = np.array([t0 + _time_ns(p.time_from_start) for p in msg.points], dtype=np.int64)
        if name == "JointTrajectory":
            return {"t_ns": t_ns, "positions": np.array([p.positions for p in msg.points])}
        poses = np.zeros((len(msg.points), 6))
        for i, p in enumerate(msg.points):
            tr, q = p.transforms[0].translation, p.transforms[0].rotation
            poses[i, :3] = (tr.x, tr.y, tr.z)
            poses[i, 3:] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_rotvec()
        return {"t_ns": t_ns, "poses": poses}
    return msg


__all__ = ["STREAM_TOPICS", "decode", "fill_record"]
