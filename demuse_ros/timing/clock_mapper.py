"""Map a device clock (camera, F/T sensor, robot controller) onto host monotonic ns.

Model: ``host_receive = capture_host + latency``, ``latency >= L_min`` (jittery, with
stalls), ``capture_host = (1 + drift) * device + offset``. So ``y = host_receive_s -
device_s`` lies on or above the lower envelope ``offset + L_min + drift * device``. The
mapper keeps the minimum ``y`` of each ``segment_s`` of device time over the last
``window_s`` and fits the envelope to those minima.

The fit is the linear program of Moon, Skelly & Towsley (1999): of the lines below every
point, the highest at the mean device time (a lower-convex-hull edge). For one-sided noise
with a hard floor it beats least squares through the minima by far (30 Hz streams of the
tests: drift error ~3x, mapping error ~7x smaller), and stalls, which only raise points,
never touch it. The drift is clamped to ``±max_drift_ppm`` so that an early fit over a few
close points cannot extrapolate wildly.

A sample maps to ``device + envelope(device) - latency_s`` (capture time + L_min - known
latency), never later than ``host_receive - latency_s``: a sample below the envelope is
clamped to that bound and counted in ``stats()["rejected"]`` (a few µs-sized clamps per
minute are normal: a new latency low extends the envelope).

Clock jumps restart the fit from the offending sample and count in ``jumps``:

* ``backwards``: device time decreased by more than 1 µs (a device clock reset).
* ``forward``: the sample maps after its receive time by more than ``jump_threshold_s``.
* ``shift``: samples stay over ``jump_threshold_s`` above the envelope for 5 samples *and*
  ``shift_persist_s`` of host time (device clock slowed or stepped back by less than a
  period, or L_min grew). The host-time condition keeps stalls out: the samples a stall
  holds up arrive in one burst, however many there are.

Before ``ready``, forward and shift inconsistencies restart the fit without counting a
jump (at startup they mean the first samples came in late). Steps of the envelope below
``jump_threshold_s`` are not detected; they cause an error of the order of the step until
they leave the window.

``update()`` must be called from one thread; ``map()`` and ``stats()`` may be called from
others (the fitted model is swapped in as one immutable tuple).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from demuse_ros.config import ConfigError, param, validate_fields
from demuse_ros.timing.clock import NS_PER_S

_REORDER_TOL_S = 1e-6  # device-time decrease tolerated as timestamp rounding
_SHIFT_MIN_SAMPLES = 5  # late samples in a row needed (besides shift_persist_s) for a shift
_CLAMP_COUNT_TOL_NS = 1_000  # clamps smaller than this are float rounding, not rejections


@dataclass(frozen=True)
class ClockMapperConfig:
    """Tuning of a :class:`ClockMapper`; validated on construction (and when loaded
    from a parameter file, through the same :func:`~demuse_ros.config.param` metadata)."""

    window_s: float = param(
        10.0, doc="Device time spanned by the fit.", unit="s", range=(0.05, 3600.0)
    )
    segment_s: float = param(
        0.25,
        doc="Device time per lower-envelope bucket; < window_s.",
        unit="s",
        range=(0.001, 600.0),
    )
    min_segments: int = param(
        4,
        doc="Completed segments before the fit is used (until then: "
        "running minimum offset, drift 0).",
        range=(1, 10_000),
    )
    jump_threshold_s: float = param(
        0.05, doc="Envelope inconsistency treated as a clock jump.", unit="s", range=(1e-4, 60.0)
    )
    latency_s: float = param(
        0.0,
        doc="Known fixed capture-to-receive latency subtracted from mapped times.",
        unit="s",
        range=(0.0, 10.0),
    )
    shift_persist_s: float = param(
        0.5,
        doc="Host time samples must stay late before it counts as a clock shift.",
        unit="s",
        range=(0.0, 60.0),
    )
    max_drift_ppm: float = param(
        500.0,
        doc="Bound on the fitted drift (real crystals are within ±200 ppm).",
        unit="ppm",
        range=(1.0, 1e5),
    )

    def __post_init__(self) -> None:
        n = self.min_segments
        if isinstance(n, bool) or not isinstance(n, int):
            raise ConfigError(
                f"= {n!r} is not an integer; set a whole number >= 1", key="min_segments"
            )
        validate_fields(self)
        if self.segment_s >= self.window_s:
            raise ConfigError(
                f"= {self.segment_s!r} must be < window_s = {self.window_s!r}; "
                "shorten the segment or widen the window",
                key="segment_s",
            )


class ClockJump(NamedTuple):
    """A detected device clock jump: why, and the sample the fit restarted from."""

    reason: str  # "backwards", "forward" or "shift"
    device_s: float
    host_receive_ns: int


class _Model(NamedTuple):
    """Envelope ``y(x) = intercept_s + slope * x`` with ``x = device_s - ref_device_s``."""

    ref_device_s: float
    ref_host_ns: int
    intercept_s: float
    slope: float


def fit_lower_envelope(
    xs: list[float], ys: list[float], *, max_slope: float, default_slope: float = 0.0
) -> tuple[float, float]:
    """Fit the line below all points ``(xs, ys)`` that is highest at ``mean(xs)``.

    Args:
        xs: Strictly increasing abscissae.
        ys: Ordinates, same length (>= 1).
        max_slope: The slope is clamped to ``[-max_slope, max_slope]``.
        default_slope: Slope used when one point cannot define one.

    Returns:
        ``(intercept, slope)``; every point lies on or above the line.
    """
    n = len(xs)
    slope = default_slope
    if n >= 2:
        hull: list[int] = []  # lower convex hull (Andrew's monotone chain; xs are sorted)
        for i in range(n):
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                cross = (xs[b] - xs[a]) * (ys[i] - ys[a]) - (ys[b] - ys[a]) * (xs[i] - xs[a])
                if cross > 0:
                    break
                hull.pop()
            hull.append(i)
        x_mean = sum(xs) / n
        j = 0
        while j < len(hull) - 2 and xs[hull[j + 1]] <= x_mean:
            j += 1
        a, b = hull[j], hull[j + 1]
        slope = (ys[b] - ys[a]) / (xs[b] - xs[a])
        if xs[a] == x_mean and j > 0:  # at a vertex every slope in between is optimal
            c = hull[j - 1]
            slope = 0.5 * (slope + (ys[a] - ys[c]) / (xs[a] - xs[c]))
    slope = min(max(slope, -max_slope), max_slope)
    # Highest line of this slope below every point (exactly the hull edge when unclamped).
    intercept = min(y - slope * x for x, y in zip(xs, ys, strict=True))
    return intercept, slope


class ClockMapper:
    """Online device-to-host clock mapping by lower-envelope fitting (see module doc)."""

    def __init__(self, config: ClockMapperConfig | None = None, *, name: str = "") -> None:
        """Create a mapper; ``name`` only labels error messages."""
        self.config = ClockMapperConfig() if config is None else config
        self.name = name
        self._latency_ns = round(self.config.latency_s * NS_PER_S)
        self._persist_ns = round(self.config.shift_persist_s * NS_PER_S)
        self._max_slope = self.config.max_drift_ppm * 1e-6
        max_segments = math.ceil(self.config.window_s / self.config.segment_s) + 1
        self._minima: deque[tuple[float, float]] = deque(maxlen=max_segments)
        self._samples = 0
        self._jumps = 0
        self._resets = 0
        self._rejected = 0
        self.last_jump: ClockJump | None = None
        self._clear()

    def _clear(self) -> None:
        self._model: _Model | None = None
        self._minima.clear()
        self._completed = 0
        self._residual_s = math.nan
        self._last_x = 0.0
        self._late_count = 0
        self._late_since_ns = 0

    def _restart(self, device_s: float, host_receive_ns: int) -> None:
        self._clear()
        self._model = _Model(device_s, host_receive_ns, 0.0, 0.0)
        self._seg = 0
        self._seg_x = self._seg_y = 0.0

    @property
    def ready(self) -> bool:
        """Whether ``min_segments`` segments have completed since the last restart."""
        return self._completed >= self.config.min_segments

    def reset(self) -> None:
        """Forget the fit (counters are kept; ``resets`` counts this call)."""
        self._resets += 1
        self._clear()

    def update(self, device_s: float, host_receive_ns: int) -> int:
        """Add one sample and return its mapped capture time in host monotonic ns.

        Args:
            device_s: Device timestamp in seconds, in the device's own clock domain.
            host_receive_ns: Host monotonic time at which the sample was received.

        Returns:
            Mapped capture time, at most ``host_receive_ns - latency_s``.

        Raises:
            ValueError: If ``device_s`` is not finite.
        """
        if not math.isfinite(device_s):
            raise ValueError(
                f"ClockMapper {self.name!r}: device_s must be finite, got {device_s!r}"
            )
        self._samples += 1
        model = self._model
        if model is None:
            self._restart(device_s, host_receive_ns)
        else:
            x = device_s - model.ref_device_s
            y = (host_receive_ns - model.ref_host_ns) / NS_PER_S - x
            excess_s = y - (model.intercept_s + model.slope * x)
            threshold_s = self.config.jump_threshold_s
            if x < self._last_x - _REORDER_TOL_S:
                self._jump("backwards", device_s, host_receive_ns, count=True)
            elif excess_s < -threshold_s:
                self._jump("forward", device_s, host_receive_ns, count=self.ready)
            elif excess_s > threshold_s:
                if self._late_count == 0:
                    self._late_since_ns = host_receive_ns
                self._late_count += 1
                if (
                    self._late_count >= _SHIFT_MIN_SAMPLES
                    and host_receive_ns - self._late_since_ns >= self._persist_ns
                ):
                    self._jump("shift", device_s, host_receive_ns, count=self.ready)
            else:
                self._late_count = 0
        model = self._model
        assert model is not None  # set by _restart() above or earlier
        # A tolerated sub-µs step back counts as simultaneous, so segment x stays increasing.
        x = max(device_s - model.ref_device_s, self._last_x)
        self._add(x, (host_receive_ns - model.ref_host_ns) / NS_PER_S - x)
        mapped_ns = self._map(self._model, device_s)
        limit_ns = host_receive_ns - self._latency_ns
        if mapped_ns > limit_ns:
            if mapped_ns - limit_ns > _CLAMP_COUNT_TOL_NS:
                self._rejected += 1
            mapped_ns = limit_ns
        return mapped_ns

    def _jump(self, reason: str, device_s: float, host_receive_ns: int, *, count: bool) -> None:
        if count:
            self._jumps += 1
            self.last_jump = ClockJump(reason, device_s, host_receive_ns)
        self._resets += 1
        self._restart(device_s, host_receive_ns)

    def _add(self, x: float, y: float) -> None:
        """Fold sample ``(x, y)`` into the segment minima; refit when a segment completes."""
        self._last_x = max(self._last_x, x)
        seg = math.floor(x / self.config.segment_s)
        if seg > self._seg:
            self._minima.append((self._seg_x, self._seg_y))
            self._completed += 1
            self._seg, self._seg_x, self._seg_y = seg, x, y
            self._refit(x)
        elif y < self._seg_y:
            self._seg_x, self._seg_y = x, y
        model = self._model
        if not self.ready and model is not None and y < model.intercept_s:
            self._model = model._replace(intercept_s=y)  # running minimum, drift 0

    def _refit(self, x_now: float) -> None:
        minima = self._minima
        while minima and minima[0][0] < x_now - self.config.window_s:
            minima.popleft()
        model = self._model
        if not self.ready or not minima or model is None:
            return
        xs = [p[0] for p in minima]
        ys = [p[1] for p in minima]
        intercept, slope = fit_lower_envelope(
            xs, ys, max_slope=self._max_slope, default_slope=model.slope
        )
        residuals = [y - intercept - slope * x for x, y in zip(xs, ys, strict=True)]
        self._residual_s = math.sqrt(sum(r * r for r in residuals) / len(residuals))
        self._model = model._replace(intercept_s=intercept, slope=slope)

    def _map(self, model: _Model | None, device_s: float) -> int:
        if model is None:
            raise RuntimeError(f"ClockMapper {self.name!r}: map() called before the first update()")
        x = device_s - model.ref_device_s
        mapped_s = x + model.intercept_s + model.slope * x - self.config.latency_s
        return model.ref_host_ns + round(mapped_s * NS_PER_S)

    def map(self, device_s: float) -> int:
        """Map a device time (s) to host monotonic ns without updating the fit.

        Raises:
            RuntimeError: Before the first sample (and after :meth:`reset`).
        """
        return self._map(self._model, device_s)

    def stats(self) -> dict[str, float | int | bool]:
        """Counters and fit state.

        ``offset_s`` is mapped host time minus device time at the latest sample;
        ``residual_s`` the RMS of the segment minima above the fitted envelope (NaN until
        ready); ``rejected`` the outputs clamped to ``host_receive - latency_s``;
        ``resets`` counts every restart of the fit (jumps, warm-up restarts, ``reset()``).
        """
        model = self._model
        offset_s = math.nan
        if model is not None:
            x = self._last_x
            envelope_s = model.intercept_s + model.slope * x
            offset_s = model.ref_host_ns / NS_PER_S - model.ref_device_s + envelope_s
            offset_s -= self.config.latency_s
        return {
            "samples": self._samples,
            "jumps": self._jumps,
            "resets": self._resets,
            "offset_s": offset_s,
            "drift_ppm": model.slope * 1e6 if model is not None else 0.0,
            "residual_s": self._residual_s,
            "ready": self.ready,
            "rejected": self._rejected,
        }
