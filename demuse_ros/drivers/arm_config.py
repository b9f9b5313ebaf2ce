"""UR arm driver: parameters (``arm:`` in the policy node's file), counters, controller facts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.safety.filter import REASONS, SafetyConfig
from demuse_ros.timing.loop import PeriodicLoop

#: Safety status bits that latch a fault: protective stop (2), emergency stop (7).
PROTECTIVE_STOP_BIT = 2
EMERGENCY_STOP_BIT = 7
FAULT_MASK = (1 << PROTECTIVE_STOP_BIT) | (1 << EMERGENCY_STOP_BIT)

#: Why a chunk can be refused: the filter's reasons, a latched fault, sent before
#: the current connection (a stale plan), or the arm in teach mode (moved by hand).
REJECT_REASONS = (*(r for r in REASONS if r != "step_clamped"), "fault", "stale", "teach_mode")

STATS = (
    "state_records",
    "packages_missed",
    "servo_commands",
    "chunks_accepted",
    "chunks_rejected",
    *(f"rejected_{r}" for r in REJECT_REASONS),
    "step_clamps",
    "protective_holds",
    "hold",
    "watchdog_stops",
    "faults",
    "fault",
    "resets",
    "teach_mode",
    "servo_rate_hz",
    "servo_period_ms_p50",
    "servo_period_ms_p99",
    "servo_period_ms_max",
    "servo_period_error_ms_p99",
    "package_period_error_ms_p99",
    "control_rate_hz",
    "realtime",
    "connected",
    "connects",
    "reconnects",
    "disconnects",
    "stream_timeouts",
    "connect_failures",
    "errors",
)


@dataclass(frozen=True)
class ArmDriverConfig:
    """The UR controller connection, the servo parameters and the safety limits."""

    host: str = param("192.168.1.102", doc="Controller address (ports are fixed by ur_rtde).")
    frequency_hz: float = param(
        0.0,
        doc="RTDE/control rate; 0 = from the controller (125 Hz CB3, 500 Hz e-Series).",
        unit="Hz",
        range=(0.0, 500.0),
    )
    lookahead_time_s: float = param(
        0.1, doc="servoL lookahead time (smoother but later).", unit="s", range=(0.03, 0.2)
    )
    gain: float = param(300.0, doc="servoL proportional gain.", range=(100.0, 2000.0))
    watchdog_s: float = param(
        0.3,
        doc="Hold the last target this long with no waypoint ahead, then servoStop.",
        unit="s",
        range=(0.0, 10.0),
    )
    stream_timeout_s: float = param(
        0.25,
        doc="No new controller package for this long = connection lost (stop, restart).",
        unit="s",
        range=(0.02, 5.0),
    )
    realtime_priority: int = param(
        50,
        doc="SCHED_FIFO priority of the driver process (0: normal scheduling). Needs an "
        "rtprio limit or CAP_SYS_NICE; without, the driver warns and runs at normal priority.",
        range=(0, 99),
    )
    ft_ring: str = param(
        "",
        doc="Shared-memory ring of the F/T driver; its wrench feeds the safety filter's "
        "force/torque limit (protective hold). The cell sets it; empty = no force limit.",
    )
    ft_max_age_s: float = param(
        0.25,
        doc="While servoing, an F/T sample older than this latches a protective hold.",
        unit="s",
        range=(0.01, 5.0),
    )
    reconnect_min_s: float = param(
        0.1, doc="First reconnect backoff after a lost connection.", unit="s", range=(0.0, 60.0)
    )
    reconnect_max_s: float = param(
        5.0, doc="Largest reconnect backoff (doubles up to this).", unit="s", range=(0.0, 600.0)
    )
    script_timeout_s: float = param(
        5.0,
        doc="How long a reset waits for the re-uploaded control script to run.",
        unit="s",
        range=(0.1, 60.0),
    )
    read_budget_s: float = param(
        2.0, doc="How far behind a reader may fall (sizes the ring).", unit="s", range=(0.1, 60.0)
    )
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        validate_fields(self)
        if 0.0 < self.frequency_hz < 1.0:
            raise ValueError(f"frequency_hz must be 0 (auto) or >= 1 Hz, got {self.frequency_hz}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")


def measure_rate_hz(recv: Any, timeout_s: float = 1.0) -> float:
    """125 or 500 Hz from the controller timestamp step (ur_rtde chose it by version)."""
    last = recv.getTimestamp()
    steps: list[float] = []
    poll = PeriodicLoop(2000.0)  # sample the stream at 4x the fastest controller rate
    deadline = time.monotonic() + timeout_s
    while len(steps) < 8 and time.monotonic() < deadline:
        poll.wait()
        ts = recv.getTimestamp()
        if ts > last:
            steps.append(ts - last)
            last = ts
    if not steps:
        return 125.0
    return 125.0 if min(steps) > 0.004 else 500.0


__all__ = ["FAULT_MASK", "REJECT_REASONS", "STATS", "ArmDriverConfig", "measure_rate_hz"]
