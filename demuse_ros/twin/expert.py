"""Scripted expert for the dispense task: privileged state in, ordinary commands out.

The expert sees ground truth a policy cannot (the plunger's exact position and
force) but acts only through the command path a policy uses: a TCP servo
target streamed every control period (``servoL``) and gripper register writes.
It is a pure state machine stepped with the controller's clock, so the same
logic runs in lockstep (in-process register writes) and in real time (through
``ur_rtde`` and ``pymodbus``).

Phases: close the fingers → move above the plunger → descend until contact →
press with a force loop to the target → hold in band → lift off → done.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from demuse_ros.config import param, validate_fields


class Phase(enum.Enum):
    CLOSE = "close"
    APPROACH = "approach"
    DESCEND = "descend"
    PRESS = "press"
    HOLD = "hold"
    RELEASE = "release"
    DONE = "done"


@dataclass(frozen=True)
class ExpertConfig:
    """Gains and speeds of the scripted expert."""

    target_force_n: float = param(
        10.0, doc="Force to press the plunger to.", unit="N", range=(1.0, 40.0)
    )
    hold_s: float = param(
        0.7,
        doc="How long to hold the force (a little above the task's hold time).",
        unit="s",
        range=(0.0, 10.0),
    )
    close_s: float = param(
        0.8, doc="Time given to the fingers to close.", unit="s", range=(0.0, 5.0)
    )
    approach_height_m: float = param(
        0.05, doc="Height above the plunger top before descending.", unit="m", range=(0.01, 0.3)
    )
    approach_speed_m_s: float = param(
        0.15, doc="TCP speed while moving above the plunger.", unit="m/s", range=(0.01, 0.5)
    )
    descend_speed_m_s: float = param(
        0.03, doc="TCP speed while looking for contact.", unit="m/s", range=(0.001, 0.1)
    )
    contact_force_n: float = param(
        0.8, doc="Force that counts as contact.", unit="N", range=(0.1, 5.0)
    )
    force_gain_m_s_per_n: float = param(
        0.004, doc="Press velocity per newton of force error.", unit="m/s/N", range=(0.0, 0.05)
    )
    max_press_speed_m_s: float = param(
        0.01, doc="Speed limit of the force loop.", unit="m/s", range=(0.0005, 0.05)
    )
    release_height_m: float = param(
        0.04, doc="Lift-off height above the contact point.", unit="m", range=(0.005, 0.3)
    )
    gripper_close_force_n: float = param(
        20.0, doc="Finger force while closed.", unit="N", range=(0.0, 40.0)
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class ExpertAction:
    """What the expert commands this control period."""

    tcp_target: np.ndarray  # (6,) base frame, m + rotation vector
    gripper_width_m: float
    gripper_force_n: float
    phase: Phase


class DispenseExpert:
    """Press-and-release controller using privileged plunger state.

    Call :meth:`reset` at the start of an episode, then :meth:`act` once per
    control period with the current time, the measured TCP pose (from the
    controller, as a policy would see it), and the privileged plunger force.
    """

    def __init__(self, config: ExpertConfig | None = None) -> None:
        self.config = config or ExpertConfig()
        self.phase = Phase.DONE

    def reset(self, t_s: float, tcp_pose: np.ndarray, plunger_top_xyz: np.ndarray) -> None:
        c = self.config
        self.phase = Phase.CLOSE
        self._t_phase = t_s
        self._start = np.asarray(tcp_pose, float).copy()
        self._orientation = self._start[3:].copy()  # keep the tool orientation throughout
        self._above = np.asarray(plunger_top_xyz, float) + np.array([0.0, 0.0, c.approach_height_m])
        self._target = self._start.copy()
        self._contact_z = math.nan
        self._hold_start = math.nan

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    def act(
        self, t_s: float, dt_s: float, tcp_pose: np.ndarray, plunger_force_n: float
    ) -> ExpertAction:
        """Advance one control period of ``dt_s`` and return the command."""
        c = self.config
        phase_time = t_s - self._t_phase
        target = self._target
        if self.phase is Phase.CLOSE:
            if phase_time >= c.close_s:
                self._enter(Phase.APPROACH, t_s)
        elif self.phase is Phase.APPROACH:
            if self._move_towards(self._above, c.approach_speed_m_s * dt_s):
                self._enter(Phase.DESCEND, t_s)
        elif self.phase is Phase.DESCEND:
            if plunger_force_n >= c.contact_force_n:
                self._contact_z = float(tcp_pose[2])
                target[:3] = tcp_pose[:3]  # stop where contact happened; the force loop takes over
                self._enter(Phase.PRESS, t_s)
            else:
                target[2] -= c.descend_speed_m_s * dt_s
        elif self.phase in (Phase.PRESS, Phase.HOLD):
            # Integral-style force loop on the servo target height: the target moves
            # down while force is below the set point and up when above it.
            error = c.target_force_n - plunger_force_n
            speed = max(
                -c.max_press_speed_m_s, min(c.max_press_speed_m_s, c.force_gain_m_s_per_n * error)
            )
            target[2] -= speed * dt_s
            in_band = abs(error) <= 0.1 * c.target_force_n
            if self.phase is Phase.PRESS and in_band:
                self._hold_start = t_s
                self._enter(Phase.HOLD, t_s)
            elif self.phase is Phase.HOLD and t_s - self._hold_start >= c.hold_s:
                self._enter(Phase.RELEASE, t_s)
        elif self.phase is Phase.RELEASE:
            goal = np.array([target[0], target[1], self._contact_z + c.release_height_m])
            if self._move_towards(goal, c.approach_speed_m_s * dt_s):
                self._enter(Phase.DONE, t_s)
        target[3:] = self._orientation
        return ExpertAction(target.copy(), 0.0, c.gripper_close_force_n, self.phase)

    def _enter(self, phase: Phase, t_s: float) -> None:
        self.phase, self._t_phase = phase, t_s

    def _move_towards(self, goal_xyz: np.ndarray, max_step_m: float) -> bool:
        """Step the target position towards ``goal_xyz``; True once it is there."""
        delta = goal_xyz - self._target[:3]
        dist = float(np.linalg.norm(delta))
        if dist <= max_step_m:
            self._target[:3] = goal_xyz
            return True
        self._target[:3] += delta * (max_step_m / dist)
        return False
