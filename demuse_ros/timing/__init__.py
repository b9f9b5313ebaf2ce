"""Time for the runtime: one monotonic-ns clock, deadline loops, device clock mapping."""

from demuse_ros.timing.clock import NS_PER_S, now_ns, now_s, ns_to_s, s_to_ns
from demuse_ros.timing.clock_mapper import (
    ClockJump,
    ClockMapper,
    ClockMapperConfig,
    fit_lower_envelope,
)
from demuse_ros.timing.loop import LoopStats, PeriodicLoop, sleep_until_ns

__all__ = [
    "NS_PER_S",
    "ClockJump",
    "ClockMapper",
    "ClockMapperConfig",
    "LoopStats",
    "PeriodicLoop",
    "fit_lower_envelope",
    "now_ns",
    "now_s",
    "ns_to_s",
    "s_to_ns",
    "sleep_until_ns",
]
