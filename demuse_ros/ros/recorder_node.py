"""``recorder_node``: episodes of the cell's topics into MCAP files, on service calls.

The node fills in-process rings of the drivers' record schemas from the
sensor topics (as policy_node does) and runs the core
:class:`~demuse_ros.record.recorder.Recorder` on them, so an episode recorded
in ROS mode has the same layout as ``demuse record``'s. Commanded chunks
(``action_chunk`` + ``action_chunk/gripper``) are logged as the runtime sent
them. Services (``std_srvs``): ``recorder/start``, ``recorder/stop``,
``recorder/discard`` (Trigger) and ``recorder/mark_success`` (SetBool).
Parameters: ``recorder.*`` (:class:`RecorderConfig`; ``out_dir`` relative to
the node's working directory), ``record_on_start``, ``frames.*``.

What the topics do not carry is not recorded: the devices' own clock stamps
(``device_time_s`` is NaN) and the controller's robot/safety modes (-1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from demuse_ros.record.messages import UR_JOINT_NAMES, CameraIntrinsics
from demuse_ros.record.recorder import Recorder
from demuse_ros.ros import diagnostics
from demuse_ros.ros.bridge import StampJoiner, StreamRings
from demuse_ros.ros.convert import (
    arm_record,
    camera_record,
    chunk_from_points,
    ft_record,
    image_array,
    joint_order,
)
from demuse_ros.ros.node_base import Node, NodeHelpers, run
from demuse_ros.ros.node_config import FrameConfig, RecorderNodeConfig
from demuse_ros.timing.clock import now_ns

_SENSORS = {
    "camera/color/image_raw": ("camera", "color"),
    "camera/aligned_depth_to_color/image_raw": ("camera", "depth"),
    "ft/wrench": ("ft", "wrench"),
    "ft/left/wrench": ("ft", "left"),
    "ft/right/wrench": ("ft", "right"),
    "gripper/joint_states": ("ft", "gripper"),
    "joint_states": ("arm", "joints"),
    "tcp_pose": ("arm", "pose"),
    "tcp_speed": ("arm", "speed"),
}


def _ns(t: Any) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def _wrench(msg: Any) -> tuple[float, ...]:
    f, t = msg.wrench.force, msg.wrench.torque
    return (f.x, f.y, f.z, t.x, t.y, t.z)


class RecorderNode(NodeHelpers, Node):  # type: ignore[misc,valid-type]
    ROLE = "recorder_node"

    def __init__(self) -> None:
        super().__init__(self.ROLE)
        self.init_helpers(read_only=True)
        configs = self.read_config()
        settings = configs[RecorderNodeConfig]
        self.recorder_config = settings.recorder
        self.frames = configs[FrameConfig].frames()
        self.rings = StreamRings()
        self.joiners = {
            "camera": StampJoiner(("color", "depth"), self._camera_record),
            "ft": StampJoiner(("wrench", "left", "right", "gripper"), self._ft_record),
            "arm": StampJoiner(("joints", "pose", "speed"), self._arm_record),
        }
        self.intrinsics: CameraIntrinsics | None = None
        self.recorder: Recorder | None = None
        self._gripper: OrderedDict[int, np.ndarray] = OrderedDict()  # chunk stamp -> widths
        self.subs = [
            self.subscription(name, lambda msg, part=part: self._on_sensor(part, msg))
            for name, part in _SENSORS.items()
        ]
        self.subs += [
            self.subscription("camera/color/camera_info", self._on_info),
            self.subscription("action_chunk", self._on_chunk),
            self.subscription("action_chunk/gripper", self._on_gripper),
        ]
        self.srvs = [
            self.service("recorder/start", self._on_start),
            self.service("recorder/stop", self._on_stop),
            self.service("recorder/discard", self._on_discard),
            self.service("recorder/mark_success", self._on_mark),
        ]
        self.create_timer(1.0, self._publish_status)
        self._autostart = None
        if settings.record_on_start:
            self._autostart = self.create_timer(0.2, self._start_when_ready)

    def _start_when_ready(self) -> None:
        """record_on_start: the first episode starts once every stream has data."""
        if self.rings.camera is None or not (self.rings.ft.count and self.rings.arm.count):
            return
        self.destroy_timer(self._autostart)
        self._autostart = None
        path = self._ensure_recorder().start_episode()
        self.get_logger().info(f"recording {path}")

    # ------------------------------------------------------------------ topics → rings
    def _on_sensor(self, part: tuple[str, str], msg: Any) -> None:
        stream, name = part
        self.joiners[stream].add(self.stamp_ns(msg.header), name, msg)

    def _camera_record(self, t_ns: int, parts: dict[str, Any]) -> None:
        c, d = parts["color"], parts["depth"]
        color = image_array(c.data, c.height, c.width, c.step, c.encoding)
        depth = image_array(d.data, d.height, d.width, d.step, d.encoding)
        if self.rings.camera_ring(c.width, c.height) is not None:
            fields = camera_record(color, depth, self.joiners["camera"].completed)
            self.rings.put("camera", t_ns, now_ns(), fields)

    def _ft_record(self, t_ns: int, parts: dict[str, Any]) -> None:
        g = parts["gripper"]
        width = g.position[0] if len(g.position) else float("nan")
        fields = ft_record(
            _wrench(parts["wrench"]), width, _wrench(parts["left"]), _wrench(parts["right"])
        )
        self.rings.put("ft", t_ns, now_ns(), fields)

    def _arm_record(self, t_ns: int, parts: dict[str, Any]) -> None:
        js, pose, speed = parts["joints"], parts["pose"].pose, parts["speed"].twist
        order = joint_order(list(js.name), UR_JOINT_NAMES)
        if order is None:
            return
        qd = np.asarray(js.velocity)[order] if len(js.velocity) else []
        p, o, v, w = pose.position, pose.orientation, speed.linear, speed.angular
        twist = (v.x, v.y, v.z, w.x, w.y, w.z)
        fields = arm_record(
            np.asarray(js.position)[order], qd, (p.x, p.y, p.z), (o.x, o.y, o.z, o.w), twist
        )
        self.rings.put("arm", t_ns, now_ns(), fields)

    def _on_info(self, msg: Any) -> None:
        k = msg.k
        self.intrinsics = CameraIntrinsics(
            msg.width, msg.height, k[0], k[4], k[2], k[5], msg.distortion_model, tuple(msg.d)
        )

    # ------------------------------------------------------------------ commanded chunks
    def _on_gripper(self, msg: Any) -> None:
        self._gripper[_ns(msg.header.stamp)] = np.array([p.positions[0] for p in msg.points])
        while len(self._gripper) > 16:
            self._gripper.popitem(last=False)

    def _on_chunk(self, msg: Any) -> None:
        if self.recorder is None or not msg.points:
            return
        stamp = _ns(msg.header.stamp)
        points = []
        for p in msg.points:
            tr = p.transforms[0]
            points.append(
                (
                    _ns(p.time_from_start),
                    (tr.translation.x, tr.translation.y, tr.translation.z),
                    (tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w),
                )
            )
        t, poses = chunk_from_points(stamp, points, self.times)
        widths = self._gripper.pop(stamp, None)  # the policy node publishes it first
        if widths is not None and len(widths) != len(t):
            widths = None
        self.recorder.log_chunk(self.times.to_mono_ns(stamp), t, poses, widths)

    # ------------------------------------------------------------------ services
    def _ensure_recorder(self) -> Recorder:
        if self.recorder is None:
            if self.rings.camera is None:
                raise RuntimeError("no camera frame yet: is camera_node active?")
            self.recorder = Recorder(
                {"camera": self.rings.camera, "ft": self.rings.ft, "arm": self.rings.arm},
                self.recorder_config,
                intrinsics=self.intrinsics,
                frames=self.frames,
                base_metadata={"source": f"ROS 2 topics ({self.get_fully_qualified_name()})"},
            ).start()
        return self.recorder

    def _on_start(self, request: Any, response: Any) -> Any:
        return self.trigger_reply(
            response, lambda: f"recording {self._ensure_recorder().start_episode()}"
        )

    def _on_stop(self, request: Any, response: Any) -> Any:
        return self.trigger_reply(
            response, lambda: f"kept {self._ensure_recorder().stop_episode()}"
        )

    def _on_discard(self, request: Any, response: Any) -> Any:
        def discard() -> str:
            self._ensure_recorder().discard_episode()
            return "episode discarded (file deleted)"

        return self.trigger_reply(response, discard)

    def _on_mark(self, request: Any, response: Any) -> Any:
        def mark() -> str:
            self._ensure_recorder().mark_success(bool(request.data))
            return "marked success" if request.data else "marked failure"

        return self.trigger_reply(response, mark)

    def _publish_status(self) -> None:
        stats = self.recorder.stats() if self.recorder is not None else {"recording": False}
        stats["streams"] = {
            name: {"records": j.completed, "incomplete_dropped": j.dropped}
            for name, j in self.joiners.items()
        }
        self.publish_diagnostics([diagnostics.recorder_status(self.get_name(), stats)])

    def close(self) -> None:
        """Finish a running episode (kept, as ``demuse record`` does on Ctrl-C), release rings."""
        if self.recorder is not None:
            self.recorder.close()
        self.rings.close()


def main(args: Any = None) -> int:
    return run(RecorderNode, "recorder_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
