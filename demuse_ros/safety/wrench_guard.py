"""The F/T side of the safety filter: the arm process reads the F/T driver's ring.

Each servo cycle :meth:`WrenchGuard.update` feeds the newest fingertip wrench to
:meth:`SafetyFilter.observe_wrench` (force or torque over the limit latches a
protective hold) and, while the arm moves, latches a hold when the newest
sample is older than ``max_age_s``: a force limit that cannot see the force is
no limit. The ring is attached lazily (the F/T driver may start later).
"""

from __future__ import annotations

import math

from demuse_ros.safety.filter import SafetyFilter
from demuse_ros.sync.streams import ft_schema
from demuse_ros.timing.clock import NS_PER_S
from demuse_ros.transport.ring_buffer import RingBuffer


class WrenchGuard:
    """Feeds the F/T ring ``ring_name`` into ``safety`` (see the module docstring)."""

    def __init__(self, ring_name: str, safety: SafetyFilter, max_age_s: float) -> None:
        self.ring_name, self.safety, self.max_age_s = ring_name, safety, max_age_s
        self._ring: RingBuffer | None = None

    def update(self, now_ns: int, moving: bool) -> bool:
        """Check the newest sample; True while a protective hold is latched."""
        if self._ring is None:
            try:
                self._ring = RingBuffer.attach(self.ring_name, ft_schema())
            except FileNotFoundError:
                self._ring = None
        latest = self._ring.read_latest(("wrench",)) if self._ring is not None else None
        if latest is not None:
            self.safety.observe_wrench(latest["wrench"])
        if moving and not self.safety.hold_reason:
            age_s = (now_ns - latest["t_receive_ns"]) / NS_PER_S if latest else math.inf
            if age_s > self.max_age_s:
                self.safety.hold(f"no force/torque sample for {age_s:.2f} s")
        return bool(self.safety.hold_reason)

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None


__all__ = ["WrenchGuard"]
