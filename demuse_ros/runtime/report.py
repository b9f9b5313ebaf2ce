"""What a run leaves behind: a per-cycle trace, then ``run.json`` and plots at exit.

:class:`RunTrace` keeps one row per cycle in preallocated arrays (no growth on
the control path): wake time, cycle and policy durations, whether the cycle
held and why, and the measured force. :func:`write_report` writes

* ``run.json``: the runtime's, the arm's and the task's statistics;
* ``loop_period.png``: histogram of the loop period against the 100 ms target;
* ``force.png``: measured force magnitude over the run with the safety limit;
* ``blocking_latency.png``: observation → chunk ready, per inference mode run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


class RunTrace:
    """Per-cycle rows in preallocated arrays (``capacity`` cycles; later ones overwrite)."""

    FIELDS = ("t_ns", "cycle_ms", "policy_ms", "blocking_ms", "force_n", "held")

    def __init__(self, capacity: int = 36_000) -> None:
        self.capacity = capacity
        self.data = {name: np.full(capacity, np.nan) for name in self.FIELDS}
        self.n = 0

    def add(self, **row: float) -> None:
        i = self.n % self.capacity
        for name, arr in self.data.items():
            arr[i] = row.get(name, math.nan)
        self.n += 1

    def column(self, name: str) -> np.ndarray:
        """The rows in order (oldest first)."""
        arr = self.data[name]
        if self.n <= self.capacity:
            return arr[: self.n].copy()
        i = self.n % self.capacity
        return np.concatenate([arr[i:], arr[:i]])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(
    folder: str | os.PathLike[str],
    trace: RunTrace,
    result: dict[str, Any],
    *,
    rate_hz: float,
    force_limit_n: float,
) -> list[Path]:
    """Write ``run.json`` and the plots into ``folder`` (created); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "run.json"]
    paths[0].write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n")

    t = trace.column("t_ns")
    periods_ms = np.diff(t) / 1e6
    periods_ms = periods_ms[np.isfinite(periods_ms)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if periods_ms.size:
        ax.hist(periods_ms, bins=60, color="tab:blue")
    ax.axvline(1e3 / rate_hz, color="k", linestyle="--", label=f"target {1e3 / rate_hz:.0f} ms")
    ax.set(xlabel="loop period (ms)", ylabel="cycles", title="Loop period")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "loop_period.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if t.size:
        seconds = (t - t[0]) / 1e9
        ax.plot(seconds, trace.column("force_n"), lw=1, label="|F| measured")
    ax.axhline(force_limit_n, color="tab:red", linestyle="--", label=f"limit {force_limit_n} N")
    ax.set(xlabel="time (s)", ylabel="force (N)", title="Force at the fingertips")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "force.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    blocking = trace.column("blocking_ms")
    blocking = blocking[np.isfinite(blocking)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if blocking.size:
        ax.hist(blocking, bins=40, alpha=0.8, label=str(result.get("inference", "sync")))
    ax.set(xlabel="observation → chunk ready (ms)", ylabel="chunks", title="Blocking latency")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "blocking_latency.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


__all__ = ["RunTrace", "write_report"]
