"""Policy-sized CPU load in other processes, for timing benchmarks under load.

The policy on this runtime denoises one action chunk per control tick: on the
``cpu`` preset about 60 ms of all cores every 100 ms (DESIGN §8). ``CpuLoad``
stands in for it with ``workers`` single-threaded processes that each multiply
float32 matrices for ``duty × period_s`` of every ``period_s`` (on the same
deadline grid), then sleep. Each worker reports the fraction of wall time it
was busy, so a benchmark can print the load it actually ran under.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import numpy as np


def _burn(stop: Any, duty: float, period_s: float, busy_ns: Any, index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    a = np.random.default_rng(index).standard_normal((192, 192), dtype=np.float32)
    b = a.T.copy()
    period_ns = int(period_s * 1e9)
    burn_ns = int(duty * period_ns)
    t0 = time.monotonic_ns()
    k = 0
    while not stop.is_set():
        begin = time.monotonic_ns()
        now = begin
        while now - begin < burn_ns:
            a = np.tanh(a @ b * 1e-2)
            now = time.monotonic_ns()
        busy_ns[index] += now - begin
        k = max(k + 1, (now - t0) // period_ns + 1)  # the next grid point, missed ones skipped
        time.sleep(max(0.0, (t0 + k * period_ns - time.monotonic_ns()) / 1e9))


class CpuLoad:
    """``workers`` processes busy ``duty`` of every ``period_s`` (see the module docstring)."""

    def __init__(self, workers: int = 2, duty: float = 0.6, period_s: float = 0.1) -> None:
        if workers < 0 or not 0.0 <= duty <= 1.0 or period_s <= 0:
            raise ValueError("need workers >= 0, 0 <= duty <= 1 and period_s > 0")
        self.workers, self.duty, self.period_s = workers, duty, period_s
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._busy = self._ctx.Array("q", max(workers, 1), lock=False)
        self._procs: list[Any] = []
        self._t0 = 0

    def start(self) -> CpuLoad:
        for i in range(self.workers):
            p = self._ctx.Process(
                target=_burn,
                args=(self._stop, self.duty, self.period_s, self._busy, i),
                name=f"cpu-load-{i}",
                daemon=True,
            )
            p.start()
            self._procs.append(p)
        self._t0 = time.monotonic_ns()
        return self

    def busy_fraction(self) -> float:
        """Mean fraction of wall time each worker has been busy since start."""
        if not self._procs:
            return 0.0
        wall = time.monotonic_ns() - self._t0
        return float(sum(self._busy[: self.workers])) / (wall * self.workers) if wall else 0.0

    def stop(self) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(5.0)
            if p.is_alive():
                p.terminate()
        self._procs = []

    def __enter__(self) -> CpuLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["CpuLoad"]
