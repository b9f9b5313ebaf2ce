"""Input devices for teleoperation behind one small interface, and the SpaceMouse.

An :class:`InputDevice` is opened, polled once per teleop tick for its newest
:class:`~demuse_ros.teleop.core.TeleopCommand` (or None when it could not be read:
the controller holds once the last command is older than ``stale_timeout_s``), and
closed in ``finally`` (context-manager use). Devices scale their full deflection to
the config's full-scale speeds; the controller applies deadband, speed scale and
limits.

:class:`SpaceMouse` (3Dconnexion, through ``pyspacemouse`` on ``hidapi``): the cap's
translation and rotation are the TCP twist in the base frame, **button 0 is the
deadman** (motion only while held), button 1 toggles the gripper open/closed.
``axis_signs`` flips axes for a differently placed device. The keyboard lives in
:mod:`~demuse_ros.teleop.keyboard`; freedrive (teach mode) needs no device: the
operator's hand is the input (:mod:`~demuse_ros.teleop.session`).
"""

from __future__ import annotations

import abc
import logging
import threading
from typing import Any, ClassVar

import numpy as np

from demuse_ros.teleop.core import TeleopCommand, TeleopConfig
from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.loop import PeriodicLoop

log = logging.getLogger("demuse.teleop")

SPACEMOUSE_INSTALL = (
    "the SpaceMouse device needs pyspacemouse: pip install pyspacemouse (it uses the hidapi "
    "C library: sudo apt install libhidapi-dev, and read access to /dev/hidraw*, e.g. a udev "
    'rule KERNEL=="hidraw*", MODE="0664", GROUP="plugdev")'
)


class InputDevice(abc.ABC):
    """A teleop input: ``open`` → ``poll`` per tick → ``close`` (module docstring)."""

    name: ClassVar[str] = ""
    #: One line for the status display: what the controls are.
    help: ClassVar[str] = ""

    @property
    def quit_requested(self) -> bool:
        """The operator asked to end the session (e.g. the keyboard's ``q``)."""
        return False

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device (raises ``RuntimeError`` saying what is missing)."""

    @abc.abstractmethod
    def poll(self, now_ns: int) -> TeleopCommand | None:
        """The newest command, stamped ``now_ns`` if the device was read; None if not."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device (safe to call twice)."""

    def __enter__(self) -> InputDevice:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpaceMouse(InputDevice):
    """3Dconnexion SpaceMouse via ``pyspacemouse`` (module docstring).

    A reader thread keeps the newest state and when it was read (``pyspacemouse``'s
    ``read`` may block until the next HID report); :meth:`poll` stamps the command
    with that read time, so a device that stops answering goes stale and the
    controller holds.
    """

    name = "spacemouse"
    help = "hold button 0 (deadman) and push/twist the cap; button 1: gripper open/close"
    READ_RATE_HZ = 200.0

    def __init__(self, config: TeleopConfig, *, axis_signs: tuple[float, ...] = (1.0,) * 6) -> None:
        if len(axis_signs) != 6:
            raise ValueError(f"axis_signs needs 6 values (x y z rx ry rz), got {axis_signs}")
        self.config = config
        self.signs = np.asarray(axis_signs, dtype=float)
        self._device: Any = None
        self._module: Any = None
        self._latest: tuple[Any, int] | None = None  # (state, host time it was read)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gripper_width: float | None = None  # unknown until button 1 is pressed
        self._button1 = False

    def open(self) -> None:
        try:
            import pyspacemouse
        except ImportError as exc:
            raise RuntimeError(SPACEMOUSE_INSTALL) from exc
        device = pyspacemouse.open()
        if not device:
            raise RuntimeError(
                "no SpaceMouse found: is it plugged in, and can this user read /dev/hidraw*?"
            )
        self._module, self._device = pyspacemouse, device
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_loop, name="spacemouse", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        reader = self._device if hasattr(self._device, "read") else self._module
        pace = PeriodicLoop(self.READ_RATE_HZ, spin_s=0.0)
        while not self._stop.is_set():
            try:
                state = reader.read()
            except Exception as exc:  # unplugged, permissions: stale -> the controller holds
                log.warning("SpaceMouse read failed, no more input: %s", exc)
                return
            self._latest = (state, now_ns())
            pace.wait()

    def poll(self, now_ns: int) -> TeleopCommand | None:
        latest = self._latest
        return None if latest is None else self.command(*latest)

    def command(self, state: Any, t_ns: int) -> TeleopCommand:
        """A ``pyspacemouse`` state (x, y, z, roll, pitch, yaw in [-1, 1], buttons) read at
        ``t_ns`` → command. pyspacemouse calls the rotation about x *pitch*, about y *roll*."""
        buttons = list(getattr(state, "buttons", None) or getattr(state, "button", None) or [])
        deadman = bool(buttons[0]) if buttons else False
        pressed = bool(buttons[1]) if len(buttons) > 1 else False
        cfg = self.config
        if pressed and not self._button1:  # rising edge: toggle (closes first)
            closed = self._gripper_width == 0.0
            self._gripper_width = cfg.gripper_open_width_m if closed else 0.0
        self._button1 = pressed
        axes = np.array(
            [state.x, state.y, state.z, state.pitch, state.roll, state.yaw], dtype=float
        )
        return TeleopCommand(
            t_ns=t_ns,
            twist=np.clip(axes, -1.0, 1.0) * self.signs * cfg.full_scale,
            enable=deadman,
            gripper_width_m=self._gripper_width,
        )

    def close(self) -> None:
        self._stop.set()
        device, self._device = self._device, None
        if device is not None:
            closer = device if hasattr(device, "close") else self._module
            try:
                closer.close()
            except Exception as exc:  # closing a vanished device: nothing left to release
                log.debug("SpaceMouse close: %s", exc)
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a read blocked in hidapi may outlive this
            self._thread = None


__all__ = ["SPACEMOUSE_INSTALL", "InputDevice", "SpaceMouse"]
