"""The three device drivers of one cell, started and stopped together.

:class:`Cell` owns an :class:`~demuse_ros.drivers.arm.ArmDriverProcess`, an
:class:`~demuse_ros.drivers.ft.FTDriverProcess` and a camera
:class:`~demuse_ros.drivers.process.DriverProcess`, each in its own process
with its own ring. Start-up connects all three at once; shutdown stops the arm
first (``servoStop`` → ``stopScript`` → ``disconnect`` in its process), then the
gripper and the camera. Commands reach the arm only through its safety filter.

Configuration is the ``arm``, ``ft`` and ``camera`` groups of the
``arm_node``, ``ft_node`` and ``camera_node`` sections (:class:`CellConfig`,
:func:`load_cell_config`); :func:`sim_cell_config` points them at a running twin
(its endpoints) so the same code paths (``ur_rtde``, ``pymodbus``,
``pyrealsense2``) run against the simulated cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.drivers.arm import ArmDriverProcess
from demuse_ros.drivers.arm_config import ArmDriverConfig
from demuse_ros.drivers.arm_path import validate_chunk
from demuse_ros.drivers.camera import CameraDriver, CameraDriverConfig
from demuse_ros.drivers.ft import FTDriverConfig, FTDriverProcess, grip_command
from demuse_ros.drivers.process import DriverProcess
from demuse_ros.timing.clock import NS_PER_S, now_ns

log = logging.getLogger("demuse.cell")


@dataclass(frozen=True)
class CellConfig:
    """The cell's drivers (``arm``, ``ft``, ``camera`` of the driver nodes' parameters)."""

    arm: ArmDriverConfig = field(default_factory=ArmDriverConfig)
    ft: FTDriverConfig = field(default_factory=FTDriverConfig)
    camera: CameraDriverConfig = param(
        default_factory=lambda: CameraDriverConfig(source="realsense"),
        doc="The D435i driver.",
    )
    start_timeout_s: float = param(
        60.0, doc="How long start-up waits for every driver's first data.", unit="s",
        range=(1.0, 600.0),
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self)


def sim_cell_config(config: CellConfig, endpoints: dict[str, Any]) -> CellConfig:
    """``config`` with its device addresses replaced by a twin's ``endpoints``."""
    width, height = endpoints["camera_size"]
    return dataclasses.replace(
        config,
        arm=dataclasses.replace(config.arm, host=endpoints["ur_host"]),
        ft=dataclasses.replace(
            config.ft, host=endpoints["modbus_host"], port=int(endpoints["modbus_port"])
        ),
        camera=dataclasses.replace(
            config.camera,
            source="twin",
            frame_ring=endpoints["camera_ring"],
            width=int(width),
            height=int(height),
        ),
    )


#: Parameter-file section of each driver group (the ROS node that owns the device).
CELL_NODES = {"arm": "arm_node", "ft": "ft_node", "camera": "camera_node"}


def load_cell_config(
    path: str, node: str | None = None, overrides: dict[str, Any] | None = None
) -> CellConfig:
    """The ``arm``, ``ft`` and ``camera`` groups of a parameter file (``config/demuse.yaml``).

    Each group is read from the section of the ROS node that owns that device
    (:data:`CELL_NODES`: ``arm_node: ros__parameters: arm: ...``), so one file
    configures the ROS nodes and the embedded cell. ``node`` reads all three from
    that one section instead (a file written for a single node). ``overrides``
    use the same dotted names (``arm.gain``, ``camera.fps``) and
    ``start_timeout_s``.
    """
    from demuse_ros.config import load_config

    overrides = dict(overrides or {})
    groups: dict[str, Any] = {}
    for name, cls in (
        ("arm", ArmDriverConfig),
        ("ft", FTDriverConfig),
        ("camera", CameraDriverConfig),
    ):
        prefix = name + "."
        mine = {k[len(prefix) :]: overrides.pop(k) for k in list(overrides) if k.startswith(prefix)}
        section = node or CELL_NODES[name]
        groups[name] = load_config(path, cls, section, section=name, overrides=mine)
    if overrides:
        unknown = ", ".join(sorted(overrides))
        if set(overrides) != {"start_timeout_s"}:
            raise ValueError(
                f"unknown cell parameter(s) {unknown}: use arm.*, ft.*, camera.* or start_timeout_s"
            )
        groups["start_timeout_s"] = float(overrides["start_timeout_s"])
    return CellConfig(**groups)


