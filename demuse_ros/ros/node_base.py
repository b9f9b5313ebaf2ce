"""What every node shares: rclpy import guard, parameters, interfaces, diagnostics, main().

This module imports without ROS 2 (the node modules must, so that their
console scripts resolve and the static tests run anywhere): when ``rclpy`` is
missing the node base classes are plain ``object`` and :func:`run` exits with a
message saying what to source. Only API common to Humble and Jazzy is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from demuse_ros.config import ConfigError
from demuse_ros.ros import diagnostics, interfaces
from demuse_ros.ros.convert import TimeMap, fill_message, message_class
from demuse_ros.ros.node_config import node_parameter_groups
from demuse_ros.ros.params import ParamGroup, declarations, to_configs

try:  # a ROS 2 environment (/opt/ros/<distro>/setup.bash sourced)
    import rclpy
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
    from rclpy.node import Node

    HAVE_RCLPY = True
except ImportError:  # the core and the static tests run without ROS
    rclpy = None
    Node = LifecycleNode = object  # type: ignore[assignment,misc]
    TransitionCallbackReturn = None  # type: ignore[assignment]
    HAVE_RCLPY = False

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:

    class ExternalShutdownException(Exception):  # type: ignore[no-redef]
        """Stand-in where rclpy (or this exception, before Humble) is missing."""


ROS_HINT = (
    "it is a ROS 2 node and needs rclpy: source ROS 2 Humble or Jazzy "
    "(`source /opt/ros/<distro>/setup.bash`), build this package with colcon and start it "
    "with `ros2 run demuse_ros <node>` or `ros2 launch demuse_ros demuse.launch.py`. "
    "Without ROS 2, `demuse run --sim` runs the same loop embedded"
)


def require_rclpy(executable: str) -> None:
    """Exit with what to source when rclpy is not importable."""
    if not HAVE_RCLPY:
        raise SystemExit(f"demuse_ros {executable}: {ROS_HINT}")


def qos_profile(name: str) -> Any:
    """The rclpy QoS of an :mod:`~demuse_ros.ros.interfaces` profile name."""
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
        qos_profile_services_default,
    )

    if name == "sensor":
        return qos_profile_sensor_data
    if name == "services":
        return qos_profile_services_default
    reliable = dict(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    if name == "reliable":
        return QoSProfile(depth=10, durability=DurabilityPolicy.VOLATILE, **reliable)
    if name == "latched":
        return QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, **reliable)
    raise KeyError(f"unknown QoS profile {name!r}; known: {interfaces.QOS_PROFILES}")


_KIND_TYPES = {
    "bool": "BOOL",
    "integer": "INTEGER",
    "double": "DOUBLE",
    "string": "STRING",
    "bool_array": "BOOL_ARRAY",
    "integer_array": "INTEGER_ARRAY",
    "double_array": "DOUBLE_ARRAY",
    "string_array": "STRING_ARRAY",
}


class NodeHelpers:
    """Mixin for :class:`rclpy.node.Node` / :class:`rclpy.lifecycle.LifecycleNode` subclasses.

    ``ROLE`` is the node's name in :mod:`~demuse_ros.ros.interfaces` and
    :mod:`~demuse_ros.ros.node_config` (the ROS node name may be remapped).
    """

    ROLE = ""

    def init_helpers(self, *, read_only: bool) -> None:
        """Declare the parameters, map the clocks, create ``/diagnostics``. Call first."""
        node: Any = self
        self.times = TimeMap(node.get_clock().now().nanoseconds, time.monotonic_ns())
        self._types: dict[str, type] = {}
        self._groups: Sequence[ParamGroup] = node_parameter_groups(self.ROLE)
        self._unset: dict[str, Any] = {}
        self._declare(read_only)
        self._diag_pub = self.publisher("/diagnostics")
        self.log = logging.getLogger(f"demuse.ros.{self.ROLE}")

    # ------------------------------------------------------------------ parameters
    def _declare(self, read_only: bool) -> None:
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
        from rclpy.parameter import Parameter

        node: Any = self
        for d in declarations(self._groups):
            desc = ParameterDescriptor(
                name=d.name,
                description=d.description,
                additional_constraints=d.constraints,
                read_only=read_only,
            )
            if d.float_range is not None:
                desc.floating_point_range = [
                    FloatingPointRange(
                        from_value=d.float_range[0], to_value=d.float_range[1], step=0.0
                    )
                ]
            if d.int_range is not None:
                desc.integer_range = [
                    IntegerRange(from_value=d.int_range[0], to_value=d.int_range[1], step=0)
                ]
            if isinstance(d.default, list) and not d.default:
                # An empty list has no element type: declare the type, keep the default here.
                node.declare_parameter(d.name, getattr(Parameter.Type, _KIND_TYPES[d.kind]), desc)
                self._unset[d.name] = d.default
            else:
                node.declare_parameter(d.name, d.default, desc)

    def parameter_values(self) -> dict[str, Any]:
        """Dotted name → current value of every declared parameter of this node."""
        node: Any = self
        out: dict[str, Any] = {}
        for d in declarations(self._groups):
            try:
                param = node.get_parameter(d.name)
                value = param.value
            except Exception:  # declared by type only and never set (rclpy raises)
                value = None
            out[d.name] = self._unset.get(d.name) if value is None else value
        return out

    def read_config(self) -> dict[type, Any]:
        """The node's config objects, validated by the core's dataclasses.

        Raises:
            ConfigError: naming the parameter, the value and what to change.
        """
        node: Any = self
        return to_configs(
            self._groups,
            self.parameter_values(),
            source=f"{node.get_fully_qualified_name()} parameters",
        )

    # ------------------------------------------------------------------ interfaces
    def msg_class(self, type_name: str) -> type:
        cls = self._types.get(type_name)
        if cls is None:
            cls = self._types[type_name] = message_class(type_name)
        return cls

    def build(self, type_name: str, values: Any) -> Any:
        """A message of ``type_name`` filled from a field mapping."""
        return fill_message(self.msg_class(type_name)(), values, self.msg_class)

    def build_for(self, topic_name: str, values: Any) -> Any:
        """A message of ``topic_name``'s type (from the table) filled from a field mapping."""
        return self.build(interfaces.topic(topic_name).type, values)

    def publisher(self, name: str) -> Any:
        t = interfaces.topic(name)
        if self.ROLE not in t.publishers:
            raise KeyError(f"{self.ROLE} is not a publisher of {name} in interfaces.TOPICS")
        node: Any = self
        return node.create_publisher(self.msg_class(t.type), name, qos_profile(t.qos))

    def subscription(self, name: str, callback: Callable[[Any], None]) -> Any:
        t = interfaces.topic(name)
        if self.ROLE not in t.subscribers:
            raise KeyError(f"{self.ROLE} is not a subscriber of {name} in interfaces.TOPICS")
        node: Any = self
        return node.create_subscription(self.msg_class(t.type), name, callback, qos_profile(t.qos))

    def service(self, name: str, callback: Callable[[Any, Any], Any]) -> Any:
        s = interfaces.service(name)
        if s.server != self.ROLE:
            raise KeyError(f"{self.ROLE} does not serve {name} in interfaces.SERVICES")
        node: Any = self
        return node.create_service(self.msg_class(s.type), name, callback)

    def header(self, t_mono_ns: int, frame_id: str) -> dict[str, Any]:
        sec, nanosec = self.times.stamp(t_mono_ns)
        return {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id}

    def stamp_ns(self, header: Any) -> int:
        """Monotonic ns of a received message's ``header.stamp``."""
        return self.times.from_stamp(header.stamp.sec, header.stamp.nanosec)

    def publish_diagnostics(self, statuses: Sequence[dict[str, Any]]) -> None:
        now = time.monotonic_ns()
        self._diag_pub.publish(
            self.build(
                "diagnostic_msgs/msg/DiagnosticArray",
                {"header": self.header(now, ""), "status": list(statuses)},
            )
        )

    def trigger_reply(self, response: Any, action: Callable[[], str | None]) -> Any:
        """Run a service action; success and its message, or the error in words."""
        try:
            response.message = action() or "ok"
            response.success = True
        except (RuntimeError, ValueError, ConfigError) as exc:
            response.success, response.message = False, str(exc)
        return response


