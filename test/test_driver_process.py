"""DriverProcess: the child owns the device loop and the ring; the parent reads both."""

from __future__ import annotations

import numpy as np
import pytest

from demuse_ros.drivers.process import Driver, DriverProcess
from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.loop import PeriodicLoop
from demuse_ros.transport import RecordSchema


class CountingDriver(Driver):
    """Writes its loop counter at ``config`` Hz; fails on purpose when config is negative."""

    STATS = ("records", "rate_hz")

    @classmethod
    def schema(cls, config):
        return RecordSchema({"n": ((), np.int64)}, name="counting")

    @classmethod
    def capacity(cls, config):
        return 64

    def run(self, stop, ready) -> None:
        if self.config < 0:
            raise ConnectionRefusedError("no device at this address")
        loop = PeriodicLoop(self.config)
        n = 0
        try:
            while not stop.is_set():
                loop.wait()
                t = now_ns()
                self.ring.put(t, t, n=n)
                n += 1
                self.count("records")
                if n == 3:
                    ready.set()
        finally:
            self.set("rate_hz", loop.stats().rate_hz)


def test_parent_reads_ring_and_counters() -> None:
    with DriverProcess(CountingDriver, 200.0, name="counting") as proc:
        assert proc.is_ready()
        loop = PeriodicLoop(50.0)
        for _ in range(10):
            loop.wait()
        latest = proc.ring.read_latest()
        assert latest["n"] >= 3 and proc.stats()["records"] >= latest["n"]
    assert not proc.alive and proc.ring is None


def test_driver_failure_is_reported_with_its_reason() -> None:
    with pytest.raises(RuntimeError, match="no device at this address"):
        DriverProcess(CountingDriver, -1.0, name="broken").start(timeout_s=10.0)
