"""OnRobot RG2-FT driver: fingertip force/torque and gripper state over Modbus TCP.

The driver runs in its own process (:class:`FTDriverProcess`, the
:mod:`demuse_ros.drivers.process` pattern) and owns the pymodbus client. Each
cycle of a deadline-based :class:`~demuse_ros.timing.loop.PeriodicLoop` at
``rate_hz`` it

1. executes pending gripper commands from the parent (a ``multiprocessing``
   queue drained without blocking),
2. reads the state block 257..282 of unit 65 with FC03 (one request, 26 words,
   ``hardware.md`` §2.2), stamps ``t_receive_ns`` right after the reply and
   ``t_capture_ns = t_receive_ns - latency_s`` (``device_time_s`` is NaN: Modbus
   carries no device clock),
3. decodes the unsigned words as int16 and scales them (0.1 N, 0.01 N·m,
   width 0.1 mm),
4. processes the wrench as the paper's appendix C does (:class:`WrenchProcessor`):
   optionally rotates each fingertip wrench into the tool frame, takes the mean of
   the two fingers, clips forces/torques to the configured saturation, and smooths
   with a *causal* Savitzky–Golay filter (z-scoring happens later, in the policy),
5. writes one ``ft_schema()`` record.

Failures never produce a record: a timeout, a Modbus exception reply, an I/O
error (garbage, truncated frame), a lost connection, or a status word ≠ 0 in
either fingertip (the twin sets bits for saturation/NaN) each skip that poll and
are counted by kind in the driver's stats. A lost connection is re-established
with exponential backoff between ``reconnect_min_s`` and ``reconnect_max_s``;
the wait is a deadline checked by the periodic loop (the loop keeps its rate and
keeps serving ``stop``), never a sleep.

Frames (the twin's convention, :mod:`demuse_ros.twin.scene`): each fingertip
sensor frame has z = the inward pad normal, x = tool z, y = z × x. In the tool
(flange/TCP-orientation) frame the left finger (+y) sensor axes are x_s = (0,0,1),
y_s = (-1,0,0), z_s = (0,-1,0); the right finger's are x_s = (0,0,1),
y_s = (1,0,0), z_s = (0,1,0). A grip therefore reads Fz < 0 on both sensors. The
config holds these as rotation vectors ``R_k`` (sensor → tool: ``f_tool = R_k
f_sensor``, i.e. ``R^T f`` with ``R^T`` the tool-in-sensor rotation of the paper);
with the rotation on, an internal grip squeeze cancels in the mean and only the
external load remains. Torques are rotated but not shifted: each finger's torque
stays about its own pad centre, and the mean is about their midpoint only when the
forces are symmetric (the paper's simplification).

``finger_wrenches`` in the record are the raw decoded per-finger wrenches in their
own sensor frames (not rotated, clipped or smoothed); ``wrench`` is the processed
combined wrench.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import queue
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.drivers.ft_signal import (
    MAX_FORCE_N,
    MAX_WIDTH_M,
    REG_CONTROL,
    REG_TARGET_FORCE,
    REG_ZERO,
    STATE_COUNT,
    STATE_START,
    TWIN_LEFT_ROTVEC,
    TWIN_RIGHT_ROTVEC,
    WrenchProcessor,
    decode_state,
)
from demuse_ros.drivers.process import Driver, DriverProcess
from demuse_ros.sync.streams import ft_schema
from demuse_ros.timing.clock import NS_PER_S, now_ns
from demuse_ros.timing.loop import PeriodicLoop
from demuse_ros.transport.schema import RecordSchema, capacity_for

STATS = (
    "samples",
    "timeouts",
    "exceptions",
    "io_errors",
    "invalid",
    "disconnects",
    "reconnects",
    "connect_failures",
    "commands",
    "command_errors",
    "gripper_plans",
    "overruns",
    "rate_hz",
    "period_ms_p99",
    "connected",
)


@dataclass(frozen=True)
class FTDriverConfig:
    """The RG2-FT compute box connection and the wrench processing (paper appendix C)."""

    host: str = param("192.168.1.1", doc="Compute box address (the twin listens on 127.0.0.1).")
    port: int = param(
        502, doc="Modbus TCP port (the device uses 502; the twin 5020).", range=(1, 65535)
    )
    unit_id: int = param(65, doc="Modbus unit id of the gripper.", range=(1, 247))
    rate_hz: float = param(100.0, doc="Polling rate of the state block.", unit="Hz", range=(1, 500))
    timeout_s: float = param(
        0.05, doc="Reply timeout of one request (no retries).", unit="s", range=(0.001, 10.0)
    )
    reconnect_min_s: float = param(
        0.05, doc="First reconnect backoff after a lost connection.", unit="s", range=(0.0, 60.0)
    )
    reconnect_max_s: float = param(
        2.0, doc="Largest reconnect backoff (doubles up to this).", unit="s", range=(0.0, 600.0)
    )
    latency_s: float = param(
        0.002,
        doc="Sensor-to-reply latency subtracted from the receive time to get the capture time.",
        unit="s",
        range=(0.0, 1.0),
    )
    clip_force_n: float = param(
        100.0, doc="Saturation of each combined force component (±).", unit="N", range=(0, None)
    )
    clip_torque_nm: float = param(
        5.0, doc="Saturation of each combined torque component (±).", unit="N·m", range=(0, None)
    )
    savgol_window: int = param(
        1, doc="Causal Savitzky–Golay window in samples (1 = no smoothing).", range=(1, 255)
    )
    savgol_polyorder: int = param(
        0, doc="Savitzky–Golay polynomial order (< window).", range=(0, 10)
    )
    rotate_to_tool: bool = param(
        False, doc="Rotate each fingertip wrench into the tool frame before the mean."
    )
    left_sensor_rotvec: tuple[float, float, float] = param(
        TWIN_LEFT_ROTVEC,
        doc="Left sensor frame in the tool frame (rotation vector, sensor -> tool).",
        unit="rad",
    )
    right_sensor_rotvec: tuple[float, float, float] = param(
        TWIN_RIGHT_ROTVEC,
        doc="Right sensor frame in the tool frame (rotation vector, sensor -> tool).",
        unit="rad",
    )
    gripper_deadband_m: float = param(
        0.002,
        doc="A gripper plan commands a new width only when it differs this much from the last.",
        unit="m",
        range=(0.0, 0.1),
    )
    read_budget_s: float = param(
        2.0, doc="How far behind a reader may fall (sizes the ring).", unit="s", range=(0.1, 60.0)
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.savgol_window > 1 and self.savgol_polyorder >= self.savgol_window:
            raise ValueError(
                f"savgol_polyorder ({self.savgol_polyorder}) must be < savgol_window "
                f"({self.savgol_window})"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        for name in ("left_sensor_rotvec", "right_sensor_rotvec"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must have 3 elements")


# ------------------------------------------------------------------ commands
def _check_number(name: str, value: Any, low: float, high: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {low}..{high} {unit}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be finite and within {low}..{high} {unit}, got {value!r}")
    return value


def grip_command(width_m: float, force_n: float) -> tuple[str, int, int]:
    """Validated grip command (register units); raises ValueError naming the limit."""
    width_m = _check_number("width_m", width_m, 0.0, MAX_WIDTH_M, "m")
    force_n = _check_number("force_n", force_n, 0.0, MAX_FORCE_N, "N")
    return ("grip", round(force_n * 10.0), round(width_m * 1e4))


# ------------------------------------------------------------------ driver
class FTDriver(Driver):
    """The RG2-FT polling loop (runs in the child; see the module docstring)."""

    STATS: ClassVar[tuple[str, ...]] = STATS

    def __init__(self, config: Any, ring: Any, stats: Any, commands: Any = None) -> None:
        super().__init__(config, ring, stats, commands)
        cfg = config
        self.processor = WrenchProcessor(cfg)
        self._client: Any = None
        self._connected = False
        self._backoff_s = cfg.reconnect_min_s
        self._next_connect_ns = 0
        self._ever_connected = False
        # Gripper plan: (t_ns (N,), width register values (N,), force register value).
        self._gripper_plan: tuple[np.ndarray, np.ndarray, int] | None = None
        self._gripper_width: int | None = None  # last width commanded (0.1 mm)

    @classmethod
    def schema(cls, config: Any) -> RecordSchema:
        return ft_schema()

    @classmethod
    def capacity(cls, config: Any) -> int:
        cfg = config
        return capacity_for(cfg.rate_hz, cfg.read_budget_s)

    # -------------------------------------------------------------- connection
    def _try_connect(self, now: int) -> None:
        """One connect attempt once the backoff deadline has passed (never sleeps)."""
        if now < self._next_connect_ns:
            return
        ok = False
        try:
            ok = bool(self._client.connect())
        except Exception:
            ok = False
        if ok:
            self._connected = True
            self._backoff_s = self.config.reconnect_min_s
            self.processor.reset()
            if self._ever_connected:
                self.count("reconnects")
            self._ever_connected = True
            self.set("connected", 1.0)
            return
        self.count("connect_failures")
        self._next_connect_ns = now_ns() + round(self._backoff_s * NS_PER_S)
        self._backoff_s = min(self._backoff_s * 2.0, self.config.reconnect_max_s)

    def _lost(self) -> None:
        """The connection is gone: close it, count it, reconnect after the backoff."""
        self.count("disconnects")
        self._connected = False
        self.set("connected", 0.0)
        with contextlib.suppress(Exception):
            self._client.close()
        self._next_connect_ns = now_ns() + round(self._backoff_s * NS_PER_S)
        self._backoff_s = min(max(self._backoff_s, 1e-3) * 2.0, self.config.reconnect_max_s)

    def _failed(self, kind: str) -> None:
        self.count(kind)
        if not self._client.connected:
            self._lost()

    # -------------------------------------------------------------- commands
    def _run_commands(self) -> None:
        q = self.commands
        if q is None:
            return
        while True:
            try:
                cmd = q.get_nowait()
            except queue.Empty:
                return
            except (OSError, EOFError, ValueError):  # the parent closed the queue
                self.commands = None
                return
            if cmd[0] == "gripper_plan":
                _, t_ns, widths, force = cmd
                self._gripper_plan = (t_ns, widths, force)
                self.count("gripper_plans")
            else:
                self._execute(cmd)

    def _run_gripper_plan(self, now: int) -> None:
        """Command the width of the latest waypoint due, if it moved past the deadband."""
        plan = self._gripper_plan
        if plan is None:
            return
        t_ns, widths, force = plan
        i = int(np.searchsorted(t_ns, now, side="right")) - 1
        if i < 0:
            return
        width = int(widths[i])
        deadband = round(self.config.gripper_deadband_m * 1e4)
        if self._gripper_width is None or abs(width - self._gripper_width) > deadband:
            self._execute(("grip", force, width))
            self._gripper_width = width
        if i == len(t_ns) - 1:
            self._gripper_plan = None

    def _execute(self, cmd: tuple) -> None:
        from pymodbus.exceptions import ConnectionException, ModbusException

        if not self._connected:
            self.count("command_errors")
            return
        unit = self.config.unit_id
        try:
            if cmd[0] == "grip":
                _, force, width = cmd
                reply = self._client.write_registers(
                    REG_TARGET_FORCE, [force, width, 1], device_id=unit
                )
            elif cmd[0] == "stop":
                reply = self._client.write_register(REG_CONTROL, 0, device_id=unit)
            elif cmd[0] == "zero":
                reply = self._client.write_register(REG_ZERO, int(cmd[1]), device_id=unit)
            else:
                self.count("command_errors")
                return
        except ConnectionException:
            self.count("command_errors")
            self._lost()
            return
        except (ModbusException, OSError):
            self.count("command_errors")
            if not self._client.connected:
                self._lost()
            return
        self.count("command_errors" if reply.isError() else "commands")

    # -------------------------------------------------------------- polling
    def _poll(self) -> bool:
        """One read; returns True when a record was written."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        cfg = self.config
        try:
            reply = self._client.read_holding_registers(
                STATE_START, count=STATE_COUNT, device_id=cfg.unit_id
            )
        except ConnectionException:
            self._lost()
            return False
        except ModbusIOException as exc:
            self._failed("timeouts" if "No response received" in str(exc) else "io_errors")
            return False
        except (ModbusException, OSError, ValueError):
            self._failed("io_errors")
            return False
        t_receive = now_ns()
        if reply.isError():
            self.count("exceptions")
            return False
        regs = getattr(reply, "registers", None)
        if regs is None or len(regs) != STATE_COUNT:
            self.count("io_errors")
            return False
        fingers, width_m, status = decode_state(regs)
        if status != (0, 0) or not np.isfinite(fingers).all():
            self.count("invalid")
            return False
        wrench = self.processor(fingers)
        t_capture = t_receive - round(cfg.latency_s * NS_PER_S)
        if not self.ring.put(
            t_capture,
            t_receive,
            math.nan,
            wrench=wrench,
            finger_wrenches=fingers,
            gripper_width_m=width_m,
        ):
            self.count("invalid")
            return False
        self.count("samples")
        return True

    def run(self, stop: Any, ready: Any) -> None:
        from pymodbus.client import ModbusTcpClient

        cfg = self.config
        self._client = ModbusTcpClient(cfg.host, port=cfg.port, timeout=cfg.timeout_s, retries=0)
        loop = PeriodicLoop(cfg.rate_hz)
        publish_every = max(1, round(cfg.rate_hz / 2))
        cycle = 0
        try:
            while not stop.is_set():
                loop.wait()
                cycle += 1
                if not self._connected:
                    self._try_connect(now_ns())
                    if not self._connected:
                        continue
                self._run_commands()
                self._run_gripper_plan(now_ns())
                if self._connected and self._poll() and not ready.is_set():
                    ready.set()
                if cycle % publish_every == 0:
                    self._publish(loop)
        finally:
            self._publish(loop)
            self.set("connected", 0.0)
            with contextlib.suppress(Exception):
                self._client.close()

    def _publish(self, loop: PeriodicLoop) -> None:
        st = loop.stats()
        if math.isfinite(st.rate_hz):
            self.set("rate_hz", st.rate_hz)
            self.set("period_ms_p99", st.period_s_p99 * 1e3)
        self.set("overruns", float(st.overruns))


