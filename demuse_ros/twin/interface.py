"""Contracts inside the twin: the physical plant and the emulated device electronics.

The twin is split the way a real cell is:

* the **plant** (:class:`Plant`, MuJoCo): arm joints that track position
  setpoints with stiff joint servos, the RG2-FT fingers and fingertip sensors,
  the task, the camera;
* the **UR controller** (``ur_controller``): robot/safety/runtime state, the
  ``rtde_control`` script's register protocol, and the motion generators
  (servoj/servol lookahead tracking, speedl/j, movel/j, stopl/j) that turn
  commands into one joint setpoint per control period (125 Hz CB3, 500 Hz
  e-Series);
* the **RG2-FT compute box** (``rg2ft``): the Modbus register bank of unit 65
  (and 63) mapped to gripper commands and to quantized fingertip readings;
* the **protocol servers** (RTDE/dashboard/script, Modbus TCP, camera frames)
  that expose those to the real client libraries on loopback.

Everything here is time-stepped by the caller: the real-time runner steps it
against the wall clock, the lockstep runner as fast as it can. Nothing in this
module reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Personality:
    """What the emulated UR controller reports and how fast it runs."""

    name: str  # "cb3" or "e-series"
    arm_model: str  # key of demuse_ros.kinematics.MODELS
    controller_version: tuple[int, int, int, int]  # major, minor, bugfix, build ('v' reply)
    polyscope_version: str  # dashboard "PolyscopeVersion" reply
    control_rate_hz: float  # RTDE / servo rate

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz


PERSONALITIES: dict[str, Personality] = {
    "cb3": Personality(
        "cb3", "ur10", (3, 15, 7, 106331), "URSoftware 3.15.7.106331 (Dec 13 2021)", 125.0
    ),
    "e-series": Personality(
        "e-series", "ur10e", (5, 11, 1, 108318), "URSoftware 5.11.1.108318 (Mar 22 2021)", 500.0
    ),
}


@dataclass
class ArmPlantState:
    """Measured state of the arm as the plant produces it after a step.

    ``tcp_wrench`` is the external wrench acting at the TCP (what the UR's
    ``actual_TCP_force`` estimates): forces in N and torques in N·m, base frame.
    """

    t_s: float  # plant time since start (s)
    q: np.ndarray  # (6,) rad
    qd: np.ndarray  # (6,) rad/s
    joint_torques_nm: np.ndarray  # (6,) applied joint torques
    tcp_wrench: np.ndarray  # (6,) N, N·m in the base frame
    in_collision: bool = False  # arm links (not fingertips) touching the table or the task


@dataclass
class GripperPlantState:
    """RG2-FT finger and fingertip-sensor state after a step.

    ``finger_wrenches`` are the raw readings of the two 6-axis fingertip sensors
    (left, right) in their own sensor frames, noise and bias included, *before*
    the compute box's zero offset (the register bank applies that).
    """

    width_m: float  # finger opening, 0..0.100
    moving: bool  # fingers still travelling to the target
    grip_detected: bool  # stopped on an object before reaching the target width
    finger_wrenches: np.ndarray  # (2, 6) N, N·m


@dataclass
class TaskStatus:
    """Ground truth of the task, decided by the plant (never by the policy)."""

    name: str
    done: bool = False
    success: bool = False
    reason: str = ""  # why it ended, or "" while running
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. peak_force_n, force_error_n


class Plant(Protocol):
    """The MuJoCo plant, as the controller, the compute box and the runners use it."""

    physics_rate_hz: float

    def reset(self, seed: int | None = None) -> None:
        """Restore the initial state; ``seed`` randomizes the task placement."""

    def set_joint_setpoint(self, q: np.ndarray, qd: np.ndarray) -> None:
        """Position (rad) and velocity (rad/s) setpoint for the joint servos until the next call."""

    def set_gripper_command(self, target_width_m: float, target_force_n: float, grip: bool) -> None:
        """Move the fingers to ``target_width_m`` limited to ``target_force_n`` (grip), or stop."""

    def step(self, dt_s: float) -> None:
        """Advance the physics by ``dt_s`` (whole physics substeps)."""

    def arm_state(self) -> ArmPlantState: ...

    def gripper_state(self) -> GripperPlantState: ...

    def task_status(self) -> TaskStatus: ...

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Camera frame now: RGB (H, W, 3) uint8 and depth (H, W) float32 metres (0 = no return)."""
