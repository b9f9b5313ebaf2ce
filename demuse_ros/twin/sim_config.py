"""The whole twin's parameters (``sim_node`` in ``config/sim.yaml``) and camera scaling."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from demuse_ros.config import ConfigError, param, validate_fields
from demuse_ros.twin.camera_feed import CameraFeedConfig
from demuse_ros.twin.interface import PERSONALITIES
from demuse_ros.twin.modbus_server import ModbusServerConfig
from demuse_ros.twin.plant import PlantConfig
from demuse_ros.twin.rg2ft import RG2FTConfig
from demuse_ros.twin.task import TaskConfig
from demuse_ros.twin.ur_controller import URControllerConfig
from demuse_ros.twin.ur_servers import URServersConfig


@dataclass(frozen=True)
class SimConfig:
    """The whole twin (``sim_node: ros__parameters:`` in ``config/sim.yaml``)."""

    plant: PlantConfig = field(default_factory=PlantConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    controller: URControllerConfig = field(default_factory=URControllerConfig)
    ur_servers: URServersConfig = field(default_factory=URServersConfig)
    rg2ft: RG2FTConfig = field(default_factory=RG2FTConfig)
    modbus: ModbusServerConfig = field(default_factory=ModbusServerConfig)
    camera: CameraFeedConfig = field(default_factory=CameraFeedConfig)
    realtime_priority: int = param(
        60,
        doc="SCHED_FIFO priority of the real-time twin's control thread, which emulates a "
        "hard real-time controller (0: normal scheduling; denied without an rtprio limit "
        "or CAP_SYS_NICE, with a warning).",
        range=(0, 99),
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        personality = PERSONALITIES[self.controller.personality]
        if personality.arm_model != self.plant.arm_model:
            raise ConfigError(
                f"= {self.plant.arm_model!r} does not match the controller personality "
                f"{personality.name!r}, which drives a {personality.arm_model}; set "
                f"plant.arm_model: {personality.arm_model}",
                key="plant.arm_model",
            )
        render, feed = self.plant.camera, self.camera
        for a, b in (
            ("width", "width"),
            ("height", "height"),
            ("fx", "fx"),
            ("fy", "fy"),
            ("cx", "ppx"),
            ("cy", "ppy"),
        ):
            if not math.isclose(float(getattr(render, a)), float(getattr(feed, b))):
                raise ConfigError(
                    f"= {getattr(feed, b)!r} differs from plant.camera.{a} = "
                    f"{getattr(render, a)!r}: "
                    "the software device must announce the intrinsics the twin renders with",
                    key=f"camera.{b}",
                )


def scale_camera(config: SimConfig, scale: float) -> SimConfig:
    """``config`` with the camera resolution and intrinsics scaled by ``scale`` (same view).

    On a 2-core machine rendering and streaming 640×480 RGB-D at 30 Hz costs about
    half a core; a policy that looks at 64×64 crops loses nothing at ``scale=0.25``.
    """
    if not 0.05 <= scale <= 1.0:
        raise ValueError(f"camera scale must be within 0.05..1, got {scale}")
    render, feed = config.plant.camera, config.camera
    width, height = round(render.width * scale), round(render.height * scale)
    sx, sy = width / render.width, height / render.height
    render = dataclasses.replace(
        render,
        width=width,
        height=height,
        fx=render.fx * sx,
        fy=render.fy * sy,
        cx=render.cx * sx,
        cy=render.cy * sy,
    )
    feed = dataclasses.replace(
        feed,
        width=width,
        height=height,
        fx=feed.fx * sx,
        fy=feed.fy * sy,
        ppx=feed.ppx * sx,
        ppy=feed.ppy * sy,
    )
    return dataclasses.replace(
        config, plant=dataclasses.replace(config.plant, camera=render), camera=feed
    )


__all__ = ["SimConfig", "scale_camera"]