class FTDriverProcess(DriverProcess):
    """The RG2-FT driver in its own process, plus gripper commands from the parent.

    Commands are validated here (a ``ValueError`` naming the limit, before anything
    is sent) and queued; the driver sends them at its next cycle, before the poll.
    They are fire-and-forget: ``stats()["commands"]`` counts those the device
    acknowledged, ``stats()["command_errors"]`` those refused or dropped (e.g. sent
    while disconnected — a stale grip is never replayed after a reconnect).
    """

    def __init__(self, config: FTDriverConfig, *, name: str = "ft") -> None:
        super().__init__(FTDriver, config, name=name)

    def grip(self, width_m: float, force_n: float) -> None:
        """Move the fingers to ``width_m`` (0..0.1 m) with at most ``force_n`` (0..40 N)."""
        self.send(grip_command(width_m, force_n))

    def send_gripper_plan(self, t_ns: Any, widths_m: Any, force_n: float) -> None:
        """Widths (N,) in m at absolute host stamps (N,) int ns, replacing any earlier plan.

        The driver commands the width of the latest waypoint whose time has come
        when it differs from the last command by more than ``gripper_deadband_m``.
        """
        t = np.asarray(t_ns, dtype=np.int64)
        widths = [grip_command(float(w), force_n) for w in np.asarray(widths_m).reshape(-1)]
        if t.ndim != 1 or len(widths) != len(t) or np.any(np.diff(t) <= 0):
            raise ValueError("t_ns must be strictly increasing and match widths_m one to one")
        self.send(
            ("gripper_plan", t, np.array([w[2] for w in widths]), widths[0][1] if widths else 0)
        )

    def stop_gripper(self) -> None:
        """Stop the finger motion (register 4 = 0)."""
        self.send(("stop",))

    def zero(self) -> None:
        """Zero the fingertip F/T sensors at their current reading (register 0 = 1)."""
        self.send(("zero", 1))

    def unzero(self) -> None:
        """Cancel the zero offset (register 0 = 0)."""
        self.send(("zero", 0))


__all__ = [
    "MAX_FORCE_N",
    "MAX_WIDTH_M",
    "TWIN_LEFT_ROTVEC",
    "TWIN_RIGHT_ROTVEC",
    "FTDriver",
    "FTDriverConfig",
    "FTDriverProcess",
    "WrenchProcessor",
    "decode_state",
    "grip_command",
]
