"""``ft_node``: the RG2-FT fingertip force/torque and gripper as ROS 2 interfaces; lifecycle.

configure starts the F/T driver process (Modbus connects, samples flow);
activate publishes every sample: ``ft/wrench`` (the combined, clipped and
smoothed wrench in ``frames.wrench``), the raw per-finger wrenches and the
finger opening on ``gripper/joint_states``. ``action_chunk/gripper`` plans the
fingers (widths at absolute times, checked against the gripper's limits);
``ft/zero`` zeroes both sensors. deactivate stops the fingers. Parameters:
``ft.*`` (:class:`FTDriverConfig`), ``frames.*``.
"""

from __future__ import annotations

from typing import Any

from demuse_ros.drivers.ft import FTDriverProcess
from demuse_ros.record.messages import ft_messages
from demuse_ros.ros import diagnostics
from demuse_ros.ros.convert import gripper_from_points
from demuse_ros.ros.driver_node import DriverNode
from demuse_ros.ros.node_base import run
from demuse_ros.ros.node_config import FTNodeConfig

_TOPICS = ("ft/wrench", "ft/left/wrench", "ft/right/wrench", "gripper/joint_states")
#: Grip force when an ``action_chunk/gripper`` carries no effort (N).
DEFAULT_GRIP_FORCE_N = 20.0


class FTNode(DriverNode):
    ROLE = "ft_node"
    CONFIG = FTNodeConfig
    POLL_HZ = 200.0  # twice the 100 Hz poll rate: a sample waits at most 5 ms

    def make_driver(self, config: FTNodeConfig) -> FTDriverProcess:
        return FTDriverProcess(config.ft)

    def on_configured(self) -> None:
        self.pubs = {name: self.publisher(name) for name in _TOPICS}
        self.plans_refused = 0
        self.gripper_sub = self.subscription("action_chunk/gripper", self.on_gripper)
        self.zero_srv = self.service("ft/zero", self.on_zero)

    def publish_record(self, record: dict[str, Any]) -> None:
        for topic, fields in ft_messages(record, self.times.offset_ns, self.frames.frames()):
            pub = self.pubs.get(topic)
            if pub is not None:  # ft/time_reference is the recorder's
                pub.publish(self.build_for(topic, fields))

    def on_gripper(self, msg: Any) -> None:
        """Widths at absolute times (``header.stamp + time_from_start``) → the gripper plan."""
        if not self.active:
            self.plans_refused += 1
            return
        if not msg.points:
            self.driver.stop_gripper()
            return
        points = [
            (
                p.time_from_start.sec * 1_000_000_000 + p.time_from_start.nanosec,
                p.positions,
                p.effort,
            )
            for p in msg.points
        ]
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        t, widths, force = gripper_from_points(stamp, points, self.times)
        try:
            self.driver.send_gripper_plan(
                t, widths, DEFAULT_GRIP_FORCE_N if force is None else force
            )
        except (ValueError, RuntimeError) as exc:  # outside the limits, or the driver restarts
            self.plans_refused += 1
            self.get_logger().warning(f"gripper plan refused: {exc}")

    def on_zero(self, request: Any, response: Any) -> Any:
        def zero() -> str:
            if self.driver is None:
                raise RuntimeError("not configured: no F/T driver")
            self.driver.zero()
            return "zeroing both fingertip sensors at their current reading"

        return self.trigger_reply(response, zero)

    def stop_output(self) -> None:
        self.driver.stop_gripper()

    def status(self, stats: dict[str, float], rate_hz: float) -> dict[str, Any]:
        stats = {**stats, "gripper_plans_refused": float(self.plans_refused)}
        return diagnostics.ft_status(self.get_name(), stats, rate_hz, self.config.ft.host)

    def release(self) -> None:
        for pub in getattr(self, "pubs", {}).values():
            self.destroy_publisher(pub)
        self.pubs = {}
        if getattr(self, "gripper_sub", None) is not None:
            self.destroy_subscription(self.gripper_sub)
            self.destroy_service(self.zero_srv)
            self.gripper_sub = None


def main(args: Any = None) -> int:
    return run(FTNode, "ft_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
