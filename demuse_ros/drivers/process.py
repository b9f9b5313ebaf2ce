"""One process per device: the driver owns its SDK handle and writes a shared-memory ring.

The pattern of diffusion_policy's ``SingleRealsense``/``RTDEInterpolationController``:
:class:`DriverProcess` spawns a child that builds the :class:`Driver` *inside*
the child (SDK handles are created where they are used), attaches to the ring
as its one writer, and runs ``driver.run(stop)``. The parent owns the ring and
a small shared array of the driver's counters and reads both, with no pickling
on the hot path and no GIL shared with the policy.

Supervision (``restart_min_s`` set): when the child dies without being asked to
stop -- a crash inside a vendor SDK, or a driver that exits with
:data:`EXIT_RESTART` because its device connection is gone -- the parent starts
a fresh child after a backoff that doubles up to ``restart_max_s``. The new
child attaches to the same ring and continues its record count; its counters
keep accumulating. Nothing of the dead child's state survives (for the arm:
no plan, so no motion toward a stale target). ``stats()`` adds
``process_restarts`` and ``process_last_exit_code``.

A driver declares its record schema, its ring capacity and the names of its
counters; it calls ``self.count(name)`` / ``self.set(name, value)`` as it runs.
Commands from the parent (:meth:`DriverProcess.send`) arrive on
``self.commands``, a queue the driver drains without blocking each cycle.
Cleanup belongs in ``run``'s ``finally``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import secrets
import signal
import threading
import time
from typing import Any, ClassVar

from demuse_ros.transport.ring_buffer import RingBuffer
from demuse_ros.transport.schema import RecordSchema


class Driver(abc.ABC):
    """A device loop that runs inside its own process (see module docstring)."""

    #: Names of the counters and gauges the parent can read (floats).
    STATS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, ring: RingBuffer, stats: Any, commands: Any = None) -> None:
        self.config = config
        self.ring = ring
        self.commands = commands  # queue of command tuples from the parent, or None
        self._stats = stats
        self._index = {name: i for i, name in enumerate(self.STATS)}

    @classmethod
    @abc.abstractmethod
    def schema(cls, config: Any) -> RecordSchema:
        """The records this driver writes."""

    @classmethod
    @abc.abstractmethod
    def capacity(cls, config: Any) -> int:
        """Ring slots (size from rate × read budget × margin: ``transport.capacity_for``)."""

    @abc.abstractmethod
    def run(self, stop: Any, ready: Any) -> None:
        """Connect, set ``ready`` once data flows, loop until ``stop``; clean up in ``finally``."""

    def count(self, name: str, n: float = 1.0) -> None:
        self._stats[self._index[name]] += n

    def set(self, name: str, value: float) -> None:
        self._stats[self._index[name]] = value


#: Exit status a driver uses to ask its supervisor for a fresh process (EX_TEMPFAIL).
EXIT_RESTART = 75


def _child(
    driver_cls: type[Driver],
    config: Any,
    ring_name: str,
    stats: Any,
    stop: Any,
    ready: Any,
    created: Any,
    errors: Any,
    commands: Any,
) -> None:
    # The parent coordinates shutdown (arm first); a terminal's Ctrl-C reaches the
    # whole process group, so the child leaves SIGINT to the parent. SIGTERM (e.g.
    # systemd stopping the whole group) and the parent's death stop it cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(
            target=lambda: (parent.join(), stop.set()), name="parent-watch", daemon=True
        ).start()
    ring = RingBuffer.attach(ring_name, driver_cls.schema(config), writer=True)
    try:
        created.set()
        driver_cls(config, ring, stats, commands).run(stop, ready)
    except BaseException as exc:
        errors.put(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        ring.close()


def describe_exit(code: int | None) -> str:
    """A process exit status in words (negative: killed by that signal)."""
    if code is None:
        return "still running"
    if code == EXIT_RESTART:
        return f"exit {code} (the driver asked for a restart: device connection lost)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class DriverProcess:
    """Runs a :class:`Driver` in a spawned child; the parent owns and reads its ring.

    Args:
        driver_cls: the driver class (constructed in the child).
        config: its config (picklable).
        name: a short name for the process and the ring.
        restart_min_s: supervise the child: restart it this long after it dies
            unasked (None: no restarts; a dead child stays dead).
        restart_max_s: the restart backoff doubles up to this.
    """

    def __init__(
        self,
        driver_cls: type[Driver],
        config: Any,
        *,
        name: str,
        restart_min_s: float | None = None,
        restart_max_s: float = 5.0,
    ) -> None:
        if restart_min_s is not None and not 0.0 <= restart_min_s <= restart_max_s:
            raise ValueError(
                f"restart backoff must satisfy 0 <= restart_min_s <= restart_max_s, "
                f"got {restart_min_s} and {restart_max_s}"
            )
        self.driver_cls, self.config, self.name = driver_cls, config, name
        self.restart_min_s, self.restart_max_s = restart_min_s, restart_max_s
        self._ctx = mp.get_context("spawn")
        # One writer (the child): no lock needed on the counters.
        self._stats = self._ctx.Array("d", max(len(driver_cls.STATS), 1), lock=False)
        self._stop, self._ready, self._created = (
            self._ctx.Event(),
            self._ctx.Event(),
            self._ctx.Event(),
        )
        self._errors = self._ctx.Queue()
        self._commands = self._ctx.Queue()
        self._proc: mp.process.BaseProcess | None = None
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_error = ""
        self.ring: RingBuffer | None = None
        self.ring_name = f"demuse_{name}_{os.getpid()}_{secrets.token_hex(3)}"

    def start(self, *, timeout_s: float = 30.0, wait_ready: bool = True) -> DriverProcess:
        """Start the child; wait until it runs (and, by default, until data flows)."""
        self.ring = RingBuffer.create(
            self.driver_cls.schema(self.config),
            self.driver_cls.capacity(self.config),
            shared=True,
            name=self.ring_name,
            writer=False,
        )
        self._closing.clear()
        try:
            self._spawn()
            if not self._created.wait(timeout_s):
                raise RuntimeError(
                    f"{self.name} driver did not start within {timeout_s} s{self._error_suffix()}"
                )
            if wait_ready:
                self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        if self.restart_min_s is not None:
            # stop() writes to this pipe to wake the supervisor out of its wait.
            self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"supervise-{self.name}", daemon=True
            )
            self._supervisor.start()
        return self

    def _spawn(self) -> None:
        self._created.clear()
        self._proc = self._ctx.Process(
            target=_child,
            name=f"driver-{self.name}",
            args=(
                self.driver_cls,
                self.config,
                self.ring_name,
                self._stats,
                self._stop,
                self._ready,
                self._created,
                self._errors,
                self._commands,
            ),
        )
        self._proc.start()

    def _supervise(self) -> None:
        """Restart the child whenever it dies unasked (runs in a parent thread)."""
        backoff = self.restart_min_s or 0.0
        log = logging.getLogger(f"demuse.driver.{self.name}")
        while not self._closing.is_set():
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            mp.connection.wait([proc.sentinel, self._wake_r], timeout=None)
            if self._closing.is_set() or self._stop.is_set():
                return
            proc.join()
            self.last_exit_code = proc.exitcode
            self.last_error = self._drain_errors()
            if time.monotonic() - started > 10.0 * max(backoff, 1.0):
                backoff = self.restart_min_s or 0.0  # it ran a while: a fresh incident
            log.warning(
                "%s driver %s%s; restarting in %.2f s",
                self.name,
                describe_exit(proc.exitcode),
                f" ({self.last_error})" if self.last_error else "",
                backoff,
            )
            if self._closing.wait(backoff):
                return
            self.restarts += 1
            self._spawn()
            backoff = min(max(backoff, 0.05) * 2.0, self.restart_max_s)

    def _drain_errors(self) -> str:
        last = ""
        with contextlib.suppress(Exception):
            while True:
                last = self._errors.get_nowait()
        return last

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for data, but give up at once if the child died (and say why)."""
        waited = 0.0
        while not self._ready.wait(0.05):
            waited += 0.05
            if not self.alive:
                raise RuntimeError(
                    f"{self.name} driver exited before producing data{self._error_suffix()}"
                )
            if waited >= timeout_s:
                raise RuntimeError(
                    f"{self.name} driver produced no data within {timeout_s} s"
                    f"{self._error_suffix()}"
                )

    def is_ready(self) -> bool:
        return self._ready.is_set() and self.alive

    @property
    def pid(self) -> int | None:
        """The current child's process id (None when none runs)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.is_alive()

    def stats(self) -> dict[str, float]:
        """The driver's counters now (a snapshot of the shared array), plus supervision."""
        values = self._stats[:]
        out = dict(zip(self.driver_cls.STATS, values, strict=False))
        out["process_restarts"] = float(self.restarts)
        code = self.last_exit_code
        out["process_last_exit_code"] = float(code) if code is not None else math.nan
        return out

    def send(self, command: tuple) -> None:
        """Queue a command tuple for the driver (it runs them at its next cycle)."""
        if not self.alive:
            why = (
                f" (last {describe_exit(self.last_exit_code)})"
                if self.restarts or (self.last_exit_code is not None)
                else ""
            )
            restarting = " and is being restarted" if self._supervisor is not None else ""
            raise RuntimeError(f"{self.name} driver is not running{restarting}{why}")
        self._commands.put(command)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the driver to stop, wait for its cleanup, release the ring."""
        self._closing.set()
        self._stop.set()
        if self._supervisor is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(None)
            self._supervisor.join(timeout_s)
            self._supervisor = None
            self._wake_r.close()
            self._wake_w.close()
        self._commands.cancel_join_thread()  # unsent commands must not block our exit
        try:
            if self._proc is not None and self._proc.pid is not None:
                self._proc.join(timeout_s)
                if self._proc.is_alive():  # stuck in cleanup: SIGTERM (= stop), then SIGKILL
                    logging.getLogger(f"demuse.driver.{self.name}").warning(
                        "%s driver did not stop within %.1f s; terminating it", self.name, timeout_s
                    )
                    self._proc.terminate()
                    self._proc.join(2.0)
                if self._proc.is_alive():
                    self._proc.kill()
                    self._proc.join(2.0)
                self.last_exit_code = self._proc.exitcode
        finally:
            self._proc = None
            if self.ring is not None:
                self.ring.close()
                self.ring = None

    def _error_suffix(self) -> str:
        try:
            return f": {self._errors.get(timeout=1.0)}"
        except Exception:
            return ""

    def __enter__(self) -> DriverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
