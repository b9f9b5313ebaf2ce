"""Teleoperation sessions: the tick loop, freedrive, a status line, the simulated cell.

* :func:`run_teleop` — a twist device (keyboard, SpaceMouse) drives a
  :class:`~demuse_ros.teleop.controller.TeleopController` at its rate;
* :func:`run_freedrive` — the UR in teach mode, moved by hand, while the state
  streams (what a recorder captures); the keyboard, when there is one, switches
  teach mode (``e`` on, ``space`` off), the gripper (``g``/``h``, ``[``/``]``) and
  quits (``q``). On the twin, whose arm has no hand to push it, the motion keys
  move its emulated hand (``guide_tcp``);
* :func:`sim_cell` — twin + cell as one context manager (the runner's start-up,
  without its policy loop).

Every session ends with the arm stopped first (Ctrl-C included): teleop cuts its
plan, freedrive leaves teach mode, then the cell stops its drivers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from demuse_ros.drivers.cell import Cell, CellConfig, sim_cell_config
from demuse_ros.teleop.controller import TeleopController
from demuse_ros.teleop.core import TeleopConfig, shape_twist
from demuse_ros.teleop.devices import InputDevice
from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.loop import PeriodicLoop

log = logging.getLogger("demuse.teleop")


@contextlib.contextmanager
def sim_cell(sim_config: Any, cell_config: CellConfig | None = None) -> Iterator[tuple[Any, Cell]]:
    """Start a twin process and a cell connected to it; stop the cell (arm first), then
    the twin. Yields ``(twin, cell)``."""
    from demuse_ros.twin.runner import TwinProcess

    with (
        TwinProcess(sim_config) as twin,
        Cell(sim_cell_config(cell_config or CellConfig(), twin.endpoints)) as cell,
    ):
        yield twin, cell


class StatusLine:
    """One status line rewritten in place on a terminal; elsewhere a log line every ``every_s``."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_ns = round(every_s * 1e9)
        self._next_ns = 0

    def show(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
        elif now_ns() >= self._next_ns:
            log.info("%s", text)
            self._next_ns = now_ns() + self.every_ns

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _pose_text(pose: np.ndarray | None) -> str:
    if pose is None:
        return "tcp ?"
    return "tcp " + " ".join(f"{v:+.3f}" for v in pose[:3]) + " m"


def _gripper_text(width_m: float | None, force_n: float) -> str:
    width = "?" if width_m is None else f"{width_m * 1000:.0f} mm"
    return f"grip {width} {force_n:.0f} N"


def teleop_status_text(status: dict[str, Any], pose: np.ndarray | None) -> str:
    """``ENABLED``/``HOLD (why)``, speed scale, gripper, last refusal, TCP, chunks."""
    state = "ENABLED" if status["enabled"] else f"HOLD ({status['hold_reason']})"
    refusal = status["last_refusal"] or "-"
    return (
        f"{state}  speed {status['speed_scale']:.0%}  "
        f"{_gripper_text(status['gripper_width_m'], status['gripper_force_n'])}  "
        f"refused {status['refusals']} (last: {refusal})  {_pose_text(pose)}  "
        f"chunks {status['chunks_sent']}"
    )


def run_teleop(
    controller: TeleopController,
    device: InputDevice,
    *,
    seconds: float | None = None,
    status_line: StatusLine | None = None,
) -> dict[str, Any]:
    """Poll ``device`` and step ``controller`` at its rate until ``seconds``, the device's
    quit or Ctrl-C; the arm's plan is cut before returning. Returns a summary."""
    loop = PeriodicLoop(controller.config.rate_hz, spin_s=0.0)
    end = time.monotonic() + seconds if seconds else math.inf
    interrupted = False
    try:
        while time.monotonic() < end and not device.quit_requested:
            loop.wait()
            now = now_ns()
            command = device.poll(now)
            if command is not None:
                controller.submit(command)
            status = controller.step(now)
            if status_line is not None:
                status_line.show(teleop_status_text(status, controller.tcp_pose()))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        controller.hold("stopped")
        with contextlib.suppress(RuntimeError):
            controller.cell.arm.stop_motion()  # the arm first, whatever state teleop was in
        if status_line is not None:
            status_line.close()
    if interrupted:
        log.info("Ctrl-C: arm stopped; closing the drivers")
    return {**controller.status(), "interrupted": interrupted, "arm": _arm_summary(controller.cell)}


def run_freedrive(
    cell: Cell,
    device: Any = None,
    *,
    twin: Any = None,
    config: TeleopConfig | None = None,
    seconds: float | None = None,
    status_line: StatusLine | None = None,
) -> dict[str, Any]:
    """Teach mode session (module docstring). ``device``: a
    :class:`~demuse_ros.teleop.keyboard.TerminalKeyboard` (opened) or None, in which case
    teach mode is on for the whole session. ``twin``: a twin process whose emulated
    hand the motion keys move."""
    config = config or TeleopConfig()
    loop = PeriodicLoop(config.rate_hz, spin_s=0.0)
    end = time.monotonic() + seconds if seconds else math.inf
    teach = device is None
    if teach:
        cell.arm.teach_mode(True)
    gripper: tuple[float | None, float] = (None, config.gripper_force_n)
    interrupted = False
    try:
        while time.monotonic() < end and not (device is not None and device.quit_requested):
            loop.wait()
            now = now_ns()
            if device is not None:
                command = device.poll(now)
                if command.enable != teach:
                    teach = command.enable
                    cell.arm.teach_mode(teach)
                wanted = (command.gripper_width_m, float(command.gripper_force_n or 0.0))
                if wanted[0] is not None and wanted != gripper:
                    cell.ft.grip(wanted[0], wanted[1])
                    gripper = wanted
                if twin is not None and teach and np.any(command.twist):
                    hand = shape_twist(command.twist, config, command.speed_scale or 1.0)
                    twin.call("guide_tcp", hand.tolist(), 2.0 / config.rate_hz)
            if status_line is not None:
                state = "TEACH MODE (move the arm by hand)" if teach else "LOCKED (holding)"
                pose = _latest(cell.arm.ring, "tcp_pose")
                status_line.show(
                    f"{state}  {_gripper_text(gripper[0], gripper[1])}  {_pose_text(pose)}  "
                    f"arm records {cell.arm.ring.count}"
                )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if teach:
            with contextlib.suppress(RuntimeError):
                cell.arm.teach_mode(False)  # the arm holds where the hand left it
            wait = PeriodicLoop(50.0, spin_s=0.0)
            for _ in range(50):  # the driver confirms within a few cycles
                if not cell.arm.alive or cell.arm.stats()["teach_mode"] == 0.0:
                    break
                wait.wait()
        if status_line is not None:
            status_line.close()
    return {"interrupted": interrupted, "arm": _arm_summary(cell)}


def _latest(ring: Any, name: str) -> np.ndarray | None:
    rec = ring.read_latest((name,)) if ring is not None else None
    return None if rec is None else np.asarray(rec[name], dtype=float)


def _arm_summary(cell: Cell) -> dict[str, float]:
    st = cell.arm.stats()
    keys = ("chunks_accepted", "chunks_rejected", "state_records", "teach_mode", "fault")
    out = {k: st[k] for k in keys}
    out.update({k: v for k, v in st.items() if k.startswith("rejected_") and v})
    return out


__all__ = [
    "StatusLine",
    "run_freedrive",
    "run_teleop",
    "sim_cell",
    "teleop_status_text",
]
