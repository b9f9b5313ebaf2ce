"""``camera_node``: the D435i (or the twin's camera) as ROS 2 topics; a lifecycle node.

configure starts the camera driver process (it connects and frames flow) and
publishes the camera's extrinsic on ``/tf_static``; activate publishes every
frame the driver writes: colour (``rgb8``), depth aligned to colour (``16UC1``
mm) and ``camera_info`` (the intrinsics the device reports). Header stamps are
capture times. Parameters: ``camera.*`` (:class:`CameraDriverConfig`),
``extrinsic.*``, ``frames.*``.
"""

from __future__ import annotations

from typing import Any

from demuse_ros.drivers.camera import CameraDriver
from demuse_ros.drivers.process import DriverProcess
from demuse_ros.record.messages import CameraIntrinsics, camera_messages
from demuse_ros.ros import diagnostics
from demuse_ros.ros.driver_node import DriverNode
from demuse_ros.ros.node_base import run
from demuse_ros.ros.node_config import CameraNodeConfig
from demuse_ros.timing.clock import now_ns

_TOPICS = (
    "camera/color/image_raw",
    "camera/aligned_depth_to_color/image_raw",
    "camera/color/camera_info",
)


class CameraNode(DriverNode):
    ROLE = "camera_node"
    CONFIG = CameraNodeConfig
    POLL_HZ = 100.0  # a 30 Hz frame waits at most 10 ms in the ring before it is published

    def make_driver(self, config: CameraNodeConfig) -> DriverProcess:
        return DriverProcess(CameraDriver, config.camera, name="camera")

    def on_configured(self) -> None:
        self.pubs = {name: self.publisher(name) for name in _TOPICS}
        from tf2_ros import StaticTransformBroadcaster

        self.static_tf = StaticTransformBroadcaster(self)
        ext = self.config.extrinsic
        xyz, (qx, qy, qz, qw) = ext.xyz_m, ext.rotation_xyzw
        self.static_tf.sendTransform(
            self.build(
                "geometry_msgs/msg/TransformStamped",
                {
                    "header": self.header(now_ns(), self.frames.base),
                    "child_frame_id": self.frames.camera,
                    "transform": {
                        "translation": {"x": xyz[0], "y": xyz[1], "z": xyz[2]},
                        "rotation": {"x": qx, "y": qy, "z": qz, "w": qw},
                    },
                },
            )
        )

    def intrinsics(self) -> CameraIntrinsics | None:
        """What the driver read from the device's colour profile (None until known)."""
        s = self.driver.stats()
        if not s.get("intrinsics_fx", 0.0) > 0:
            return None
        return CameraIntrinsics(
            int(s["intrinsics_width"]),
            int(s["intrinsics_height"]),
            s["intrinsics_fx"],
            s["intrinsics_fy"],
            s["intrinsics_ppx"],
            s["intrinsics_ppy"],
            d=tuple(s[f"intrinsics_d{i}"] for i in range(5)),
        )

    def publish_record(self, record: dict[str, Any]) -> None:
        built = camera_messages(
            record, self.times.offset_ns, self.frames.frames(), self.intrinsics()
        )
        for topic, fields in built:
            pub = self.pubs.get(topic)
            if pub is not None:  # camera/time_reference is the recorder's, not a topic here
                pub.publish(self.build_for(topic, fields))

    def status(self, stats: dict[str, float], rate_hz: float) -> dict[str, Any]:
        return diagnostics.camera_status(
            self.get_name(), stats, rate_hz, self.config.camera.serial_number or "first found"
        )

    def release(self) -> None:
        for pub in getattr(self, "pubs", {}).values():
            self.destroy_publisher(pub)
        self.pubs = {}


def main(args: Any = None) -> int:
    return run(CameraNode, "camera_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
