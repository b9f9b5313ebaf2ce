"""Every topic and service of the ROS 2 layer, in one table (pure Python: no rclpy).

The nodes create their publishers, subscriptions and services only through
this table (:meth:`demuse_ros.ros.node_base.NodeHelpers.publisher` and friends
look the name up and refuse one that is not listed for that node), and the
README's interface table is generated from it (:func:`interface_table`), so
the documentation and the code cannot drift apart.

Names are relative (they follow the node's namespace), except the ROS-wide
``/diagnostics``, ``/tf`` and ``/tf_static``. QoS profiles:

* ``sensor``: ``qos_profile_sensor_data`` (best effort, keep last 5): streams;
* ``reliable``: reliable, keep last 10, volatile: commands;
* ``latched``: reliable, keep last 1, transient local: values a late
  subscriber still needs (the twin's task geometry);
* ``services``: the default service QoS.
"""

from __future__ import annotations

from dataclasses import dataclass

QOS_PROFILES = ("sensor", "reliable", "latched", "services")
NODES = ("camera_node", "ft_node", "arm_node", "policy_node", "recorder_node", "sim_node")


@dataclass(frozen=True)
class Topic:
    """A topic: its type, QoS, which nodes publish and subscribe it, and what it carries."""

    name: str
    type: str  # "sensor_msgs/msg/Image"
    qos: str
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Service:
    """A service: its type, the node serving it and what a call does."""

    name: str
    type: str
    server: str
    description: str
    qos: str = "services"


_ALL = NODES
_STREAM_USERS = ("policy_node", "recorder_node")

TOPICS: tuple[Topic, ...] = (
    Topic(
        "camera/color/image_raw",
        "sensor_msgs/msg/Image",
        "sensor",
        ("camera_node",),
        _STREAM_USERS,
        "colour frame, `rgb8`; `header.stamp` = capture time",
    ),
    Topic(
        "camera/color/camera_info",
        "sensor_msgs/msg/CameraInfo",
        "sensor",
        ("camera_node",),
        ("recorder_node",),
        "colour intrinsics as the driver reads them from the device",
    ),
    Topic(
        "camera/aligned_depth_to_color/image_raw",
        "sensor_msgs/msg/Image",
        "sensor",
        ("camera_node",),
        _STREAM_USERS,
        "depth aligned to colour, `16UC1` millimetres, 0 = unknown (REP 118)",
    ),
    Topic(
        "ft/wrench",
        "geometry_msgs/msg/WrenchStamped",
        "sensor",
        ("ft_node",),
        ("arm_node", *_STREAM_USERS),
        "combined fingertip wrench (mean, clipped, smoothed) in the `frames.wrench` frame",
    ),
    Topic(
        "ft/left/wrench",
        "geometry_msgs/msg/WrenchStamped",
        "sensor",
        ("ft_node",),
        ("recorder_node",),
        "raw left fingertip wrench in its sensor frame",
    ),
    Topic(
        "ft/right/wrench",
        "geometry_msgs/msg/WrenchStamped",
        "sensor",
        ("ft_node",),
        ("recorder_node",),
        "raw right fingertip wrench in its sensor frame",
    ),
    Topic(
        "gripper/joint_states",
        "sensor_msgs/msg/JointState",
        "sensor",
        ("ft_node",),
        _STREAM_USERS,
        "finger opening `gripper_width` (m), same stamp as `ft/wrench`",
    ),
    Topic(
        "joint_states",
        "sensor_msgs/msg/JointState",
        "sensor",
        ("arm_node",),
        _STREAM_USERS,
        "UR joint positions (rad) and velocities (rad/s), controller time mapped to host",
    ),
    Topic(
        "tcp_pose",
        "geometry_msgs/msg/PoseStamped",
        "sensor",
        ("arm_node",),
        _STREAM_USERS,
        "actual TCP pose in `frames.base`",
    ),
    Topic(
        "tcp_speed",
        "geometry_msgs/msg/TwistStamped",
        "sensor",
        ("arm_node",),
        ("recorder_node",),
        "actual TCP twist in `frames.base` (m/s, rad/s)",
    ),
    Topic(
        "/tf",
        "tf2_msgs/msg/TFMessage",
        "reliable",
        ("arm_node",),
        (),
        "`frames.base` → `frames.tool` (the actual TCP), at the state rate",
    ),
    Topic(
        "/tf_static",
        "tf2_msgs/msg/TFMessage",
        "latched",
        ("camera_node",),
        (),
        "`frames.base` → `frames.camera` from the `extrinsic` parameters",
    ),
    Topic(
        "action_chunk",
        "trajectory_msgs/msg/MultiDOFJointTrajectory",
        "reliable",
        ("policy_node",),
        ("arm_node", "recorder_node"),
        "TCP waypoints in `frames.base`; point i is due at `header.stamp + time_from_start`; "
        "an empty trajectory stops the arm",
    ),
    Topic(
        "action_chunk/gripper",
        "trajectory_msgs/msg/JointTrajectory",
        "reliable",
        ("policy_node",),
        ("ft_node", "recorder_node"),
        "finger widths (`positions`, m) and grip force (`effort`, N) at the same times",
    ),
    Topic(
        "sim/plunger_force",
        "std_msgs/msg/Float64",
        "sensor",
        ("sim_node",),
        ("policy_node",),
        "the twin's plunger force (N), privileged: only the scripted expert reads it",
    ),
    Topic(
        "sim/plunger_top_pose",
        "geometry_msgs/msg/PoseStamped",
        "latched",
        ("sim_node",),
        ("policy_node",),
        "the twin's plunger cap pose in `base`, privileged (scripted expert)",
    ),
    Topic(
        "/diagnostics",
        "diagnostic_msgs/msg/DiagnosticArray",
        "reliable",
        _ALL,
        ("policy_node",),
        "rates, latencies, drops, safety interventions, fault state (1 Hz, and at once when "
        "the arm refuses a chunk or the twin's task ends)",
    ),
)

