"""Teach mode (freedrive) of the UR arm driver: the operator moves the arm by hand.

A mixin of :class:`~demuse_ros.drivers.arm.ArmDriver` (it uses the driver's
``ur_rtde`` control handle, counters, plan and fault state), so the driver file
stays readable. The parent asks for it with
:meth:`~demuse_ros.drivers.arm.ArmDriverProcess.teach_mode`.

* **On**: a running servo plan is stopped first (``servoStop``, plan dropped), then
  ``rtde_control.teachMode()`` (script command 18) puts the controller in freedrive.
  The state stream goes on as before, so a recorder captures the demonstration;
  every chunk is refused with the reason ``teach_mode`` (``rejected_teach_mode``).
* **Off**: ``endTeachMode()`` (command 19); the arm holds where the hand left it and
  the next chunk is vetted from the *actual* pose (no servo target survives).
* A protective or emergency stop ends the controller program and with it teach
  mode; so does stopping the driver (``endTeachMode`` is sent before ``servoStop`` →
  ``stopScript``).

Both calls are synchronous in ``ur_rtde`` (it waits for the script to acknowledge,
one or two controller cycles): the loop misses a package or two at each switch,
counted in ``packages_missed`` like any other gap.
"""

from __future__ import annotations

import contextlib
from typing import Any


class ArmTeachMode:
    """Teach-mode state and switching for the arm driver (module docstring)."""

    _teach_mode = False
    # Provided by the driver (annotations only: nothing here shadows them).
    _ctrl: Any
    _fault: bool
    _resetting_until_ns: int | None
    log: Any
    count: Any
    set: Any
    _stop_motion: Any
    _clear_plan: Any

    def _teach(self, on: bool) -> None:
        if on == self._teach_mode:
            return
        if on and (self._fault or self._resetting_until_ns is not None):
            self.log.warning("teach mode refused: the arm is faulted (reset it first)")
            self.count("errors")
            return
        if on:
            self._stop_motion()
            ok = self._ctrl.teachMode()
        else:
            ok = self._ctrl.endTeachMode()
            self._clear_plan()  # re-anchor at the actual pose
        if not ok:
            self.log.warning("ur_rtde %s returned False", "teachMode" if on else "endTeachMode")
            self.count("errors")
            return
        self.log.info("teach mode %s", "on: the arm can be moved by hand" if on else "off")
        self._set_teach(on)

    def _set_teach(self, on: bool) -> None:
        self._teach_mode = on
        self.set("teach_mode", 1.0 if on else 0.0)

    def _end_teach_for_close(self) -> None:
        """Cleanup: leave teach mode before the script is stopped (errors ignored)."""
        if self._teach_mode and self._ctrl is not None:
            with contextlib.suppress(Exception):
                self._ctrl.endTeachMode()
            self._set_teach(False)


__all__ = ["ArmTeachMode"]
