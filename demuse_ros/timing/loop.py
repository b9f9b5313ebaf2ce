"""Deadline-based periodic loops on the monotonic nanosecond clock.

A loop never sleeps for "one period": it sleeps until an absolute deadline on the grid
``t0 + k * period_ns``, so the time spent in the loop body and in the sleep's own
overshoot never accumulates into drift. A late cycle (overrun) runs immediately and
skips the grid points it missed instead of bursting to catch up, because a burst of
back-to-back control cycles is worse for a robot than a dropped one.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from demuse_ros.timing.clock import NS_PER_S, now_ns


def sleep_until_ns(
    deadline_ns: int, *, spin_ns: int = 300_000, clock: Callable[[], int] = now_ns
) -> int:
    """Sleep until ``clock() >= deadline_ns`` and return the wake time in ns.

    The kernel sleep is only accurate to tens of µs (timer slack, scheduling), so this
    sleeps coarsely until ``deadline_ns - spin_ns`` and busy-spins on the clock for the
    rest. The spin holds the GIL; keep ``spin_ns`` short (the default 300 µs costs other
    Python threads at most that much latency). Returns immediately if already past.

    Args:
        deadline_ns: Absolute deadline on ``clock``'s time base.
        spin_ns: Length of the final busy spin.
        clock: Nanosecond clock; must be the clock the deadline was computed on.

    Returns:
        The clock reading at wake-up (``>= deadline_ns``).
    """
    now = clock()
    if now >= deadline_ns:
        return now
    coarse_ns = deadline_ns - spin_ns - now
    if coarse_ns > 0:
        time.sleep(coarse_ns / NS_PER_S)  # precise sleep: coarse part, the spin below finishes it
    while now < deadline_ns:
        now = clock()
    return now


@dataclass(frozen=True)
class LoopStats:
    """Timing statistics of a :class:`PeriodicLoop` over its recorded history.

    Percentiles use numpy's default linear interpolation. Fields that need at least one
    recorded value are NaN when there is none (NaN rather than 0 so that "no data" never
    reads as "perfect timing").
    """

    cycles: int
    overruns: int
    skipped_deadlines: int
    rate_hz: float
    period_s_p50: float
    period_s_p99: float
    period_s_max: float
    lateness_s_p50: float
    lateness_s_p99: float
    lateness_s_max: float

    def as_dict(self) -> dict[str, float | int]:
        """Return the fields as a flat dict (for logging and diagnostics)."""
        return asdict(self)


def _percentiles_s(values_ns: np.ndarray) -> tuple[float, float, float]:
    if values_ns.size == 0:
        return math.nan, math.nan, math.nan
    p50, p99 = np.percentile(values_ns, (50.0, 99.0))
    return float(p50) / NS_PER_S, float(p99) / NS_PER_S, float(values_ns.max()) / NS_PER_S


class PeriodicLoop:
    """Absolute-deadline periodic loop with overrun handling and timing statistics.

    Usage::

        loop = PeriodicLoop(125.0)
        for deadline_ns in loop:  # start() is called lazily on the first iteration
            step(deadline_ns)

    ``wait()`` and the iterator are meant for the one thread that runs the loop;
    ``stats()`` may be called from another thread (it reads a snapshot; a cycle that
    completes concurrently may or may not be included).
    """

    def __init__(
        self,
        rate_hz: float,
        *,
        spin_s: float = 0.0003,
        history: int = 2048,
        clock: Callable[[], int] = now_ns,
        sleeper: Callable[[int], object] | None = None,
    ) -> None:
        """Create a loop; nothing runs until :meth:`start` or the first :meth:`wait`.

        Args:
            rate_hz: Loop rate; finite and > 0. The period is rounded to whole ns, so the
                grid rate differs from ``rate_hz`` by at most 0.5 ns per period.
            spin_s: Busy-spin length of the default sleeper; finite and >= 0.
            history: Number of cycles kept for the statistics; >= 2.
            clock: Nanosecond monotonic clock (injectable for tests).
            sleeper: ``sleeper(deadline_ns)`` blocks until ``clock() >= deadline_ns``;
                defaults to :func:`sleep_until_ns` on ``clock`` with ``spin_s``.

        Raises:
            ValueError: If an argument is out of range.
        """
        if (
            isinstance(rate_hz, bool)
            or not isinstance(rate_hz, numbers.Real)
            or not math.isfinite(rate_hz)
            or rate_hz <= 0
        ):
            raise ValueError(f"rate_hz must be a finite number > 0, got {rate_hz!r}")
        period_ns = round(NS_PER_S / rate_hz)
        if period_ns < 1:
            raise ValueError(f"rate_hz={rate_hz!r} gives a period below 1 ns; must be <= 1e9")
        if not math.isfinite(spin_s) or spin_s < 0:
            raise ValueError(f"spin_s must be finite and >= 0, got {spin_s!r}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 2:
            raise ValueError(f"history must be an int >= 2, got {history!r}")
        self._rate_hz = float(rate_hz)
        self._period_ns = period_ns
        self._clock = clock
        if sleeper is None:
            sleeper = functools.partial(
                sleep_until_ns, spin_ns=round(spin_s * NS_PER_S), clock=clock
            )
        self._sleeper = sleeper
        self._history = history
        # Preallocated rings: wait() only stores into them, so a cycle allocates no arrays.
        self._period_ring_ns = np.zeros(history, dtype=np.int64)
        self._lateness_ring_ns = np.zeros(history, dtype=np.int64)
        self._t0_ns: int | None = None
        self._k = 0  # index of the next deadline on the grid t0 + k * period
        self._last_wake_ns: int | None = None
        self.reset_stats()

    @property
    def period_ns(self) -> int:
        """Loop period in integer nanoseconds."""
        return self._period_ns

    @property
    def rate_hz(self) -> float:
        """Requested loop rate."""
        return self._rate_hz

    @property
    def next_deadline_ns(self) -> int | None:
        """The grid point the next :meth:`wait` waits for (``None`` before the first)."""
        if self._t0_ns is None:
            return None
        return self._t0_ns + self._k * self._period_ns

    def start(self, t0_ns: int | None = None) -> None:
        """(Re)start the grid at ``t0_ns`` (default: now); the first deadline is a period later."""
        self._start(t0_ns)

    def _start(self, t0_ns: int | None) -> int:
        t0 = self._clock() if t0_ns is None else int(t0_ns)
        self._t0_ns = t0
        self._k = 1
        self._last_wake_ns = None  # a period across a restart means nothing
        return t0

    def wait(self) -> int:
        """Block until the next grid deadline and return that deadline in ns.

        If the deadline has already passed when called, the cycle is an overrun: it is
        counted, nothing sleeps, and if whole periods were missed those grid points are
        skipped (counted in ``skipped_deadlines``) and the most recent passed grid point is
        returned. The next call then waits for the grid point after it, so a stall never
        turns into a burst of back-to-back cycles.
        """
        t0_ns = self._t0_ns
        if t0_ns is None:
            t0_ns = self._start(None)
        period_ns = self._period_ns
        deadline_ns = t0_ns + self._k * period_ns
        now = self._clock()
        if now > deadline_ns:
            self._overruns += 1
            missed = (now - deadline_ns) // period_ns
            if missed:
                self._skipped += missed
                self._k += missed
                deadline_ns += missed * period_ns
            wake_ns = now
        else:
            self._sleeper(deadline_ns)
            wake_ns = self._clock()
        self._k += 1
        self._record(deadline_ns, wake_ns)
        return deadline_ns

    def _record(self, deadline_ns: int, wake_ns: int) -> None:
        i = self._cycles % self._history
        self._lateness_ring_ns[i] = wake_ns - deadline_ns
        self._cycles += 1
        if self._last_wake_ns is not None:
            self._period_ring_ns[self._n_periods % self._history] = wake_ns - self._last_wake_ns
            self._n_periods += 1
        self._last_wake_ns = wake_ns

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return self.wait()

    def reset_stats(self) -> None:
        """Forget all counters and recorded history; the deadline grid is kept."""
        self._cycles = 0
        self._overruns = 0
        self._skipped = 0
        self._n_periods = 0

    def stats(self) -> LoopStats:
        """Return timing statistics over the last ``history`` cycles (counters are totals)."""
        cycles, n_periods = self._cycles, self._n_periods
        lateness_ns = self._lateness_ring_ns[: min(cycles, self._history)].copy()
        periods_ns = self._period_ring_ns[: min(n_periods, self._history)].copy()
        period_p50, period_p99, period_max = _percentiles_s(periods_ns)
        late_p50, late_p99, late_max = _percentiles_s(lateness_ns)
        total_ns = int(periods_ns.sum())
        if total_ns > 0:
            rate_hz = periods_ns.size * NS_PER_S / total_ns
        else:
            rate_hz = math.nan
        return LoopStats(
            cycles=cycles,
            overruns=self._overruns,
            skipped_deadlines=self._skipped,
            rate_hz=rate_hz,
            period_s_p50=period_p50,
            period_s_p99=period_p99,
            period_s_max=period_max,
            lateness_s_p50=late_p50,
            lateness_s_p99=late_p99,
            lateness_s_max=late_max,
        )


class PeriodRecorder:
    """Intervals between events (e.g. servo commands): a preallocated ring, percentiles on demand.

    For loops paced by something other than a :class:`PeriodicLoop` (a device
    stream); :meth:`mark` allocates nothing.
    """

    def __init__(self, history: int = 4096) -> None:
        self._ring = np.zeros(history, dtype=np.int64)
        self._n = 0
        self._last: int | None = None

    def mark(self, t_ns: int) -> None:
        if self._last is not None:
            self._ring[self._n % len(self._ring)] = t_ns - self._last
            self._n += 1
        self._last = t_ns

    def restart(self) -> None:
        self._last = None  # a gap across a stop is not a period

    def summary_ms(self, nominal_ns: int = 0) -> tuple[float, float, float, float, float] | None:
        """(rate Hz, p50, p99, max, p99 of |period - nominal_ns|) in ms over the history.

        None before two marks.
        """
        if self._n == 0:
            return None
        periods_ns = self._ring[: min(self._n, len(self._ring))]
        p50, p99 = np.percentile(periods_ns, (50.0, 99.0)) / 1e6
        error_p99 = float(np.percentile(np.abs(periods_ns - nominal_ns), 99.0)) / 1e6
        rate = 1e9 / float(periods_ns.mean())
        return rate, float(p50), float(p99), float(periods_ns.max()) / 1e6, error_p99