SERVICES: tuple[Service, ...] = (
    Service(
        "ft/zero",
        "std_srvs/srv/Trigger",
        "ft_node",
        "zero both fingertip F/T sensors at their current reading",
    ),
    Service(
        "arm/stop",
        "std_srvs/srv/Trigger",
        "arm_node",
        "`servoStop` and drop the plan (the arm holds)",
    ),
    Service(
        "arm/reset_fault",
        "std_srvs/srv/Trigger",
        "arm_node",
        "clear a latched protective stop / hold once the robot is unlocked",
    ),
    Service(
        "policy/enable",
        "std_srvs/srv/SetBool",
        "policy_node",
        "false: stop asking the policy, hold the arm; true: resume",
    ),
    Service(
        "recorder/start",
        "std_srvs/srv/Trigger",
        "recorder_node",
        "start an episode (the message names its file)",
    ),
    Service(
        "recorder/stop", "std_srvs/srv/Trigger", "recorder_node", "finish the episode and keep it"
    ),
    Service(
        "recorder/discard",
        "std_srvs/srv/Trigger",
        "recorder_node",
        "stop the episode and delete its file",
    ),
    Service(
        "recorder/mark_success",
        "std_srvs/srv/SetBool",
        "recorder_node",
        "mark the running episode a success (true) or a failure",
    ),
)


def topic(name: str) -> Topic:
    """The table entry of a topic (KeyError naming the known ones)."""
    for t in TOPICS:
        if t.name == name:
            return t
    raise KeyError(f"topic {name!r} is not in demuse_ros.ros.interfaces.TOPICS: add it there first")


def service(name: str) -> Service:
    """The table entry of a service (KeyError naming the table)."""
    for s in SERVICES:
        if s.name == name:
            return s
    raise KeyError(
        f"service {name!r} is not in demuse_ros.ros.interfaces.SERVICES: add it there first"
    )


def message_types() -> set[str]:
    """Every interface type used, ``pkg/kind/Name``."""
    return {t.type for t in TOPICS} | {s.type for s in SERVICES}


def interface_table() -> str:
    """The README's Markdown table of topics and services."""
    lines = [
        "| name | kind | type | QoS | from | to | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in TOPICS:
        subs = ", ".join(t.subscribers) or "(any)"
        pubs = ", ".join(t.publishers) if t.publishers != NODES else "every node"
        lines.append(
            f"| `{t.name}` | topic | `{t.type}` | {t.qos} | {pubs} | {subs} | {t.description} |"
        )
    for s in SERVICES:
        lines.append(
            f"| `{s.name}` | service | `{s.type}` | {s.qos} | (caller) | {s.server} | "
            f"{s.description} |"
        )
    return "\n".join(lines)


__all__ = [
    "NODES",
    "QOS_PROFILES",
    "SERVICES",
    "TOPICS",
    "Service",
    "Topic",
    "interface_table",
    "message_types",
    "service",
    "topic",
]
