"""Keyboard teleoperation in a terminal: a pure key parser and a termios reader.

A terminal reports key *presses* only (and auto-repeats a held key after a delay),
never releases, so hold-to-enable is impossible. Instead:

* **enable is a toggle** (``e``), ``space`` disables (hold), and the keyboard
  **disarms itself** after ``disarm_after_s`` without any key;
* a **motion key moves for** ``key_hold_s`` after its last press; holding the key
  keeps it moving through the terminal's auto-repeat (the first repeat comes after
  the terminal's delay, ~0.25–0.6 s, so a held key may stutter once); keys on
  different axes combine.

========  ==========================================  ========  =======================
key       action                                      key       action
========  ==========================================  ========  =======================
``e``     enable (toggle; the deadman)                ``space`` disable: hold
``w/s``   TCP +x / −x (base frame)                    ``i/k``   rotate +/− about base x
``a/d``   TCP +y / −y                                 ``j/l``   rotate +/− about base y
``r/f``   TCP +z / −z                                 ``u/o``   rotate +/− about base z
``+/-``   speed scale up / down (``=`` is ``+``)      ``g/h``   gripper open / close
``[/]``   grip force down / up                        ``q``     quit (Ctrl-C too)
========  ==========================================  ========  =======================

Escape sequences (arrow and function keys) are skipped whole, so their bytes never
act as keys. :class:`KeyboardTeleop` is the parser: feed it bytes with their host
time, ask for the command at any time (unit-tested without a terminal).
:class:`TerminalKeyboard` reads stdin in cbreak mode (no echo, no line buffering,
Ctrl-C still raises ``KeyboardInterrupt``) and restores the terminal on close.
"""

from __future__ import annotations

import os
import select
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.drivers.ft_signal import MAX_FORCE_N
from demuse_ros.teleop.core import MIN_GRIP_FORCE_N, TeleopCommand, TeleopConfig
from demuse_ros.teleop.devices import InputDevice

#: Motion keys: byte → (axis 0..5, sign).
MOTION_KEYS: dict[bytes, tuple[int, float]] = {
    b"w": (0, 1.0),
    b"s": (0, -1.0),
    b"a": (1, 1.0),
    b"d": (1, -1.0),
    b"r": (2, 1.0),
    b"f": (2, -1.0),
    b"i": (3, 1.0),
    b"k": (3, -1.0),
    b"j": (4, 1.0),
    b"l": (4, -1.0),
    b"u": (5, 1.0),
    b"o": (5, -1.0),
}
#: The other keys: byte → action name (see the module docstring's table).
ACTION_KEYS: dict[bytes, str] = {
    b"e": "toggle_enable",
    b" ": "disable",
    b"+": "faster",
    b"=": "faster",
    b"-": "slower",
    b"g": "open",
    b"h": "close",
    b"[": "weaker",
    b"]": "stronger",
    b"q": "quit",
    b"\x03": "quit",  # Ctrl-C in raw mode
}

_ESC = 0x1B
_NS = 1_000_000_000


@dataclass(frozen=True)
class KeyboardConfig:
    """Terminal keyboard timing (see the module docstring)."""

    key_hold_s: float = param(
        0.3, doc="A motion key moves for this long after its last press.", unit="s",
        range=(0.05, 2.0),
    )  # fmt: skip
    disarm_after_s: float = param(
        10.0, doc="Disable after this long without any key (0: never).", unit="s",
        range=(0.0, 600.0),
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self)


