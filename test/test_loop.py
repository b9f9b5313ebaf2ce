"""Tests for demuse_ros.timing.loop: deadline grid, overruns, statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from demuse_ros.timing import NS_PER_S, LoopStats, PeriodicLoop, now_ns, sleep_until_ns


class FakeTime:
    """A manual nanosecond clock and a sleeper that jumps it to the deadline (+ lateness)."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now_ns = start_ns
        self.sleeps: list[int] = []
        self.lateness_ns: list[int] = []  # consumed one per sleep; 0 when empty

    def clock(self) -> int:
        return self.now_ns

    def sleeper(self, deadline_ns: int) -> None:
        assert deadline_ns > self.now_ns, "the loop must not sleep for a deadline already passed"
        self.sleeps.append(deadline_ns)
        self.now_ns = deadline_ns + (self.lateness_ns.pop(0) if self.lateness_ns else 0)


def make_loop(rate_hz: float = 100.0, **kwargs: object) -> tuple[PeriodicLoop, FakeTime]:
    fake = FakeTime()
    loop = PeriodicLoop(rate_hz, clock=fake.clock, sleeper=fake.sleeper, **kwargs)  # type: ignore[arg-type]
    return loop, fake


def test_deadlines_stay_on_grid_over_10k_cycles() -> None:
    loop, fake = make_loop(30.0)  # 33_333_333 ns: a period that is not a whole number of µs
    period = loop.period_ns
    assert period == 33_333_333
    rng = np.random.default_rng(7)
    work_ns = rng.integers(0, int(0.8 * period), size=10_000)
    fake.lateness_ns = rng.integers(0, 200_000, size=10_000).tolist()
    t0 = fake.now_ns
    loop.start()
    deadlines = []
    for w in work_ns.tolist():
        deadlines.append(loop.wait())
        fake.now_ns += w  # the loop body
    expected = [t0 + k * period for k in range(1, 10_001)]
    assert deadlines == expected
    stats = loop.stats()
    assert (stats.cycles, stats.overruns, stats.skipped_deadlines) == (10_000, 0, 0)


def test_start_sets_first_deadline_one_period_after_t0() -> None:
    loop, fake = make_loop(125.0)
    loop.start(t0_ns=5_000_000_000)
    fake.now_ns = 5_000_000_000
    assert loop.wait() == 5_000_000_000 + 8_000_000


def test_overrun_is_counted_and_does_not_sleep() -> None:
    loop, fake = make_loop(100.0)
    period = loop.period_ns
    loop.start()
    d1 = loop.wait()
    fake.now_ns += int(1.2 * period)  # body overruns the next deadline by 0.2 period
    n_sleeps = len(fake.sleeps)
    d2 = loop.wait()
    assert d2 == d1 + period  # late but not a whole period late: nothing skipped
    assert len(fake.sleeps) == n_sleeps  # returned at once
    stats = loop.stats()
    assert (stats.overruns, stats.skipped_deadlines) == (1, 0)
    assert stats.lateness_s_max == pytest.approx(0.2 * period / NS_PER_S)
    assert loop.wait() == d1 + 2 * period  # back on the grid, sleeping again
    assert fake.sleeps[-1] == d1 + 2 * period


def test_stall_of_3_5_periods_skips_3_deadlines_without_burst() -> None:
    loop, fake = make_loop(100.0)
    period = loop.period_ns
    loop.start()
    d1 = loop.wait()
    fake.now_ns = d1 + period + int(3.5 * period)  # 3.5 periods past the next deadline d1 + P
    returned = [loop.wait()]
    n_sleeps = len(fake.sleeps)
    returned += [loop.wait() for _ in range(5)]
    # The late cycle runs the latest passed grid point; every later one sleeps.
    assert returned[0] == d1 + 4 * period
    assert returned[1:] == [d1 + k * period for k in range(5, 10)]
    assert fake.sleeps[n_sleeps:] == returned[1:]
    stats = loop.stats()
    assert (stats.overruns, stats.skipped_deadlines) == (1, 3)
    assert isinstance(stats.overruns, int)
    assert isinstance(stats.skipped_deadlines, int)
    assert stats.lateness_s_max == pytest.approx(0.5 * period / NS_PER_S)


