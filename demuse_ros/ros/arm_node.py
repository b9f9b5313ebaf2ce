"""``arm_node``: the UR arm as ROS 2 interfaces; a lifecycle node.

configure starts the arm driver process (``ur_rtde`` connects; its safety
filter runs in that process); activate publishes the controller state at up
to ``publish_rate_hz`` (``joint_states``, ``tcp_pose``, ``tcp_speed``, TF base →
tool) and forwards every ``action_chunk`` to the driver, whose safety filter
vets each chunk whole before the servo loop interpolates it; an empty chunk
stops the arm. deactivate stops the motion (``servoStop``); cleanup runs
``servoStop`` → ``stopScript`` → ``disconnect``.

The filter's force/torque limit reads an F/T ring. The embedded cell hands it
the F/T driver's ring; here the node fills a ring of its own from ``ft/wrench``
(unless ``arm.ft_ring`` names one), so with no F/T data the arm takes a
protective hold as soon as it moves, exactly as in the embedded cell.
Services: ``arm/stop``, ``arm/reset_fault``. Parameters: ``arm.*``
(:class:`ArmDriverConfig`), ``publish_rate_hz``, ``frames.*``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from demuse_ros.drivers.arm import ArmDriverProcess
from demuse_ros.record.messages import arm_messages
from demuse_ros.ros import diagnostics
from demuse_ros.ros.bridge import FT_CAPACITY
from demuse_ros.ros.convert import chunk_from_points
from demuse_ros.ros.driver_node import DriverNode
from demuse_ros.ros.node_base import run
from demuse_ros.ros.node_config import ArmNodeConfig
from demuse_ros.sync.streams import ft_schema
from demuse_ros.timing.clock import now_ns
from demuse_ros.transport.ring_buffer import RingBuffer

_TOPICS = ("joint_states", "tcp_pose", "tcp_speed")
_NAN_FINGERS = np.full((2, 6), np.nan)


def _ns(t: Any) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


class ArmNode(DriverNode):
    ROLE = "arm_node"
    CONFIG = ArmNodeConfig
    POLL_HZ = 250.0  # a state waits at most 4 ms; e-Series states are decimated below

    def make_driver(self, config: ArmNodeConfig) -> ArmDriverProcess:
        # At most publish_rate_hz (10 % slack for the controller's own jitter): every CB3
        # state at 125 Hz, every 4th e-Series state.
        self.min_interval_ns = round(0.9e9 / config.publish_rate_hz)
        self.ft_ring: RingBuffer | None = None
        arm = config.arm
        if not arm.ft_ring:  # the safety filter's F/T input, filled from ft/wrench
            self.ft_ring = RingBuffer.create(ft_schema(), FT_CAPACITY, shared=True)
            arm = dataclasses.replace(arm, ft_ring=self.ft_ring.name)
        return ArmDriverProcess(arm)

    def on_configured(self) -> None:
        from tf2_ros import TransformBroadcaster

        self.pubs = {name: self.publisher(name) for name in _TOPICS}
        self.tf = TransformBroadcaster(self)
        self.chunks_forwarded = self.chunks_refused = 0
        self.subs = [self.subscription("action_chunk", self.on_chunk)]
        if self.ft_ring is not None:
            self.subs.append(self.subscription("ft/wrench", self.on_wrench))
        self.srvs = [
            self.service("arm/stop", self.on_stop),
            self.service("arm/reset_fault", self.on_reset),
        ]
        self._watched = (-1.0, -1.0, -1.0)
        self.watch_timer = self.create_timer(0.05, self._watch)

    def publish_record(self, record: dict[str, Any]) -> None:
        for topic, fields in arm_messages(record, self.times.offset_ns, self.frames.frames()):
            if topic == "tf":
                self.tf.sendTransform(
                    [
                        self.build("geometry_msgs/msg/TransformStamped", t)
                        for t in fields["transforms"]
                    ]
                )
            elif topic in self.pubs:  # arm/time_reference is the recorder's
                self.pubs[topic].publish(self.build_for(topic, fields))

    # ------------------------------------------------------------------ commands
    def on_chunk(self, msg: Any) -> None:
        """Absolute-time TCP waypoints → the driver (its safety filter decides)."""
        if not self.active:
            self.chunks_refused += 1
            return
        if not msg.points:
            self.driver.stop_motion()
            return
        points = []
        for p in msg.points:
            if len(p.transforms) != 1:
                self.chunks_refused += 1
                self.get_logger().warning(
                    "action_chunk point without exactly one transform: dropped"
                )
                return
            tr = p.transforms[0]
            xyz = (tr.translation.x, tr.translation.y, tr.translation.z)
            quat = (tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w)
            points.append((_ns(p.time_from_start), xyz, quat))
        try:
            t, poses = chunk_from_points(_ns(msg.header.stamp), points, self.times)
            self.driver.send_chunk(t, poses)
            self.chunks_forwarded += 1
        except (ValueError, RuntimeError) as exc:  # malformed, or the driver is restarting
            self.chunks_refused += 1
            self.get_logger().warning(f"action_chunk not forwarded: {exc}")

    def on_wrench(self, msg: Any) -> None:
        f, tq = msg.wrench.force, msg.wrench.torque
        t = self.stamp_ns(msg.header)
        self.ft_ring.put(  # type: ignore[union-attr]
            t,
            now_ns(),
            math.nan,
            wrench=(f.x, f.y, f.z, tq.x, tq.y, tq.z),
            finger_wrenches=_NAN_FINGERS,
            gripper_width_m=math.nan,
        )

    def on_stop(self, request: Any, response: Any) -> Any:
        def stop() -> str:
            self._need_driver().stop_motion()
            return "servoStop sent; the plan is dropped"

        return self.trigger_reply(response, stop)

    def on_reset(self, request: Any, response: Any) -> Any:
        def reset() -> str:
            self._need_driver().reset_fault()
            return "reset sent; watch /diagnostics for fault = 0 (the robot must be unlocked)"

        return self.trigger_reply(response, reset)

    def _need_driver(self) -> ArmDriverProcess:
        if self.driver is None:
            raise RuntimeError("not configured: no arm driver")
        return self.driver

    def _watch(self) -> None:
        """Publish diagnostics at once when a chunk is refused or a fault/hold changes."""
        if self.driver is None:
            return
        s = self.driver.stats()
        now = (s.get("chunks_rejected", 0.0), s.get("fault", 0.0), s.get("hold", 0.0))
        if now != self._watched:
            self._watched = now
            self.publish_status()

    def stop_output(self) -> None:
        self.driver.stop_motion()

    def status(self, stats: dict[str, float], rate_hz: float) -> dict[str, Any]:
        stats = {
            **stats,
            "chunks_forwarded": float(self.chunks_forwarded),
            "chunks_refused_by_node": float(self.chunks_refused),
        }
        return diagnostics.arm_status(self.get_name(), stats, rate_hz, self.config.arm.host)

    def release(self) -> None:
        for pub in getattr(self, "pubs", {}).values():
            self.destroy_publisher(pub)
        for sub in getattr(self, "subs", []):
            self.destroy_subscription(sub)
        for srv in getattr(self, "srvs", []):
            self.destroy_service(srv)
        if getattr(self, "watch_timer", None) is not None:
            self.destroy_timer(self.watch_timer)
        self.pubs, self.subs, self.srvs, self.watch_timer = {}, [], [], None
        if getattr(self, "ft_ring", None) is not None:
            self.ft_ring.close()  # type: ignore[union-attr]
            self.ft_ring = None


def main(args: Any = None) -> int:
    return run(ArmNode, "arm_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
