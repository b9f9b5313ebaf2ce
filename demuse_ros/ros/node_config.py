"""Each ROS node's parameters: the core config dataclasses plus a few ROS-side groups.

:data:`NODE_PARAMETERS` says which config classes a node declares and under
which prefix. The driver groups (``camera``, ``ft``, ``arm``) and the runtime
are the classes the embedded runner uses, so a node validates its parameters
exactly as ``demuse run`` validates ``config/demuse.yaml``. Pure Python: the
launch files and the tests import it without ROS.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.drivers.arm_config import ArmDriverConfig
from demuse_ros.drivers.camera import CameraDriverConfig
from demuse_ros.drivers.ft import FTDriverConfig
from demuse_ros.paths import DEFAULT_POLICY
from demuse_ros.record.episode import RecorderConfig
from demuse_ros.record.messages import Frames
from demuse_ros.ros.params import ParamGroup
from demuse_ros.runtime.scheduler import RuntimeConfig

#: The twin's camera pose (``SimConfig().plant.camera``) as an optical frame; the
#: default camera extrinsic, so the simulated cell needs no calibration.
TWIN_CAMERA_XYZ_M = (-0.6, -1.25, 0.75)
TWIN_CAMERA_XYZW = (-0.850650808, 0.0, 0.0, 0.525731112)
#: Shared-memory name of the twin's frame ring in the ROS sim launch.
SIM_CAMERA_RING = "demuse_sim_camera"


@dataclass(frozen=True)
class FrameConfig:
    """TF frame names (``frames`` in every node; one ``/**`` section of the YAML)."""

    base: str = param("base", doc="Robot base frame (the UR controller's base).")
    tool: str = param("tool0", doc="TCP frame; TF base -> tool is the actual TCP pose.")
    camera: str = param("camera_color_optical_frame", doc="Colour optical frame of the camera.")
    wrench: str = param("tool0", doc="Frame of the combined wrench on ft/wrench.")
    left_sensor: str = param("rg2ft_left_sensor", doc="Left fingertip sensor frame.")
    right_sensor: str = param("rg2ft_right_sensor", doc="Right fingertip sensor frame.")

    def __post_init__(self) -> None:
        validate_fields(self)
        for f in dataclasses.fields(self):
            name = getattr(self, f.name)
            if not name or name.startswith("/") or " " in name:
                raise ValueError(f"frames.{f.name} = {name!r} is not a TF frame id (no leading /)")

    def frames(self) -> Frames:
        """The recorder's :class:`~demuse_ros.record.messages.Frames` (same names)."""
        return Frames(**dataclasses.asdict(self))


@dataclass(frozen=True)
class CameraExtrinsicConfig:
    """The camera's colour optical frame in the base frame (published on /tf_static)."""

    xyz_m: tuple[float, float, float] = param(
        TWIN_CAMERA_XYZ_M,
        doc="Optical frame origin in the base frame, from hand-eye calibration "
        "(the default is the twin's camera).",
        unit="m",
        range=(-10.0, 10.0),
    )
    rotation_xyzw: tuple[float, float, float, float] = param(
        TWIN_CAMERA_XYZW,
        doc="Optical frame orientation in the base frame, quaternion (x, y, z, w): z along "
        "the optical axis, x image right, y image down.",
        range=(-1.0, 1.0),
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        norm = math.sqrt(sum(v * v for v in self.rotation_xyzw))
        if abs(norm - 1.0) > 1e-3:
            raise ValueError(
                f"extrinsic.rotation_xyzw has norm {norm:.4f}; give a unit quaternion (x, y, z, w)"
            )


_START = {
    "doc": "The configure transition fails when the driver has produced no data by then.",
    "unit": "s",
    "range": (1.0, 600.0),
}


@dataclass(frozen=True)
class CameraNodeConfig:
    """``camera_node``: the D435i driver and the camera's extrinsic."""

    camera: CameraDriverConfig = param(
        default_factory=lambda: CameraDriverConfig(source="realsense"), doc="The D435i driver."
    )
    extrinsic: CameraExtrinsicConfig = field(default_factory=CameraExtrinsicConfig)
    start_timeout_s: float = param(30.0, **_START)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class FTNodeConfig:
    """``ft_node``: the RG2-FT driver (fingertip F/T and the gripper)."""

    ft: FTDriverConfig = field(default_factory=FTDriverConfig)
    start_timeout_s: float = param(30.0, **_START)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class ArmNodeConfig:
    """``arm_node``: the UR driver, its safety filter, and the state publishing rate."""

    arm: ArmDriverConfig = field(default_factory=ArmDriverConfig)
    publish_rate_hz: float = param(
        125.0,
        doc="Largest rate of joint_states, tcp_pose, tcp_speed and TF: every controller "
        "state up to this rate (125 Hz: each CB3 state, every 4th e-Series state).",
        unit="Hz",
        range=(1.0, 500.0),
    )
    start_timeout_s: float = param(30.0, **_START)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class PolicyNodeConfig:
    """``policy_node`` besides the runtime: which policy, and when to stop."""

    policy: str = param(
        DEFAULT_POLICY,
        doc="A checkpoint folder, a shipped checkpoint's name (share/demuse_ros/models) or "
        "'expert' (the twin's scripted expert; needs sim_node).",
    )
    stop_when_done: bool = param(
        True,
        doc="Exit when the episode ends (the twin's task or the scripted expert is done), as "
        "`demuse run --sim` does; the launch file then shuts everything down.",
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if not self.policy:
            raise ValueError("policy is empty: set 'expert' or a checkpoint folder")


@dataclass(frozen=True)
class RecorderNodeConfig:
    """``recorder_node``: where and how episodes are written."""

    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    record_on_start: bool = param(
        False,
        doc="Start an episode as soon as camera, F/T and arm data flow (demuse.launch.py "
        "record:=true); it is kept when the node stops.",
    )

    def __post_init__(self) -> None:
        validate_fields(self)


def _sim_config_class() -> type:
    # The twin's config imports MuJoCo (its scene); only sim_node and its docs need it.
    from demuse_ros.twin.sim_config import SimConfig

    return SimConfig


_FRAMES = ParamGroup("frames", FrameConfig)

#: node name -> its parameter groups (see :mod:`demuse_ros.ros.params`).
NODE_PARAMETERS: dict[str, tuple[ParamGroup, ...]] = {
    "camera_node": (ParamGroup("", CameraNodeConfig), _FRAMES),
    "ft_node": (ParamGroup("", FTNodeConfig), _FRAMES),
    "arm_node": (ParamGroup("", ArmNodeConfig), _FRAMES),
    "policy_node": (ParamGroup("", PolicyNodeConfig), ParamGroup("", RuntimeConfig), _FRAMES),
    "recorder_node": (ParamGroup("", RecorderNodeConfig), _FRAMES),
}


def node_parameter_groups(node: str) -> tuple[ParamGroup, ...]:
    """The groups of ``node``; ``sim_node`` (the twin's :class:`SimConfig`) imports MuJoCo."""
    if node == "sim_node":
        return (ParamGroup("", _sim_config_class()),)
    return NODE_PARAMETERS[node]


#: The parameter file each node's section lives in (``config/<file>``).
NODE_CONFIG_FILE = {
    "camera_node": "demuse.yaml",
    "ft_node": "demuse.yaml",
    "arm_node": "demuse.yaml",
    "policy_node": "demuse.yaml",
    "recorder_node": "demuse.yaml",
    "sim_node": "sim.yaml",
}


def sim_driver_parameters(
    sim: Any, camera_ring: str = SIM_CAMERA_RING
) -> dict[str, dict[str, Any]]:
    """Parameter overrides that point the driver nodes at a twin run with ``sim``.

    The ROS counterpart of :func:`demuse_ros.drivers.cell.sim_cell_config`: the
    twin's loopback addresses, its camera ring and size, and its camera pose as
    the extrinsic. ``sim`` is the twin's ``SimConfig``; ``camera_ring`` is the
    name sim_node gives its frame ring (``camera.ring_name``).
    """
    from demuse_ros.ros.convert import look_at_quaternion

    cam, feed = sim.plant.camera, sim.camera
    return {
        "sim_node": {"camera.ring_name": camera_ring},
        "camera_node": {
            "camera.source": "twin",
            "camera.frame_ring": camera_ring,
            "camera.width": int(feed.width),
            "camera.height": int(feed.height),
            "camera.fps": int(feed.fps),
            "extrinsic.xyz_m": [float(v) for v in cam.pos_m],
            "extrinsic.rotation_xyzw": [
                float(v) for v in look_at_quaternion(cam.pos_m, cam.look_at_m)
            ],
        },
        "ft_node": {"ft.host": sim.modbus.host, "ft.port": int(sim.modbus.port)},
        "arm_node": {"arm.host": sim.ur_servers.host},
    }


__all__ = [
    "NODE_CONFIG_FILE",
    "NODE_PARAMETERS",
    "SIM_CAMERA_RING",
    "ArmNodeConfig",
    "CameraExtrinsicConfig",
    "CameraNodeConfig",
    "FTNodeConfig",
    "FrameConfig",
    "PolicyNodeConfig",
    "RecorderNodeConfig",
    "node_parameter_groups",
    "sim_driver_parameters",
]
