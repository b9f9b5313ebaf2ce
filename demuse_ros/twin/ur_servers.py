"""TCP servers of the emulated UR controller: RTDE (30004), dashboard (29999), script (30003).

They expose a :class:`~demuse_ros.twin.ur_controller.URController` to the real
ur_rtde 1.6.5 clients on a loopback address. ur_rtde's Python API hard-codes the
ports, so run several twins on different addresses (127.0.0.1, 127.0.0.2, …; all
of 127/8 is loopback on Linux).

* **RTDE**: one reply per V/v/O/I/S/P request; per-connection input recipe tables
  (ids from 1 in the order of the 'I' requests); outputs encoded with ur_rtde's
  static type table, unknown names answered ``NOT_FOUND``; 'U' inputs accepted
  before 'S'; after the 'S' reply one output package per :meth:`URServers.publish`
  (the runner calls it after every control tick, so the stream rate is the control
  rate; a lower requested frequency is decimated). Streaming never blocks: a
  package that does not fit the socket replaces the previous unsent one (older
  packages are dropped, at most one partly sent package is held), and a small
  ``SO_SNDBUF`` bounds how many stale packages the kernel queues.
* **Dashboard**: welcome line, then one reply line per command line (see
  :meth:`URServers.dashboard_reply`).
* **Script**: everything is read and discarded; a complete
  ``def rtde_control():`` … ``\\nend\\n`` upload (any chunking, repeated uploads on
  the same connection) starts the script with the register offset parsed from it.

Fault injection for tests: :meth:`URServers.drop_connections`,
:meth:`URServers.set_reply_delay`, :meth:`URServers.pause_stream`.

**Run the twin in another process than the ur_rtde clients.** ur_rtde 1.6.5's Python
constructors (``RTDEReceiveInterface``, ``RTDEControlInterface``) hold the GIL while
they wait for the server's replies, so servers in the same interpreter deadlock
(the methods, ``DashboardClient`` and ``RTDEIOInterface`` calls release it).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from demuse_ros.config import param, validate_fields
from demuse_ros.twin.ur_controller import URController
from demuse_ros.twin.ur_rtde_protocol import (
    DATA_PACKAGE,
    GET_URCONTROL_VERSION,
    HEADER,
    INPUT_TYPES,
    OUTPUT_TYPES,
    PAUSE,
    PLAYING,
    REQUEST_PROTOCOL_VERSION,
    ROBOT_MODE_NAMES,
    SAFETY_MODE_NAMES,
    SCRIPT_HEADER,
    SETUP_INPUTS,
    SETUP_OUTPUTS,
    START,
    Recipe,
    URSnapshot,
    output_getter,
    packet,
    parse_names,
    parse_register_offset,
    version_reply,
)

log = logging.getLogger(__name__)

WELCOME = b"Connected: Universal Robots Dashboard Server\n"
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_SCRIPT_END = b"\nend\n"
_REQUESTS = frozenset(
    {REQUEST_PROTOCOL_VERSION, GET_URCONTROL_VERSION, SETUP_OUTPUTS, SETUP_INPUTS, START, PAUSE}
)


@dataclass(frozen=True)
class URServersConfig:
    """Where the emulated controller listens (port 0 picks a free port)."""

    host: str = param("127.0.0.1", doc="Bind address (a loopback address per twin).")
    rtde_port: int = param(30004, doc="RTDE port.", range=(0, 65535))
    dashboard_port: int = param(29999, doc="Dashboard server port.", range=(0, 65535))
    script_port: int = param(30003, doc="Script (realtime/secondary) port.", range=(0, 65535))
    rtde_send_buffer_bytes: int = param(
        65536,
        doc="SO_SNDBUF of RTDE client sockets, bounds the stale packages queued (0: OS default).",
        range=(0, 1 << 26),
    )
    max_script_bytes: int = param(
        4_000_000,
        doc="Script-port bytes buffered while looking for a script end.",
        range=(1024, None),
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class _Output:
    recipe: Recipe
    recipe_id: int
    getters: list
    ratio: float  # requested frequency / control rate, <= 1
    phase: float = 1.0


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    kind: str
    peer: str
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False
    output: _Output | None = None
    inputs: list[Recipe] = field(default_factory=list)
    outputs_requested: int = 0
    partial: bytes = b""  # rest of a package whose start is already on the wire
    latest: bytes = b""  # newest complete package not yet started
    sent: int = 0
    dropped: int = 0
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def reply(self, data: bytes, started: bool | None = None) -> None:
        """Blocking send of a request reply, after any partly sent stream package;
        ``started`` (for 'S'/'P') switches the stream under the same lock."""
        with self.send_lock:
            if self.partial:
                self.sock.sendall(self.partial)
                self.partial = b""
            if started is not None:
                self.started, self.latest = started, b""
            self.sock.sendall(data)

    def stream(self, pkt: bytes) -> None:
        """Non-blocking send of a stream package; an unsent older package is replaced."""
        if not self.send_lock.acquire(blocking=False):
            self.dropped += 1
            return
        try:
            if self.latest:
                self.dropped += 1
            self.latest = pkt
            while self.partial or self.latest:
                data = self.partial or self.latest
                try:
                    n = self.sock.send(data, _MSG_DONTWAIT)
                except BlockingIOError:
                    return
                if self.partial:
                    self.partial = data[n:]
                else:
                    self.latest, self.partial = b"", data[n:]
                    self.sent += 1
                if n < len(data):
                    return
        except OSError:
            self.closed = True
        finally:
            self.send_lock.release()


class URServers:
    """RTDE, dashboard and script servers of one emulated UR controller.

    Usage::

        with URServers(controller, URServersConfig(host="127.0.0.2")) as servers:
            ...  # runner thread: controller.tick(); plant.step(dt); servers.publish()

    Args:
        controller: The controller the clients drive.
        config: Address and ports.
    """

    def __init__(self, controller: URController, config: URServersConfig | None = None) -> None:
        self.controller = controller
        self.config = config or URServersConfig()
        self.program_name = "<unnamed>"
        self._listeners: dict[str, socket.socket] = {}
        self._conns: set[_Conn] = set()
        self._conns_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accept_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reply_delay_s = 0.0
        self._stream_paused_until = 0.0
        self._logged: set[str] = set()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> URServers:
        """Bind and start serving. Raises OSError if a port is taken (closes what it opened)."""
        cfg = self.config
        try:
            for kind, port in (
                ("rtde", cfg.rtde_port),
                ("dashboard", cfg.dashboard_port),
                ("script", cfg.script_port),
            ):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._listeners[kind] = sock
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((cfg.host, port))
                sock.listen(16)
                sock.setblocking(False)
        except OSError:
            self.stop()
            raise
        self._stop.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"ur-accept-{cfg.host}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Close every socket and join the server threads."""
        self._stop.set()
        try:
            if self._accept_thread is not None:  # no new connections from here on
                self._accept_thread.join(timeout=2.0)
                self._accept_thread = None
        finally:
            for sock in self._listeners.values():
                sock.close()
            self._listeners.clear()
            self.drop_connections()
            for t in self._threads:
                t.join(timeout=2.0)
            self._threads = [t for t in self._threads if t.is_alive()]

    def __enter__(self) -> URServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ports(self) -> dict[str, int]:
        """Bound ports by server kind (useful with port 0)."""
        return {k: s.getsockname()[1] for k, s in self._listeners.items() if s.fileno() >= 0}

    # -------------------------------------------------------- fault injection
    def drop_connections(self) -> None:
        """Close every client connection (the listeners stay open)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()

    def set_reply_delay(self, seconds: float) -> None:
        """Delay every request reply (RTDE handshake, dashboard lines and welcome)."""
        self._reply_delay_s = max(0.0, float(seconds))

    def pause_stream(self, seconds: float) -> None:
        """Send no RTDE output packages for ``seconds`` (wall clock) from now."""
        self._stream_paused_until = time.monotonic() + max(0.0, float(seconds))

    def rtde_connections(self) -> list[dict[str, object]]:
        """Per RTDE connection: peer, started, packages sent and dropped."""
        with self._conns_lock:
            conns = [c for c in self._conns if c.kind == "rtde"]
        return [
            {"peer": c.peer, "started": c.started, "sent": c.sent, "dropped": c.dropped}
            for c in conns
        ]

    # ---------------------------------------------------------------- stream
    def publish(self, snapshot: URSnapshot | None = None) -> None:
        """Send one output package to every started RTDE client (call after each tick)."""
        if time.monotonic() < self._stream_paused_until:
            return
        with self._conns_lock:
            conns = [c for c in self._conns if c.started and c.output and not c.closed]
        if not conns:
            return
        snap = snapshot or self.controller.snapshot()
        for conn in conns:
            out = conn.output
            if out is None:
                continue
            out.phase += out.ratio
            if out.phase < 1.0 - 1e-9:
                continue
            out.phase -= 1.0
            try:
                values = [x for get in out.getters for x in get(snap)]
                conn.stream(out.recipe.encode(out.recipe_id, values))
            except struct.error as exc:
                self._log_once(f"encode:{exc}", "UR twin: cannot encode output package: %s", exc)

    # ---------------------------------------------------------------- accept
    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            for kind, sock in self._listeners.items():
                sel.register(sock, selectors.EVENT_READ, kind)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    try:
                        client, addr = key.fileobj.accept()  # type: ignore[union-attr]
                    except OSError:
                        continue
                    self._spawn(client, key.data, f"{addr[0]}:{addr[1]}")
        except (OSError, ValueError):
            if not self._stop.is_set():
                log.exception("UR twin: accept loop failed")
        finally:
            sel.close()

    def _spawn(self, client: socket.socket, kind: str, peer: str) -> None:
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == "rtde" and self.config.rtde_send_buffer_bytes:
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.rtde_send_buffer_bytes
            )
        conn = _Conn(client, kind, peer)
        with self._conns_lock:
            self._conns.add(conn)
        target = {"rtde": self._serve_rtde, "dashboard": self._serve_dashboard}.get(
            kind, self._serve_script
        )
        t = threading.Thread(target=self._serve, args=(conn, target), daemon=True)
        t.name = f"ur-{kind}-{peer}"
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _serve(self, conn: _Conn, target) -> None:
        try:
            target(conn)
        except OSError:
            pass  # the client went away or drop_connections()/stop() closed the socket
        except Exception:
            log.exception("UR twin: %s connection %s failed", conn.kind, conn.peer)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            conn.close()

    def _delay(self) -> None:
        if self._reply_delay_s > 0.0:
            time.sleep(self._reply_delay_s)

    def _log_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args)

    # ------------------------------------------------------------------ RTDE
    def _serve_rtde(self, conn: _Conn) -> None:
        buf = bytearray()
        while not conn.closed:
            data = conn.sock.recv(65536)
            if not data:
                return
            buf += data
            while len(buf) >= HEADER.size:
                size, ptype = HEADER.unpack_from(buf)
                if size < HEADER.size:
                    log.warning("UR twin: bad RTDE packet size %d from %s", size, conn.peer)
                    return
                if len(buf) < size:
                    break
                payload = bytes(buf[HEADER.size : size])
                del buf[:size]
                self._rtde_packet(conn, ptype, payload)

    def _rtde_packet(self, conn: _Conn, ptype: int, payload: bytes) -> None:
        if ptype == DATA_PACKAGE:
            rid = payload[0] if payload else 0
            recipe = conn.inputs[rid - 1] if 0 < rid <= len(conn.inputs) else None
            if recipe is None or not recipe.valid or len(payload) != recipe.struct.size:
                self._log_once(f"in:{rid}", "UR twin: ignoring input package, recipe %d", rid)
                return
            self.controller.write_inputs(recipe.decode(payload))
            return
        if ptype not in _REQUESTS:
            return  # 'M' from the client, or unknown: no reply
        self._delay()
        if ptype == REQUEST_PROTOCOL_VERSION:
            ok = len(payload) == 2 and struct.unpack(">H", payload)[0] == 2
            conn.reply(packet(ptype, bytes([int(ok)])))
        elif ptype == GET_URCONTROL_VERSION:
            conn.reply(version_reply(self.controller.personality.controller_version))
        elif ptype == SETUP_OUTPUTS:
            freq = struct.unpack(">d", payload[:8])[0] if len(payload) >= 8 else 0.0
            recipe = Recipe(parse_names(payload[8:]), OUTPUT_TYPES)
            conn.outputs_requested += 1
            rid = conn.outputs_requested
            rate = self.controller.personality.control_rate_hz
            ratio = min(1.0, freq / rate) if freq > 0 else 1.0
            getters = [output_getter(n) for n in recipe.names]
            conn.output = _Output(recipe, rid, getters, ratio) if recipe.valid else None
            conn.reply(packet(ptype, recipe.reply(rid)))
        elif ptype == SETUP_INPUTS:
            recipe = Recipe(parse_names(payload), INPUT_TYPES)
            conn.inputs.append(recipe)
            conn.reply(packet(ptype, recipe.reply(len(conn.inputs))))
        else:  # START / PAUSE: the reply goes out before (after) any data package
            conn.reply(packet(ptype, b"\x01"), started=ptype == START)

    # ------------------------------------------------------------- dashboard
    def _serve_dashboard(self, conn: _Conn) -> None:
        self._delay()
        conn.sock.sendall(WELCOME)
        buf = b""
        while not conn.closed:
            data = conn.sock.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                reply, close = self.dashboard_reply(line.decode("utf-8", "replace"))
                self._delay()
                conn.sock.sendall(reply.encode() + b"\n")
                if close:
                    return

    def dashboard_reply(self, command: str) -> tuple[str, bool]:
        """Reply line for one dashboard command, and whether to close the connection."""
        ctrl = self.controller
        cmd = command.strip()
        low = cmd.lower()
        running = ctrl.runtime_state == PLAYING
        state = {1: "STOPPED", 2: "PLAYING", 4: "PAUSED"}.get(ctrl.runtime_state, "STOPPED")
        fixed = {
            "polyscopeversion": ctrl.personality.polyscope_version,
            "get serial number": ctrl.config.serial_number,
            "get robot model": ctrl.kin.model.name.rstrip("e"),
            "is in remote control": "true" if ctrl.config.remote_control else "false",
            "robotmode": f"Robotmode: {ROBOT_MODE_NAMES.get(ctrl.robot_mode, 'UNKNOWN')}",
            "safetymode": f"Safetymode: {SAFETY_MODE_NAMES.get(ctrl.safety_mode, 'UNDEFINED')}",
            "safetystatus": f"Safetystatus: {SAFETY_MODE_NAMES.get(ctrl.safety_mode, 'UNDEFINED')}",
            "programstate": f"{state} {self.program_name}",
            "running": f"Program running: {'true' if running else 'false'}",
            "get loaded program": f"Loaded program: {self.program_name}",
            "isprogramsaved": f"true {self.program_name}",
            "close popup": "closing popup",
            "close safety popup": "closing safety popup",
            "restart safety": "Restarting safety",
            "shutdown": "Shutting down",
        }
        if low in fixed:
            return fixed[low], low == "shutdown"
        if low == "stop":
            ctrl.stop_program()
            return "Stopped", False
        if low == "play":
            return ("Starting program" if ctrl.play_program() else "Failed to execute: play"), False
        if low == "pause":
            return (
                "Pausing program" if ctrl.pause_program() else "Failed to execute: pause"
            ), False
        if low == "unlock protective stop":
            ctrl.unlock_protective_stop()
            return "Protective stop releasing", False
        if low in ("power on", "power off"):
            ctrl.set_power(low == "power on")
            return ("Powering on" if low == "power on" else "Powering off"), False
        if low == "brake release":
            ctrl.brake_release()
            return "Brake releasing", False
        if low == "quit":
            return "Disconnected", True
        if low.startswith("load "):
            self.program_name = cmd[5:].strip()
            return f"Loading program: {self.program_name}", False
        if low.startswith("popup "):
            return "showing popup", False
        if low.startswith("addtolog "):
            return "Added log message", False
        if low.startswith("setuserrole "):
            return f"Setting user role: {cmd[12:].strip()}", False
        return f"could not understand: '{cmd}'", False

    # ---------------------------------------------------------------- script
    def _serve_script(self, conn: _Conn) -> None:
        buf = bytearray()
        scanned = 0  # bytes after the header already searched for the end
        limit = self.config.max_script_bytes
        while not conn.closed:
            data = conn.sock.recv(65536)
            if not data:
                return
            buf += data
            while True:
                start = buf.find(SCRIPT_HEADER)
                if start < 0:
                    del buf[: max(0, len(buf) - len(SCRIPT_HEADER))]
                    scanned = 0
                    break
                if start > 0:
                    del buf[:start]
                    scanned = 0
                end = buf.find(_SCRIPT_END, max(0, scanned - len(_SCRIPT_END)))
                if end < 0:
                    scanned = len(buf)
                    if len(buf) > limit:
                        log.warning("UR twin: script upload over %d bytes discarded", limit)
                        buf.clear()
                        scanned = 0
                    break
                script = bytes(buf[: end + len(_SCRIPT_END)])
                del buf[: end + len(_SCRIPT_END)]
                scanned = 0
                offset = parse_register_offset(script)
                started = self.controller.start_script(offset)
                log.info(
                    "UR twin: rtde_control script received (%d bytes, register offset %d)%s",
                    len(script),
                    offset,
                    "" if started else ", refused",
                )