class KeyboardTeleop:
    """Key bytes → :class:`TeleopCommand` (pure; the module docstring has the key map)."""

    def __init__(self, config: TeleopConfig, keyboard: KeyboardConfig | None = None) -> None:
        self.config = config
        self.keyboard = keyboard or KeyboardConfig()
        self.enabled = False
        self.quit_requested = False
        self.speed_scale = config.speed_scale
        self.gripper_width_m: float | None = None
        self.gripper_force_n = config.gripper_force_n
        self._axis_until_ns = np.zeros(6, dtype=np.int64)  # axis moves until this time
        self._axis_sign = np.zeros(6)
        self._last_key_ns: int | None = None
        self._escape = 0  # 0: none, 1: after ESC, 2: inside a CSI/SS3 sequence

    def feed(self, data: bytes, t_ns: int) -> None:
        """Bytes read from the terminal at host time ``t_ns``."""
        for byte in data:
            if self._skip_escape(byte):
                continue
            self._last_key_ns = t_ns
            key = bytes([byte]).lower() if 0x41 <= byte <= 0x5A else bytes([byte])
            if key in MOTION_KEYS:
                axis, sign = MOTION_KEYS[key]
                self._axis_sign[axis] = sign
                self._axis_until_ns[axis] = t_ns + round(self.keyboard.key_hold_s * _NS)
            elif key in ACTION_KEYS:
                self._act(ACTION_KEYS[key])

    def _skip_escape(self, byte: int) -> bool:
        """True while inside an escape sequence (ESC, ESC [ ... final, ESC O x)."""
        if self._escape == 0:
            if byte == _ESC:
                self._escape = 1
                return True
            return False
        if self._escape == 1:
            self._escape = 2 if byte in (0x5B, 0x4F) else 0  # '[' (CSI) or 'O' (SS3)
            return True
        if 0x40 <= byte <= 0x7E:  # the final byte ends the sequence
            self._escape = 0
        return True

    def _act(self, action: str) -> None:
        cfg = self.config
        if action == "toggle_enable":
            self.enabled = not self.enabled
            if not self.enabled:
                self._axis_until_ns[:] = 0
        elif action == "disable":
            self.enabled = False
            self._axis_until_ns[:] = 0
        elif action in ("faster", "slower"):
            step = cfg.speed_scale_step if action == "faster" else -cfg.speed_scale_step
            self.speed_scale = float(np.clip(round(self.speed_scale + step, 6), 0.05, 1.0))
        elif action in ("open", "close"):
            self.gripper_width_m = cfg.gripper_open_width_m if action == "open" else 0.0
        elif action in ("weaker", "stronger"):
            step = cfg.gripper_force_step_n if action == "stronger" else -cfg.gripper_force_step_n
            self.gripper_force_n = float(
                np.clip(self.gripper_force_n + step, MIN_GRIP_FORCE_N, MAX_FORCE_N)
            )
        elif action == "quit":
            self.quit_requested = True
            self.enabled = False

    def command(self, t_ns: int) -> TeleopCommand:
        """The command at host time ``t_ns`` (applies the auto-disarm)."""
        disarm = self.keyboard.disarm_after_s
        if (
            self.enabled
            and disarm > 0
            and self._last_key_ns is not None
            and t_ns - self._last_key_ns > disarm * _NS
        ):
            self.enabled = False
        moving = self._axis_until_ns > t_ns
        twist = np.where(moving, self._axis_sign, 0.0) * self.config.full_scale
        return TeleopCommand(
            t_ns=t_ns,
            twist=twist if self.enabled else np.zeros(6),
            enable=self.enabled,
            speed_scale=self.speed_scale,
            gripper_width_m=self.gripper_width_m,
            gripper_force_n=self.gripper_force_n,
        )


class TerminalKeyboard(InputDevice):
    """:class:`KeyboardTeleop` on this process's terminal (stdin in cbreak mode)."""

    name = "keyboard"
    help = (
        "e enable  space hold  w/s a/d r/f move x/y/z  i/k j/l u/o rotate  +/- speed  "
        "g/h open/close  [/] force  q quit"
    )

    def __init__(
        self, config: TeleopConfig, keyboard: KeyboardConfig | None = None, *, fd: int | None = None
    ) -> None:
        self.keys = KeyboardTeleop(config, keyboard)
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._saved: Any = None

    @property
    def quit_requested(self) -> bool:
        return self.keys.quit_requested

    def open(self) -> None:
        import termios
        import tty

        if not os.isatty(self._fd):
            raise RuntimeError(
                "the keyboard device needs a terminal on stdin (run it interactively)"
            )
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)  # no echo, byte at a time; Ctrl-C still raises SIGINT

    def poll(self, now_ns: int) -> TeleopCommand:
        while select.select([self._fd], [], [], 0.0)[0]:
            data = os.read(self._fd, 64)
            if not data:
                break
            self.keys.feed(data, now_ns)
        return self.keys.command(now_ns)

    def close(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None


__all__ = [
    "ACTION_KEYS",
    "MOTION_KEYS",
    "KeyboardConfig",
    "KeyboardTeleop",
    "TerminalKeyboard",
]
