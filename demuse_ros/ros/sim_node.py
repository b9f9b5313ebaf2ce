"""``sim_node``: the simulated workcell (the twin) for the ROS 2 layer; a lifecycle node.

configure starts the twin in its own process
(:class:`~demuse_ros.twin.runner.TwinProcess`, as ``demuse run --sim`` does); it
serves the devices' real protocols on loopback: RTDE, dashboard and script
ports for arm_node, Modbus TCP for ft_node, and a shared-memory frame ring
(``camera.ring_name``) for camera_node. The driver nodes connect to it exactly
as to the real cell; ``sim.launch.py`` configures them once this node is
configured. activate publishes what only a simulator knows, for the scripted
expert (the plunger force and the plunger cap's pose), and the twin's
real-time factor and task state on ``/diagnostics``. cleanup stops the twin.
Parameters: the twin's ``SimConfig`` (``config/sim.yaml``).
"""

from __future__ import annotations

from typing import Any

from demuse_ros.config import ConfigError
from demuse_ros.ros import diagnostics
from demuse_ros.ros.node_base import (
    LifecycleNode,
    NodeHelpers,
    TransitionCallbackReturn,
    config_failure,
    run,
)
from demuse_ros.timing.clock import now_ns

#: The plunger force topic's rate (Hz): the expert reads the newest at 10 Hz.
FORCE_RATE_HZ = 50.0


class SimNode(NodeHelpers, LifecycleNode):  # type: ignore[misc,valid-type]
    ROLE = "sim_node"

    def __init__(self) -> None:
        super().__init__(self.ROLE)
        self.init_helpers(read_only=False)
        self.twin: Any = None
        self.timers: list[Any] = []
        self._task_done: bool | None = None
        self.force_pub = self.publisher("sim/plunger_force")
        self.top_pub = self.publisher("sim/plunger_top_pose")

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: Any) -> Any:
        from demuse_ros.twin.runner import TwinProcess
        from demuse_ros.twin.sim_config import SimConfig

        try:
            sim = self.read_config()[SimConfig]
            self.twin = TwinProcess(sim).start()  # MuJoCo, servers and renderer: seconds
        except (ConfigError, RuntimeError, OSError) as exc:
            self.twin = None
            return config_failure(self, exc)
        self.get_logger().info(f"twin up: {self.twin.endpoints}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: Any) -> Any:
        self._publish_top()
        self.timers = [
            self.create_timer(1.0 / FORCE_RATE_HZ, self._publish_force),
            self.create_timer(0.2, self._watch_task),
            self.create_timer(1.0, self._publish_status),
        ]
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: Any) -> Any:
        self._stop_timers()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: Any) -> Any:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: Any) -> Any:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop publishing and stop the twin (servers, renderer, its process)."""
        self._stop_timers()
        if self.twin is not None:
            try:
                self.twin.stop()
            finally:
                self.twin = None

    def _stop_timers(self) -> None:
        for timer in self.timers:
            self.destroy_timer(timer)
        self.timers = []

    # ------------------------------------------------------------------ publishing
    def _publish_top(self) -> None:
        x, y, z = self.twin.call("plunger_top_pose")[:3]
        pose = {"position": {"x": x, "y": y, "z": z}, "orientation": {"w": 1.0}}
        header = self.header(now_ns(), "base")  # the twin's world is the robot base
        msg = self.build_for("sim/plunger_top_pose", {"header": header, "pose": pose})
        self.top_pub.publish(msg)

    def _publish_force(self) -> None:
        force = float(self.twin.call("plunger_force_n"))
        self.force_pub.publish(self.build_for("sim/plunger_force", {"data": force}))

    def _watch_task(self) -> None:
        """The task's end reaches /diagnostics at once (policy_node stops on it)."""
        done = bool(self.twin.call("task_status").get("done"))
        if done != self._task_done:
            self._task_done = done
            self._publish_status()

    def _publish_status(self) -> None:
        self._publish_top()  # latched, and repeated for subscribers with volatile QoS
        stats: dict[str, Any] = self.twin.call("stats")
        self.publish_diagnostics([diagnostics.sim_status(self.get_name(), stats)])


def main(args: Any = None) -> int:
    return run(SimNode, "sim_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