def test_stats_percentiles_on_known_sequence() -> None:
    loop, fake = make_loop(100.0)  # P = 10 ms
    period = loop.period_ns
    # Lateness alternates 0, 10 µs: periods alternate P + 10 µs, P - 10 µs.
    fake.lateness_ns = [10_000 * (i % 2) for i in range(101)]
    loop.start()
    for _ in range(101):
        loop.wait()
    s = loop.stats()
    assert s.cycles == 101
    # 100 periods, 50 of P - 10 µs and 50 of P + 10 µs: median interpolates to P.
    assert s.period_s_p50 == pytest.approx(period / NS_PER_S, abs=1e-12)
    assert s.period_s_p99 == pytest.approx((period + 10_000) / NS_PER_S, abs=1e-12)
    assert s.period_s_max == pytest.approx((period + 10_000) / NS_PER_S, abs=1e-12)
    assert s.rate_hz == pytest.approx(100.0, rel=1e-12)
    # Lateness: 51 zeros and 50 of 10 µs.
    assert s.lateness_s_p50 == 0.0
    assert s.lateness_s_p99 == pytest.approx(10e-6, abs=1e-12)
    assert s.lateness_s_max == pytest.approx(10e-6, abs=1e-12)
    d = s.as_dict()
    assert set(d) == set(LoopStats.__dataclass_fields__)
    assert d["cycles"] == 101


def test_stats_cover_only_the_history_ring() -> None:
    loop, fake = make_loop(100.0, history=16)
    fake.lateness_ns = [1_000 * i for i in range(100)]  # lateness i µs
    for _ in range(100):
        loop.wait()
    s = loop.stats()
    assert s.cycles == 100  # counters are totals
    # Only the last 16 lateness values (84..99 µs) remain: linear p50 = 91.5 µs.
    assert s.lateness_s_p50 == pytest.approx(91.5e-6, abs=1e-12)
    assert s.lateness_s_max == pytest.approx(99e-6, abs=1e-12)
    assert s.lateness_s_p99 == pytest.approx((84 + 0.99 * 15) * 1e-6, abs=1e-12)
    # Periods are P + 1 µs throughout.
    assert s.period_s_max == pytest.approx((loop.period_ns + 1_000) / NS_PER_S, abs=1e-12)


def test_empty_stats_and_reset() -> None:
    loop, fake = make_loop(50.0)
    s = loop.stats()
    assert s.cycles == 0
    assert math.isnan(s.rate_hz)
    assert math.isnan(s.lateness_s_p50)
    loop.start()
    fake.now_ns += 5 * loop.period_ns
    loop.wait()
    assert loop.stats().overruns == 1
    loop.reset_stats()
    s = loop.stats()
    assert (s.cycles, s.overruns, s.skipped_deadlines) == (0, 0, 0)
    assert math.isnan(s.period_s_max)


def test_iterator_starts_lazily() -> None:
    loop, fake = make_loop(10.0)
    t0 = fake.now_ns
    deadlines = []
    for deadline in loop:
        deadlines.append(deadline)
        if len(deadlines) == 3:
            break
    assert deadlines == [t0 + k * 100_000_000 for k in (1, 2, 3)]


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, -math.inf, 2e9, "10", None, True])
def test_rate_hz_validation(bad: object) -> None:
    with pytest.raises(ValueError, match="rate_hz"):
        PeriodicLoop(bad)  # type: ignore[arg-type]


def test_other_argument_validation() -> None:
    with pytest.raises(ValueError, match="spin_s"):
        PeriodicLoop(10.0, spin_s=-1.0)
    with pytest.raises(ValueError, match="history"):
        PeriodicLoop(10.0, history=1)


def test_sleep_until_ns_returns_at_or_after_deadline() -> None:
    past = now_ns() - 1_000_000
    assert sleep_until_ns(past) >= past  # no-op
    deadline = now_ns() + 2_000_000
    assert sleep_until_ns(deadline, spin_ns=500_000) >= deadline


def test_real_clock_smoke_200hz() -> None:
    """Sanity check on the real clock (loose on purpose; not a performance test)."""
    loop = PeriodicLoop(200.0)
    loop.start()
    deadlines = [loop.wait() for _ in range(50)]  # ~0.25 s
    assert all(b - a >= loop.period_ns for a, b in itertools.pairwise(deadlines))
    s = loop.stats()
    assert s.cycles == 50
    assert isinstance(s.overruns, int)
    assert isinstance(s.skipped_deadlines, int)
    assert s.rate_hz == pytest.approx(200.0, rel=0.15)
