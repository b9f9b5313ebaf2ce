"""Lockstep access to the twin through the devices' own command paths, without sockets.

:class:`InProcessURClient` writes the same input registers ``ur_rtde``'s
``RTDEControlInterface`` writes (command id in ``input_int_register_0``, the
recipe's doubles after it) and reads the same outputs, so the controller runs
the identical script emulation; only the TCP transport is skipped.
:class:`InProcessGripper` writes and reads the RG2-FT register bank as a Modbus
client would. :func:`run_expert_episode` drives the scripted expert this way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from demuse_ros.twin.expert import DispenseExpert, ExpertConfig
from demuse_ros.twin.runner import Twin

SERVOL, SERVO_STOP, CLEAR = 24, 16, 0  # rtde_control script command ids
_UNIT = 65


class InProcessURClient:
    """The servo subset of ``RTDEControlInterface``/``RTDEReceiveInterface``, in-process."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin
        self.controller = twin.controller
        if not self.controller.start_script(0):
            raise RuntimeError(
                "the twin's controller refused the control script (protective stop?)"
            )

    def _write(self, cmd: int, doubles: list[float]) -> None:
        values: dict[str, Any] = {"input_int_register_0": cmd}
        values.update({f"input_double_register_{i}": float(v) for i, v in enumerate(doubles)})
        self.controller.write_inputs(values)

    def servo_l(
        self, pose: np.ndarray, *, time_s: float, lookahead_time_s: float = 0.1, gain: float = 300.0
    ) -> None:
        """``servoL(pose, 0, 0, time, lookahead_time, gain)``: a real-time command, no handshake."""
        self._write(
            SERVOL, [*np.asarray(pose, float).tolist(), 0.0, 0.0, time_s, lookahead_time_s, gain]
        )

    def servo_stop(self, deceleration_rad_s2: float = 10.0, *, max_ticks: int = 2000) -> None:
        """``servoStop(a)``: a synchronous command; ticks the twin until the script reports done."""
        self._write(SERVO_STOP, [deceleration_rad_s2])
        off = self.controller.register_offset
        for _ in range(max_ticks):
            self.twin.step()
            if self.controller.snapshot().out_int[off] == 2:
                break
        else:
            raise TimeoutError("servoStop did not complete")
        self._write(CLEAR, [])

    def actual_tcp_pose(self) -> np.ndarray:
        return np.array(self.controller.snapshot().values["actual_TCP_pose"])

    def is_protective_stopped(self) -> bool:
        return bool(self.controller.snapshot().values["safety_status_bits"][0] & (1 << 2))


class InProcessGripper:
    """RG2-FT register access as a Modbus client does it (unit 65)."""

    def __init__(self, twin: Twin) -> None:
        self.bank = twin.gripper

    def grip(self, width_m: float, force_n: float) -> None:
        """``write_registers(2, [force 0.1 N, width 0.1 mm, 1])``."""
        self.bank.write(_UNIT, 2, [round(force_n * 10), round(width_m * 1e4), 1])

    def zero(self) -> None:
        self.bank.write(_UNIT, 0, [1])


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    reason: str
    duration_s: float
    metrics: dict[str, float]


def run_expert_episode(twin: Twin, seed: int, config: ExpertConfig | None = None) -> EpisodeResult:
    """One dispense episode with the scripted expert, in lockstep, from ``twin.reset(seed)``."""
    twin.reset(seed)
    arm, gripper = InProcessURClient(twin), InProcessGripper(twin)
    expert = DispenseExpert(config)
    dt = twin.period_s
    task = twin.plant.task
    expert.reset(twin.time_s, arm.actual_tcp_pose(), task.plunger_top_pose()[:3])
    gripper_sent: tuple[float, float] | None = None
    timeout_s = twin.plant.task.config.timeout_s
    while True:
        action = expert.act(twin.time_s, dt, arm.actual_tcp_pose(), task.force_n())
        command = (action.gripper_width_m, action.gripper_force_n)
        if command != gripper_sent:  # a real client writes the registers once per change
            gripper.grip(*command)
            gripper_sent = command
        arm.servo_l(action.tcp_target, time_s=dt)
        twin.step()
        status = twin.plant.task_status()
        if status.done or expert.done or twin.time_s > timeout_s + 1.0:
            break
    # Let a just-finished release register (the task decides success on release).
    for _ in range(int(0.2 / dt)):
        if status.done:
            break
        twin.step()
        status = twin.plant.task_status()
    return EpisodeResult(
        seed,
        status.success,
        status.reason or "unfinished",
        twin.time_s,
        {k: (v if math.isfinite(v) else float("nan")) for k, v in status.metrics.items()},
    )
