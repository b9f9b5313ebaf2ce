"""DriverProcess: the child owns the device loop and the ring; the parent reads both."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from demuse_ros.drivers.process import EXIT_RESTART, Driver, DriverProcess, describe_exit
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


class ExitingDriver(CountingDriver):
    """Writes ``n`` like CountingDriver, then exits with ``code`` after ``after`` records."""

    def run(self, stop, ready) -> None:
        rate_hz, after, code = self.config
        loop = PeriodicLoop(rate_hz)
        for _ in range(after):
            loop.wait()
            t = now_ns()
            self.ring.put(t, t, n=self.ring.count)
            self.count("records")
            ready.set()
        os._exit(code)


def _wait(condition, timeout_s: float = 20.0) -> bool:
    loop = PeriodicLoop(20.0)
    for _ in range(int(timeout_s * 20)):
        if condition():
            return True
        loop.wait()
    return bool(condition())


def test_supervisor_restarts_a_dead_driver_which_continues_the_ring() -> None:
    proc = DriverProcess(ExitingDriver, (200.0, 5, EXIT_RESTART), name="exiting", restart_min_s=0.0)
    with proc:
        assert _wait(lambda: proc.restarts >= 2), proc.stats()
        assert _wait(lambda: proc.ring.count >= 15)
        st = proc.stats()
        assert st["process_restarts"] >= 2 and st["process_last_exit_code"] == EXIT_RESTART
        # One ring across incarnations: records 0..count-1 in order, stamps non-decreasing.
        ring = proc.ring
        first = max(0, ring.count - ring.capacity + 2)
        rows = [ring.read(i) for i in range(first, first + 10)]
        assert [r["n"] for r in rows] == list(range(first, first + 10))
        stamps = [r["t_capture_ns"] for r in rows]
        assert stamps == sorted(stamps)
    assert proc.ring is None and not proc.alive


def test_supervisor_restarts_after_a_crash_and_send_says_why_meanwhile() -> None:
    proc = DriverProcess(CountingDriver, 100.0, name="killed", restart_min_s=1.0)
    with proc:
        before = proc.ring.count
        os.kill(proc.pid, signal.SIGKILL)
        assert _wait(lambda: not proc.alive and proc.last_exit_code is not None, 5.0)
        with pytest.raises(RuntimeError, match=r"being restarted.*SIGKILL"):
            proc.send(("noop",))
        assert _wait(lambda: proc.alive and proc.ring.count > before + 5), proc.stats()
        assert proc.restarts == 1 and describe_exit(proc.last_exit_code) == "killed by SIGKILL"


def test_without_supervision_a_dead_driver_stays_dead() -> None:
    with DriverProcess(ExitingDriver, (200.0, 3, 0), name="once") as proc:
        assert _wait(lambda: not proc.alive, 5.0)
        loop = PeriodicLoop(10.0)
        for _ in range(3):
            loop.wait()
        assert not proc.alive and proc.restarts == 0
        with pytest.raises(RuntimeError, match="not running"):
            proc.send(("noop",))


def test_restart_backoff_is_validated() -> None:
    with pytest.raises(ValueError, match="restart_min_s"):
        DriverProcess(CountingDriver, 1.0, name="x", restart_min_s=2.0, restart_max_s=1.0)
