"""Modbus TCP front end of the emulated RG2-FT compute box (pymodbus 3.16 server).

:class:`RG2FTModbusServer` serves an :class:`~demuse_ros.twin.rg2ft.RG2FTRegisters`
bank to real Modbus clients on loopback. Units 65 and 63 are pymodbus
``SimDevice`` s with one *shared* register block each, so FC03 and FC04 read the
same memory and FC06/FC16 write into it. Any other unit id is answered with
exception 0x0B (gateway target failed to respond) by a catch-all id-0 device;
coil/discrete-input function codes with ILLEGAL_FUNCTION.

The bank stays the single source of truth: the devices' ``action`` hook runs on
every client access (in the server's event-loop thread), copies the requested
words out of the bank into the server's memory before a read is answered, and
forwards a write to the bank (which may refuse it with a Modbus exception). The
physics thread never touches the server: it only calls ``bank.apply``/
``bank.update``, whose lock is held for a list copy. So there is no per-step
sync call and no ``async_setValues`` round trip.

Wiring::

    bank = RG2FTRegisters()
    with RG2FTModbusServer(bank, ModbusServerConfig(port=5020)) as server:
        while running:                      # the twin's step loop
            bank.apply(plant)
            plant.step(dt)
            bank.update(plant.gripper_state())

Fault injection (thread-safe, callable from tests or the fault scheduler):

* :meth:`~RG2FTModbusServer.inject_exception` — the next N data requests are
  answered with the given exception code (returned by the action hook);
* :meth:`~RG2FTModbusServer.inject_garbage` — the next N replies are mangled on
  the wire (the server's ``trace_packet`` hook rewrites the outgoing bytes):
  ``"tid"`` changes the transaction id (the client skips the frame, times out
  and retries), ``"truncated"`` sends half a frame (same), ``"function"``
  sends an undecodable function code (the client's call raises
  ``ModbusIOException`` at once);
* :meth:`~RG2FTModbusServer.set_reply_delay` — every data request is answered
  that much later (an ``asyncio.sleep`` in the action hook). A pymodbus client
  re-sends with the *same* transaction id, so with ``retries`` > 0 a delay
  shorter than ``timeout × (retries + 1)`` still succeeds on the late reply;
* :meth:`~RG2FTModbusServer.drop_connections` — closes every client socket; the
  listener stays up, so clients reconnect.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.twin.rg2ft import RegisterAccessError, RG2FTRegisters

if TYPE_CHECKING:  # pymodbus (the "sim" extra) is imported when a server is built or starts
    from pymodbus.constants import ExcCodes
    from pymodbus.server import ModbusTcpServer


def _exc(code: int) -> ExcCodes:
    from pymodbus.constants import ExcCodes

    return ExcCodes(code)


GarbageKind = Literal["tid", "truncated", "function"]
_BIT_FUNCTION_CODES = frozenset({1, 2, 5, 15})  # coils/discrete inputs: the RG2-FT has none


@dataclass(frozen=True)
class ModbusServerConfig:
    """Where the emulated compute box listens."""

    host: str = param("127.0.0.1", doc="Address to bind (loopback by default).")
    port: int = param(
        5020, doc="TCP port; 0 picks a free one (see RG2FTModbusServer.port).", range=(0, 65535)
    )
    start_timeout_s: float = param(
        5.0,
        doc="How long start() and stop() wait for the server thread.",
        unit="s",
        range=(0.1, 60.0),
    )

    def __post_init__(self) -> None:
        validate_fields(self)


class RG2FTModbusServer:
    """pymodbus TCP server for an RG2-FT register bank, on a background thread.

    Restartable: :meth:`stop` then :meth:`start` binds the same port again (the
    port actually bound, when the config asked for 0).
    """

    def __init__(self, bank: RG2FTRegisters, config: ModbusServerConfig | None = None) -> None:
        self.bank = bank
        self.config = config or ModbusServerConfig()
        self._port = self.config.port
        self._fault_lock = threading.Lock()
        self._exc_left = 0
        self._exc_code = _exc(4)  # DEVICE_FAILURE
        self._garbage_left = 0
        self._garbage_kind: GarbageKind = "tid"
        self._delay_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | None = None
        self.requests = 0  # data requests seen by the action hook

    # ------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The TCP port (the bound one once started)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> RG2FTModbusServer:
        """Bind and serve in a daemon thread; returns once the port listens."""
        if self.running:
            raise RuntimeError("RG2FTModbusServer is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run, args=(loop, ready, failure), name="rg2ft-modbus", daemon=True
        )
        self._loop, self._thread = loop, thread
        thread.start()
        if not ready.wait(self.config.start_timeout_s):
            self.stop()
            raise TimeoutError(f"Modbus server on port {self._port} did not start")
        if failure:
            thread.join(self.config.start_timeout_s)
            self._loop = self._thread = None
            raise failure[0]
        return self

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event, failure: list) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()
        finally:
            try:
                if self._server is not None:
                    loop.run_until_complete(self._server.shutdown())
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                self._server = None
                loop.close()

    async def _listen(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        gripper, box = self.bank.unit_ids
        cfg = self.bank.config
        devices = [
            SimDevice(
                id=unit,
                simdata=[SimData(address=0, count=count, values=0, datatype=DataType.REGISTERS)],
                action=functools.partial(self._action, unit),
            )
            for unit, count in ((gripper, cfg.register_count), (box, cfg.box_register_count))
        ]
        # id 0 catches every other unit: a gateway answers "target device failed to
        # respond" (0x0B). Without it pymodbus logs a KeyError traceback and answers 4.
        devices.append(
            SimDevice(
                id=0,
                simdata=[SimData(address=0, count=65536, datatype=DataType.REGISTERS)],
                action=self._unknown_unit,
            )
        )
        server = ModbusTcpServer(
            devices, address=(self.config.host, self._port), trace_packet=self._trace_packet
        )
        await server.serve_forever(background=True)  # raises if the port cannot be bound
        self._server = server
        sockets = getattr(server.transport, "sockets", None) or ()
        if sockets:
            self._port = sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listener and every connection; safe to call twice."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # the loop closed meanwhile
            pass
        thread.join(self.config.start_timeout_s)

    def __enter__(self) -> RG2FTModbusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ fault hooks
    def inject_exception(self, code: int = 4, count: int = 1) -> None:
        """Answer the next ``count`` data requests with Modbus exception ``code``."""
        exc = _exc(code)
        with self._fault_lock:
            self._exc_code, self._exc_left = exc, int(count)

    def inject_garbage(self, count: int = 1, kind: GarbageKind = "tid") -> None:
        """Mangle the next ``count`` replies on the wire (see the module docstring)."""
        if kind not in ("tid", "truncated", "function"):
            raise ValueError(f"unknown garbage kind {kind!r}")
        with self._fault_lock:
            self._garbage_kind, self._garbage_left = kind, int(count)

    def set_reply_delay(self, seconds: float) -> None:
        """Delay every data reply by ``seconds`` (0 restores prompt replies)."""
        if not seconds >= 0.0:
            raise ValueError(f"reply delay must be >= 0, got {seconds!r}")
        with self._fault_lock:
            self._delay_s = float(seconds)

    def clear_faults(self) -> None:
        """Cancel pending injected exceptions and garbage, and the reply delay."""
        with self._fault_lock:
            self._exc_left = self._garbage_left = 0
            self._delay_s = 0.0

    def drop_connections(self) -> int:
        """Close every client connection now; returns how many were closed."""
        loop = self._loop
        if loop is None or not self.running:
            return 0

        async def drop() -> int:
            server = self._server
            if server is None:
                return 0
            conns = list(server.active_connections.values())
            for conn in conns:
                conn.close()
            return len(conns)

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(self.config.start_timeout_s)

    @property
    def connection_count(self) -> int:
        """Open client connections (approximate: read without the loop's cooperation)."""
        server = self._server
        return len(server.active_connections) if server is not None else 0

    # ------------------------------------------------------------ pymodbus hooks
    async def _action(
        self,
        unit: int,
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice action: the bank answers every access (runs in the server thread)."""
        self.requests += 1
        with self._fault_lock:
            delay = self._delay_s
            injected = None
            if self._exc_left > 0:
                self._exc_left -= 1
                injected = self._exc_code
        if delay > 0.0:
            await asyncio.sleep(delay)
        if injected is not None:
            return injected
        if func_code in _BIT_FUNCTION_CODES:
            return _exc(1)  # ILLEGAL_FUNCTION
        offset = address - start_address
        try:
            if set_values is None:
                registers[offset : offset + count] = self.bank.read(unit, address, count)
            else:
                self.bank.write(unit, address, [int(v) for v in set_values])
        except RegisterAccessError as err:
            return _exc(err.code)
        return None

    async def _unknown_unit(self, *_args: Any) -> ExcCodes:
        return _exc(0x0B)  # GATEWAY_NO_RESPONSE

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Server-side packet hook: rewrites an outgoing reply while garbage is pending."""
        if not sending or len(data) < 8:
            return data
        with self._fault_lock:
            if self._garbage_left <= 0:
                return data
            self._garbage_left -= 1
            kind = self._garbage_kind
        if kind == "tid":
            tid = (int.from_bytes(data[0:2], "big") + 0x5A5A) & 0xFFFF or 1
            return tid.to_bytes(2, "big") + data[2:]
        if kind == "truncated":
            return data[: max(1, len(data) // 2)]
        return data[:7] + bytes([0x7F]) + data[8:]  # 0x7F: no such function code


__all__ = ["GarbageKind", "ModbusServerConfig", "RG2FTModbusServer"]