class Cell:
    """Arm, F/T + gripper and camera drivers, each in its own process (module docstring)."""

    def __init__(self, config: CellConfig) -> None:
        self.config = config
        self.ft = FTDriverProcess(config.ft)
        # The arm's safety filter reads the F/T ring for its force/torque limit.
        arm = config.arm
        if not arm.ft_ring:
            arm = dataclasses.replace(arm, ft_ring=self.ft.ring_name)
        self.arm = ArmDriverProcess(arm)
        self.camera = DriverProcess(CameraDriver, config.camera, name="camera")
        self._rate_marks: dict[str, tuple[int, int]] = {}

    @property
    def drivers(self) -> dict[str, DriverProcess]:
        return {"arm": self.arm, "ft": self.ft, "camera": self.camera}

    def start(self) -> Cell:
        """Start all three; wait for data from each (connects in parallel)."""
        timeout = self.config.start_timeout_s
        try:
            for proc in (self.ft, self.camera, self.arm):  # the F/T ring before the arm
                proc.start(timeout_s=timeout, wait_ready=False)
            for name, proc in self.drivers.items():
                proc.wait_ready(timeout)
                log.info("%s driver: data flowing", name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the arm first (servoStop → stopScript → disconnect), then the rest."""
        if self.arm.alive:
            with contextlib.suppress(RuntimeError):  # restarting: the new one has no plan
                self.arm.stop_motion()
        for proc in (self.arm, self.ft, self.camera):
            try:
                proc.stop()
            except Exception:  # keep stopping the others; say what failed
                log.exception("stopping the %s driver failed", proc.name)

    def __enter__(self) -> Cell:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ commands
    def send_chunk(
        self,
        t_ns: Any,
        poses: Any,
        gripper_width_m: Any = None,
        gripper_force_n: float = 20.0,
    ) -> None:
        """One action chunk: TCP waypoints to the arm (through its safety filter) and,
        optionally, gripper widths (N,) at the same stamps to the gripper.

        The gripper plan is checked here (widths 0..0.1 m, force 0..40 N) and run by
        the F/T driver at its poll rate: at each waypoint time it commands that
        width when it differs from the last command by more than the deadband.
        """
        t, p = validate_chunk(t_ns, poses)
        if gripper_width_m is not None:
            widths = np.asarray(gripper_width_m, dtype=np.float64)
            if widths.shape != t.shape:
                raise ValueError(
                    f"gripper_width_m must have shape {t.shape} (one per waypoint), "
                    f"got {widths.shape}"
                )
            for w in widths:
                grip_command(float(w), gripper_force_n)  # raises ValueError naming the limit
            self.ft.send_gripper_plan(t, widths, gripper_force_n)
        self.arm.send_chunk(t, p)

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, dict[str, float]]:
        return {name: proc.stats() for name, proc in self.drivers.items()}

    def ring_rates_hz(self) -> dict[str, float]:
        """Records per second written to each ring since the previous call."""
        out: dict[str, float] = {}
        now = now_ns()
        for name, proc in self.drivers.items():
            count = proc.ring.count if proc.ring is not None else 0
            last = self._rate_marks.get(name)
            self._rate_marks[name] = (now, count)
            if last is None or now <= last[0]:
                out[name] = math.nan
            else:
                out[name] = (count - last[1]) * NS_PER_S / (now - last[0])
        return out


__all__ = ["CELL_NODES", "Cell", "CellConfig", "load_cell_config", "sim_cell_config"]