def config_failure(node: Any, exc: Exception) -> Any:
    """Log a configure failure in words and return FAILURE (the node stays unconfigured)."""
    node.get_logger().error(f"configure failed: {exc}")
    return TransitionCallbackReturn.FAILURE


def level_name(status: dict[str, Any]) -> str:
    return diagnostics.LEVEL_NAMES[diagnostics.level_of(status)]


def run(node_factory: Callable[[], Any], executable: str, args: Any = None) -> int:
    """``main()`` of a node: init, spin until Ctrl-C, shutdown or ``node.finished``; clean up.

    Humble and Jazzy both: ``rclpy.init`` with ``try/finally`` (no ``with`` form).

    The node's ``close()`` runs in ``finally`` (drivers stopped, arm first in
    its own node), then ``destroy_node`` and ``rclpy.try_shutdown``.
    """
    require_rclpy(executable)
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # A node may end its own run (policy_node when the episode is done): ``finished``.
        while rclpy.ok() and not getattr(node, "finished", False):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as exc:  # a plain node validates its parameters at start
        raise SystemExit(f"{executable}: {exc}") from None
    finally:
        if node is not None:
            try:
                node.close()
            finally:
                node.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = [
    "HAVE_RCLPY",
    "ROS_HINT",
    "LifecycleNode",
    "Node",
    "NodeHelpers",
    "TransitionCallbackReturn",
    "config_failure",
    "qos_profile",
    "require_rclpy",
    "run",
]
