"""Tests for demuse_ros.timing.clock_mapper on synthetic device streams.

Stream model (the one the mapper assumes): a sample captured at device time ``d`` was
captured at host time ``capture = (1 + drift) * d + offset`` and is received at
``capture + latency``, latency = 0.5 ms + exponential(1 ms), with 1% of samples stalled a
further 20-80 ms. Receipt is in order (a sample cannot overtake the one before it), so a
stall also holds up the samples behind it and they arrive in a burst, as they do from a
real USB or TCP reader. The lower envelope the mapper estimates is capture + 0.5 ms, so
the expected mapped time is ``capture + 0.5 ms - latency_s``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demuse_ros.timing import ClockMapper, ClockMapperConfig, fit_lower_envelope

OFFSET_S = 1234.5
MIN_LATENCY_S = 0.5e-3


@dataclasses.dataclass
class Stream:
    device_s: np.ndarray
    capture_ns: np.ndarray  # true capture time on the host clock
    host_ns: np.ndarray  # host receive time


def make_stream(
    seed: int,
    rate_hz: float,
    drift_ppm: float,
    duration_s: float = 60.0,
    device0_s: float = 100.0,
) -> Stream:
    rng = np.random.default_rng(seed)
    n = int(duration_s * rate_hz)
    device_s = device0_s + np.arange(n) / rate_hz
    capture_s = (1.0 + drift_ppm * 1e-6) * device_s + OFFSET_S
    latency_s = MIN_LATENCY_S + rng.exponential(1e-3, n)
    stalled = rng.random(n) < 0.01
    latency_s[stalled] += rng.uniform(0.02, 0.08, stalled.sum())
    host_s = np.maximum.accumulate(capture_s + latency_s)
    return Stream(device_s, np.round(capture_s * 1e9).astype(np.int64), to_ns(host_s))


def to_ns(seconds: np.ndarray) -> np.ndarray:
    return np.round(seconds * 1e9).astype(np.int64)


def run(mapper: ClockMapper, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """Feed a stream; return mapped times (ns) and whether the mapper was ready."""
    mapped = np.empty(stream.device_s.size, dtype=np.int64)
    ready = np.zeros(stream.device_s.size, dtype=bool)
    for i, (d, h) in enumerate(zip(stream.device_s.tolist(), stream.host_ns.tolist(), strict=True)):
        mapped[i] = mapper.update(d, h)
        ready[i] = mapper.ready
    return mapped, ready


def error_ms(mapped: np.ndarray, stream: Stream, latency_s: float = 0.0) -> np.ndarray:
    expected = stream.capture_ns + round((MIN_LATENCY_S - latency_s) * 1e9)
    return (mapped - expected) / 1e6


@pytest.mark.parametrize("drift_ppm", [75.0, -100.0])
@pytest.mark.parametrize("rate_hz", [30.0, 100.0, 500.0])
def test_accuracy_on_jittery_stream(rate_hz: float, drift_ppm: float) -> None:
    stream = make_stream(
        seed=int(rate_hz) * 10 + (drift_ppm > 0), rate_hz=rate_hz, drift_ppm=drift_ppm
    )
    mapper = ClockMapper(name="cam")
    mapped, ready = run(mapper, stream)
    assert ready[-1]
    assert not ready[0]
    assert np.all(mapped <= stream.host_ns)
    err = error_ms(mapped, stream)[ready]
    assert np.mean(np.abs(err) <= 0.5) >= 0.99
    # Tighter than the spec: the envelope fit has almost no bias (least squares through the
    # segment minima would sit ~0.13 ms above the floor at 30 Hz and fail this).
    assert np.median(np.abs(err)) < 0.05
    s = mapper.stats()
    assert s["jumps"] == 0
    assert s["samples"] == stream.device_s.size
    assert s["ready"] is True
    assert abs(s["drift_ppm"] - drift_ppm) < 10.0
    assert 0.0 < s["residual_s"] < 1e-3
    true_offset_s = OFFSET_S + drift_ppm * 1e-6 * stream.device_s[-1] + MIN_LATENCY_S
    assert s["offset_s"] == pytest.approx(true_offset_s, abs=0.5e-3)


def test_latency_s_is_subtracted() -> None:
    stream = make_stream(seed=3, rate_hz=100.0, drift_ppm=50.0, duration_s=20.0)
    mapper = ClockMapper(ClockMapperConfig(latency_s=MIN_LATENCY_S))
    mapped, ready = run(mapper, stream)
    # The known latency is the whole minimal latency: mapped time is the capture time.
    err = error_ms(mapped, stream, latency_s=MIN_LATENCY_S)[ready]
    assert np.mean(np.abs(err) <= 0.5) >= 0.99
    assert np.all(mapped <= stream.host_ns - round(MIN_LATENCY_S * 1e9))


def test_large_device_clock_keeps_precision() -> None:
    # A controller up for ~12 days: device seconds near 1e6 must not cost precision.
    stream = make_stream(seed=4, rate_hz=500.0, drift_ppm=-30.0, duration_s=20.0, device0_s=1e6)
    mapper = ClockMapper()
    mapped, ready = run(mapper, stream)
    err = error_ms(mapped, stream)[ready]
    assert np.mean(np.abs(err) <= 0.5) >= 0.99
    assert abs(mapper.stats()["drift_ppm"] + 30.0) < 10.0


def test_device_clock_reset_counts_one_jump_and_recovers() -> None:
    stream = make_stream(seed=5, rate_hz=100.0, drift_ppm=75.0, duration_s=30.0)
    half = stream.device_s.size // 2
    device_s = stream.device_s.copy()
    device_s[half:] -= device_s[half] - 0.001  # device clock restarts near 0
    mapper = ClockMapper()
    mapped, ready = run(mapper, dataclasses.replace(stream, device_s=device_s))
    s = mapper.stats()
    assert s["jumps"] == 1
    assert mapper.last_jump is not None
    assert mapper.last_jump.reason == "backwards"
    assert not ready[half]
    after = np.flatnonzero(ready[half:])[0] + half
    # min_segments = 4 segments of 0.25 s after the reset: ready again one second later.
    assert after - half == pytest.approx(100, abs=2)
    # The old mapping is gone: the new samples map to their true capture times again.
    err = error_ms(mapped, stream)[after:]
    assert np.mean(np.abs(err) <= 0.5) >= 0.99
    assert np.all(mapped <= stream.host_ns)


def test_forward_device_jump_is_detected() -> None:
    stream = make_stream(seed=6, rate_hz=30.0, drift_ppm=-100.0, duration_s=20.0)
    half = stream.device_s.size // 2
    device_s = stream.device_s.copy()
    device_s[half:] += 2.0
    mapper = ClockMapper()
    mapped, _ = run(mapper, dataclasses.replace(stream, device_s=device_s))
    assert mapper.stats()["jumps"] == 1
    assert mapper.last_jump is not None
    assert mapper.last_jump.reason == "forward"
    assert mapper.last_jump.device_s == device_s[half]
    assert np.all(mapped <= stream.host_ns)  # never mapped after the receive time


def test_persistent_shift_is_detected() -> None:
    # The minimal latency grows by 100 ms for good (e.g. the transport fell back to a
    # slower mode): samples stay late, so after shift_persist_s the fit restarts.
    stream = make_stream(seed=7, rate_hz=100.0, drift_ppm=20.0, duration_s=20.0)
    half = stream.device_s.size // 2
    host_ns = stream.host_ns.copy()
    host_ns[half:] += 100_000_000
    mapper = ClockMapper()
    mapped, _ = run(mapper, dataclasses.replace(stream, host_ns=host_ns))
    assert mapper.stats()["jumps"] == 1
    assert mapper.last_jump is not None
    assert mapper.last_jump.reason == "shift"
    # Detected after >= 0.5 s of host time (50 samples) and not much later.
    detected = int(np.searchsorted(stream.device_s, mapper.last_jump.device_s))
    assert 50 <= detected - half <= 60
    err = error_ms(mapped, stream)[-500:] - 100.0  # the new envelope is 100 ms later
    assert np.mean(np.abs(err) <= 0.5) >= 0.99


@pytest.mark.parametrize("rate_hz", [30.0, 100.0, 500.0])
def test_single_long_stall_is_not_a_jump(rate_hz: float) -> None:
    stream = make_stream(seed=8, rate_hz=rate_hz, drift_ppm=75.0, duration_s=20.0)
    i = stream.device_s.size // 2
    host_ns = stream.host_ns.copy()
    host_ns[i] += 200_000_000
    host_ns = np.maximum.accumulate(host_ns)  # everything behind it arrives in one burst
    assert np.sum(host_ns != stream.host_ns) >= 0.19 * rate_hz
    mapper = ClockMapper()
    mapped, ready = run(mapper, dataclasses.replace(stream, host_ns=host_ns))
    assert mapper.stats()["jumps"] == 0
    err = error_ms(mapped, stream)[ready]
    assert np.mean(np.abs(err) <= 0.5) >= 0.99


def test_map_matches_update_and_needs_a_sample() -> None:
    mapper = ClockMapper(name="ft")
    with pytest.raises(RuntimeError, match="before the first update"):
        mapper.map(1.0)
    stream = make_stream(seed=9, rate_hz=100.0, drift_ppm=0.0, duration_s=5.0)
    run(mapper, stream)
    t_ns = mapper.map(float(stream.device_s[-1]) + 0.1)
    assert abs(t_ns - (stream.capture_ns[-1] + 100_000_000 + 500_000)) < 200_000
    mapper.reset()
    assert not mapper.ready
    assert mapper.stats()["resets"] == 1
    with pytest.raises(RuntimeError):
        mapper.map(1.0)
    with pytest.raises(ValueError, match="finite"):
        mapper.update(math.nan, 0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window_s": 0.0}, "window_s"),
        ({"window_s": math.inf}, "window_s"),
        ({"segment_s": -0.1}, "segment_s"),
        ({"segment_s": 10.0}, "segment_s"),
        ({"min_segments": 0}, "min_segments"),
        ({"min_segments": 2.5}, "min_segments"),
        ({"jump_threshold_s": math.nan}, "jump_threshold_s"),
        ({"latency_s": -1e-3}, "latency_s"),
        ({"shift_persist_s": -1.0}, "shift_persist_s"),
        ({"max_drift_ppm": 0.0}, "max_drift_ppm"),
    ],
)
def test_config_validation_names_field_value_and_range(kwargs: dict, field: str) -> None:
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError) as info:
        ClockMapperConfig(**kwargs)
    message = str(info.value)
    assert field in message
    assert repr(value) in message
    assert any(word in message for word in ("range", "<", "integer"))


def test_fit_lower_envelope() -> None:
    xs = [0.0, 1.0, 2.0, 3.0, 4.0]
    line = [2.0 + 1e-4 * x for x in xs]
    assert fit_lower_envelope(xs, line, max_slope=1e-3) == pytest.approx((2.0, 1e-4))
    noisy = [y + e for y, e in zip(line, [0.0, 5e-3, 1e-3, 0.0, 7e-3], strict=True)]
    intercept, slope = fit_lower_envelope(xs, noisy, max_slope=1e-3)
    assert (intercept, slope) == pytest.approx((2.0, 1e-4))  # through the floor points
    steep = [0.0, 1.0, 2.0, 3.0, 4.0]
    intercept, slope = fit_lower_envelope(xs, steep, max_slope=1e-3)
    assert slope == 1e-3  # clamped
    assert all(y >= intercept + slope * x for x, y in zip(xs, steep, strict=True))
    assert fit_lower_envelope([5.0], [1.0], max_slope=1.0, default_slope=0.5) == (-1.5, 0.5)


@settings(max_examples=60, deadline=None)
@given(
    drift_ppm=st.floats(-200.0, 200.0),
    rate_hz=st.floats(20.0, 1000.0),
    jitter_s=st.lists(st.floats(0.0, 0.002), min_size=1, max_size=300),
    stalls=st.dictionaries(st.integers(0, 299), st.floats(0.0, 0.3), max_size=10),
    latency_s=st.floats(0.0, 0.01),
    device0_s=st.floats(0.0, 1e7),
)
def test_property_never_after_receive(
    drift_ppm: float,
    rate_hz: float,
    jitter_s: list[float],
    stalls: dict[int, float],
    latency_s: float,
    device0_s: float,
) -> None:
    """Whatever the jitter (stalls, shifts, spurious jumps), causality is never violated."""
    config = ClockMapperConfig(latency_s=latency_s, segment_s=0.02, window_s=0.2)
    mapper = ClockMapper(config)
    latency_ns = round(latency_s * 1e9)
    for k, jitter in enumerate(jitter_s):
        d = device0_s + k / rate_hz
        host_s = (1 + drift_ppm * 1e-6) * d + OFFSET_S + jitter + stalls.get(k, 0.0)
        host_ns = round(host_s * 1e9)
        assert mapper.update(d, host_ns) <= host_ns - latency_ns


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    drift_ppm=st.floats(-200.0, 200.0),
    rate_hz=st.sampled_from([30.0, 100.0, 500.0]),
    min_latency_s=st.floats(0.0, 0.005),
    scale_s=st.floats(1e-5, 3e-3),
    stall_prob=st.floats(0.0, 0.01),
)
def test_property_bounded_error_without_jumps(
    seed: int,
    drift_ppm: float,
    rate_hz: float,
    min_latency_s: float,
    scale_s: float,
    stall_prob: float,
) -> None:
    """Any drift, exponential jitter, up to 1% stalls of 20-80 ms: no false jump, error < 1 ms."""
    rng = np.random.default_rng(seed)
    n = int(12.0 * rate_hz)
    device_s = 50.0 + np.arange(n) / rate_hz
    capture_s = (1 + drift_ppm * 1e-6) * device_s + OFFSET_S
    latency = min_latency_s + rng.exponential(scale_s, n)
    stalled = rng.random(n) < stall_prob
    latency[stalled] += rng.uniform(0.02, 0.08, stalled.sum())
    host_ns = np.maximum.accumulate(to_ns(capture_s + latency))
    stream = Stream(device_s, to_ns(capture_s), host_ns)
    mapper = ClockMapper()
    mapped, ready = run(mapper, stream)
    assert mapper.stats()["jumps"] == 0
    err_ms = (mapped - stream.capture_ns - round(min_latency_s * 1e9)) / 1e6
    assert np.all(np.abs(err_ms[ready]) < 1.0)
