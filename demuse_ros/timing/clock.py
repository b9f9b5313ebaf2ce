"""The runtime's single internal clock: host CLOCK_MONOTONIC as integer nanoseconds.

Every timestamp that crosses a module boundary is an ``int`` of monotonic nanoseconds.
Integers keep full resolution forever (a float64 of seconds since boot loses sub-µs
resolution after a few months of uptime) and make deadline arithmetic exact. Device
clocks (camera, F/T sensor, robot controller) are mapped into this domain by
:class:`demuse_ros.timing.clock_mapper.ClockMapper`.
"""

from __future__ import annotations

import time

NS_PER_S: int = 1_000_000_000


def now_ns() -> int:
    """Return host CLOCK_MONOTONIC in integer nanoseconds."""
    return time.monotonic_ns()


def now_s() -> float:
    """Return host CLOCK_MONOTONIC in float seconds (for logs and humans, not for arithmetic)."""
    return time.monotonic_ns() / NS_PER_S


def ns_to_s(ns: int) -> float:
    """Convert integer nanoseconds to float seconds."""
    return ns / NS_PER_S


def s_to_ns(s: float) -> int:
    """Convert float seconds to integer nanoseconds, rounding to the nearest nanosecond."""
    return round(s * NS_PER_S)
