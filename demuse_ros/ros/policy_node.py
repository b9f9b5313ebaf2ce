"""``policy_node``: the synchronizer, the denoiser and the 10 Hz runtime over ROS 2 topics.

The node fills in-process rings of the drivers' record schemas from the sensor
topics (stamps = header capture times mapped back to host monotonic), and runs
the embedded runner's :class:`~demuse_ros.runtime.scheduler.Runtime` unchanged
in its own thread on a :class:`~demuse_ros.ros.bridge.RemoteCell`: chunks go
out on ``action_chunk`` (+ ``action_chunk/gripper``), the arm node forwards them
to the arm driver, whose safety filter vets every waypoint; refusals come back
through ``/diagnostics``. ``policy: expert`` runs the twin's scripted expert
(privileged topics from sim_node); a folder runs a checkpoint on
``inference.backend``. Parameters: ``policy``, ``stop_when_done``, the runtime
(``chunk.*``, ``sync.*``, ``inference.*``, …), ``frames.*``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

import numpy as np

from demuse_ros.record.messages import UR_JOINT_NAMES, chunk_messages
from demuse_ros.ros import diagnostics
from demuse_ros.ros.bridge import RemoteCell, StampJoiner, StreamRings, TopicTwin
from demuse_ros.ros.convert import arm_record, camera_record, ft_record, image_array, joint_order
from demuse_ros.ros.node_base import Node, NodeHelpers, run
from demuse_ros.ros.node_config import FrameConfig, PolicyNodeConfig
from demuse_ros.runtime.scheduler import Runtime, RuntimeConfig
from demuse_ros.timing.clock import now_ns

_SENSORS = {
    "camera/color/image_raw": ("camera", "color"),
    "camera/aligned_depth_to_color/image_raw": ("camera", "depth"),
    "ft/wrench": ("ft", "wrench"),
    "gripper/joint_states": ("ft", "gripper"),
    "joint_states": ("arm", "joints"),
    "tcp_pose": ("arm", "pose"),
}


class PolicyNode(NodeHelpers, Node):  # type: ignore[misc,valid-type]
    ROLE = "policy_node"

    def __init__(self) -> None:
        super().__init__(self.ROLE)
        self.init_helpers(read_only=True)  # read once, at start
        configs = self.read_config()
        self.settings: PolicyNodeConfig = configs[PolicyNodeConfig]
        self.runtime_config: RuntimeConfig = configs[RuntimeConfig]
        self.frames = configs[FrameConfig].frames()
        self.rings = StreamRings()
        self.joiners = {
            "camera": StampJoiner(("color", "depth"), self._camera_record),
            "ft": StampJoiner(("wrench", "gripper"), self._ft_record),
            "arm": StampJoiner(("joints", "pose"), self._arm_record),
        }
        self.chunk_pub = self.publisher("action_chunk")
        self.gripper_pub = self.publisher("action_chunk/gripper")
        self.cell = RemoteCell(self.rings, self._publish_chunk, self._publish_stop)
        self.subs = [
            self.subscription(name, lambda msg, part=part: self._on_sensor(part, msg))
            for name, part in _SENSORS.items()
        ]
        self.subs.append(self.subscription("/diagnostics", self._on_diagnostics))
        self.twin: TopicTwin | None = None
        if self.settings.policy == "expert":
            self.twin = TopicTwin()
            self.subs.append(self.subscription("sim/plunger_force", self._on_force))
            self.subs.append(self.subscription("sim/plunger_top_pose", self._on_top))
        self.enable_srv = self.service("policy/enable", self._on_enable)
        self.enabled = True
        self.finished = False
        self.runtime: Runtime | None = None
        self.waiting_for = "camera, F/T and arm data"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="policy-runtime", daemon=True)
        self._thread.start()
        self.create_timer(1.0, self._publish_status)

    # ------------------------------------------------------------------ subscriptions → rings
    def _on_sensor(self, part: tuple[str, str], msg: Any) -> None:
        stream, name = part
        self.joiners[stream].add(self.stamp_ns(msg.header), name, msg)

    def _camera_record(self, t_ns: int, parts: dict[str, Any]) -> None:
        c, d = parts["color"], parts["depth"]
        color = image_array(
            c.data, c.height, c.width, c.step, c.encoding, is_bigendian=bool(c.is_bigendian)
        )
        depth = image_array(
            d.data, d.height, d.width, d.step, d.encoding, is_bigendian=bool(d.is_bigendian)
        )
        if self.rings.camera_ring(c.width, c.height) is None:
            return  # a size other than the first frame's: counted in rings.wrong_size
        fields = camera_record(color, depth, self.joiners["camera"].completed)
        self.rings.put("camera", t_ns, now_ns(), fields)

    def _ft_record(self, t_ns: int, parts: dict[str, Any]) -> None:
        w, g = parts["wrench"].wrench, parts["gripper"]
        wrench = (w.force.x, w.force.y, w.force.z, w.torque.x, w.torque.y, w.torque.z)
        width = g.position[0] if len(g.position) else float("nan")
        self.rings.put("ft", t_ns, now_ns(), ft_record(wrench, width))

    def _arm_record(self, t_ns: int, parts: dict[str, Any]) -> None:
        js, pose = parts["joints"], parts["pose"].pose
        order = joint_order(list(js.name), UR_JOINT_NAMES)
        if order is None:
            return
        q = np.asarray(js.position)[order]
        qd = np.asarray(js.velocity)[order] if len(js.velocity) else []
        p, o = pose.position, pose.orientation
        self.rings.put(
            "arm", t_ns, now_ns(), arm_record(q, qd, (p.x, p.y, p.z), (o.x, o.y, o.z, o.w))
        )

    def _on_diagnostics(self, msg: Any) -> None:
        for st in msg.status:
            if st.name.endswith(": arm"):
                self.cell.arm.update_stats(diagnostics.values_of({"values": st.values}))
            elif st.name.endswith(": twin") and self.twin is not None:
                values = diagnostics.values_of({"values": st.values})
                self.twin.set(
                    "task_status",
                    {
                        "done": values.get("task.done") == "true",
                        "success": values.get("task.success") == "true",
                    },
                )

    def _on_force(self, msg: Any) -> None:
        self.twin.set("plunger_force_n", float(msg.data))  # type: ignore[union-attr]

    def _on_top(self, msg: Any) -> None:
        p = msg.pose.position
        self.twin.set("plunger_top_pose", [p.x, p.y, p.z])  # type: ignore[union-attr]

    # ------------------------------------------------------------------ commands out
    def _publish_chunk(
        self, t_ns: np.ndarray, poses: np.ndarray, widths: Any, force_n: float
    ) -> None:
        built = dict(
            chunk_messages(now_ns(), t_ns, poses, widths, self.times.offset_ns, self.frames)
        )
        if "action_chunk/gripper" in built:
            gripper = built["action_chunk/gripper"]
            for point in gripper["points"]:
                point["effort"] = [force_n]
            self.gripper_pub.publish(self.build_for("action_chunk/gripper", gripper))
        self.chunk_pub.publish(self.build_for("action_chunk", built["action_chunk"]))

    def _publish_stop(self) -> None:
        header = self.header(now_ns(), self.frames.base)
        self.chunk_pub.publish(self.build_for("action_chunk", {"header": header, "points": []}))

    def _on_enable(self, request: Any, response: Any) -> Any:
        self.enabled = bool(request.data)
        if not self.enabled:
            self._publish_stop()
            if self.runtime is not None:
                self.runtime.plan = None  # the next chunk starts from the observed pose
        response.success = True
        response.message = "running" if self.enabled else "holding: the policy is not asked"
        return response

    # ------------------------------------------------------------------ the runtime thread
    def _make_policy(self) -> tuple[Any, RuntimeConfig]:
        cfg = self.runtime_config
        if self.settings.policy == "expert":
            from demuse_ros.runtime.policies import ExpertPolicy

            # The expert re-plans every tick (its force loop closes at the loop rate).
            cfg = dataclasses.replace(cfg, chunk=dataclasses.replace(cfg.chunk, stride=1))
            return ExpertPolicy(self.twin, cfg.chunk.rate_hz), cfg
        from demuse_ros.paths import resolve_policy
        from demuse_ros.runtime.inference import ModelPolicy

        path = resolve_policy(self.settings.policy)
        return ModelPolicy(path, cfg.inference, stride=cfg.chunk.stride), cfg

    def _loop(self) -> None:
        policy = None
        try:
            policy, cfg = self._make_policy()
            while not self._stop.wait(0.05):  # the camera ring exists from the first frame
                if self.rings.camera is not None and self.rings.ft.count and self.rings.arm.count:
                    break
            if self._stop.is_set():
                return
            self.runtime = Runtime(self.cell, policy, cfg)
            self.waiting_for = ""
            self.get_logger().info(f"runtime started: policy {policy.name}")
            while not self._stop.is_set():
                if not self.enabled:
                    self._stop.wait(0.1)
                    continue
                self.runtime.cycle()
                if self.runtime.cycles % 50 == 0:
                    self._log_progress()
                if self.settings.stop_when_done and self._episode_done(policy):
                    self.get_logger().info("episode done: holding the arm, stopping")
                    break
        except Exception as exc:  # say why, stop the arm, end the node
            self.get_logger().error(f"runtime stopped: {type(exc).__name__}: {exc}")
        finally:
            try:
                self._publish_stop()
            except Exception as exc:  # the context is already shut down (Ctrl-C)
                self.log.info("final stop not published (%s); the arm node stops on its own", exc)
            if self.runtime is not None:
                self.get_logger().info(
                    "run statistics: " + json.dumps(self.runtime.stats(), default=str)
                )
            if policy is not None and hasattr(policy, "close"):
                policy.close()
            self.finished = not self._stop.is_set()

    def _episode_done(self, policy: Any) -> bool:
        if self.runtime is None or not self.runtime.chunks_sent:
            return False  # not started: the expert reads "done" until its first reset
        task = (
            self.twin.call("task_status")
            if self.twin is not None and self.twin.has("task_status")
            else {}
        )
        return bool(task.get("done") or getattr(policy, "done", False))

    def _log_progress(self) -> None:
        s = self.runtime.stats()  # type: ignore[union-attr]
        rejected = self.cell.arm.stats()["chunks_rejected"]
        self.get_logger().info(
            f"cycle {s['cycles']}  {s['tick_hz']:.2f} Hz  misses {s['deadline_misses']}  "
            f"policy {s['policy_ms_p50']:.1f} ms  holds {sum(s['holds'].values())}  "
            f"chunks {s['chunks_sent']}  arm rejected {rejected:.0f}"
        )

    def _publish_status(self) -> None:
        stats: dict[str, Any] = self.runtime.stats() if self.runtime is not None else {}
        stats["streams"] = {
            name: {"records": j.completed, "incomplete_dropped": j.dropped}
            for name, j in self.joiners.items()
        }
        stats["out_of_order"] = dict(self.rings.out_of_order)
        st = diagnostics.runtime_status(
            self.get_name(),
            stats,
            policy=self.settings.policy,
            enabled=self.enabled,
            waiting_for=self.waiting_for,
        )
        self.publish_diagnostics([st])

    def close(self) -> None:
        """Stop the runtime thread (the arm is told to stop), then release the rings."""
        self._stop.set()
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self.rings.close()


def main(args: Any = None) -> int:
    return run(PolicyNode, "policy_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
