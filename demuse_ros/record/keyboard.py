"""Single-key commands from a terminal, without Enter, restoring the terminal on exit.

``with Keyboard() as kb: ... kb.read()`` puts stdin in cbreak mode (``tty.setcbreak``:
no line buffering, no echo) — not full raw mode, so Ctrl-C still raises
``KeyboardInterrupt`` and the cell's stop-the-arm-first path runs. The previous
terminal settings come back in ``__exit__`` (also on exceptions) and at
interpreter exit. When stdin is not a terminal the keyboard is inactive and
``read()`` returns nothing.
"""

from __future__ import annotations

import atexit
import os
import select
import sys
from typing import Any


class Keyboard:
    """Non-blocking single-key reader on stdin (module docstring)."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream if stream is not None else sys.stdin
        self._saved: Any = None
        self.active = False

    def __enter__(self) -> Keyboard:
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self
        if not os.isatty(fd):
            return self
        import termios
        import tty

        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        atexit.register(self._restore)
        tty.setcbreak(fd)
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
            self.active = False

    def read(self) -> str:
        """The keys typed since the last call (lower case; "" when none or inactive)."""
        if not self.active:
            return ""
        out = []
        while select.select([self._fd], [], [], 0)[0]:
            data = os.read(self._fd, 64)
            if not data:
                break
            out.append(data.decode(errors="ignore"))
        return "".join(out).lower()


__all__ = ["Keyboard"]
