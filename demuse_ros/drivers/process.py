"""One process per device: the driver owns its SDK handle and writes a shared-memory ring.

The pattern of diffusion_policy's ``SingleRealsense``/``RTDEInterpolationController``:
:class:`DriverProcess` spawns a child that builds the :class:`Driver` *inside*
the child (SDK handles are created where they are used), creates the ring the
driver writes (the child is its only writer), and runs ``driver.run(stop)``.
The parent attaches a reader to the ring and reads the driver's counters from a
small shared array, with no pickling on the hot path and no GIL shared with the
policy.

A driver declares its record schema, its ring capacity and the names of its
counters; it calls ``self.count(name)`` / ``self.set(name, value)`` as it runs.
Commands from the parent (:meth:`DriverProcess.send`) arrive on
``self.commands``, a queue the driver drains without blocking each cycle.
Cleanup belongs in ``run``'s ``finally``.
"""

from __future__ import annotations

import abc
import multiprocessing as mp
import os
import secrets
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
    ring = RingBuffer.create(
        driver_cls.schema(config), driver_cls.capacity(config), shared=True, name=ring_name
    )
    try:
        created.set()
        driver_cls(config, ring, stats, commands).run(stop, ready)
    except BaseException as exc:
        errors.put(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        ring.close()


class DriverProcess:
    """Runs a :class:`Driver` in a spawned child; the parent holds a reader of its ring.

    Args:
        driver_cls: the driver class (constructed in the child).
        config: its config (picklable).
        name: a short name for the process and the ring.
    """

    def __init__(self, driver_cls: type[Driver], config: Any, *, name: str) -> None:
        self.driver_cls, self.config, self.name = driver_cls, config, name
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
        self.ring: RingBuffer | None = None
        self.ring_name = f"demuse_{name}_{os.getpid()}_{secrets.token_hex(3)}"

    def start(self, *, timeout_s: float = 30.0, wait_ready: bool = True) -> DriverProcess:
        """Start the child; wait until its ring exists (and, by default, data flows)."""
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
        try:
            if not self._created.wait(timeout_s):
                raise RuntimeError(
                    f"{self.name} driver did not start within {timeout_s} s{self._error_suffix()}"
                )
            self.ring = RingBuffer.attach(self.ring_name, self.driver_cls.schema(self.config))
            if wait_ready:
                self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
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
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def stats(self) -> dict[str, float]:
        """The driver's counters now (a snapshot of the shared array)."""
        values = self._stats[:]
        return dict(zip(self.driver_cls.STATS, values, strict=False))

    def send(self, command: tuple) -> None:
        """Queue a command tuple for the driver (it runs them at its next cycle)."""
        if not self.alive:
            raise RuntimeError(f"{self.name} driver is not running")
        self._commands.put(command)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the driver to stop, wait for its cleanup, detach the ring."""
        self._stop.set()
        self._commands.cancel_join_thread()  # unsent commands must not block our exit
        try:
            if self._proc is not None and self._proc.pid is not None:
                self._proc.join(timeout_s)
                if self._proc.is_alive():
                    self._proc.terminate()
                    self._proc.join(5.0)
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
