"""UR arm driver: RTDE state stream and safety-filtered ``servoL`` tracking of waypoint chunks.

The driver runs in its own process (:class:`ArmDriverProcess`, the
:mod:`demuse_ros.drivers.process` pattern) and owns the ``ur_rtde`` receive and
control interfaces (their constructors block while holding the GIL, so they
must never share an interpreter with the twin or the policy). Each cycle of a
deadline-based :class:`~demuse_ros.timing.loop.PeriodicLoop` at the control rate
(125 Hz CB3 / 500 Hz e-Series) it

1. reads the state (actual q, qd, TCP pose and speed, robot/safety mode, runtime
   state, safety status bits, controller timestamp), stamps ``t_receive_ns`` right
   after, maps the controller timestamp onto host monotonic time with a
   :class:`~demuse_ros.timing.clock_mapper.ClockMapper` (``t_capture_ns``) and
   writes one ``arm_schema()`` record when the package is new;
2. drains the parent's commands (waypoint chunks, ``reset``, ``stop``) without
   blocking. A chunk (absolute host-monotonic stamps ``t_ns`` (N,), TCP poses
   (N, 6)) is vetted **whole** by :meth:`SafetyFilter.check_chunk` from the
   actual TCP pose; a rejected chunk is counted by reason and the arm keeps doing
   what it did (holding, or the previous accepted plan). An accepted chunk
   replaces the plan, anchored at the last commanded pose *now*;
3. interpolates the plan at now (position linear, rotation slerp), drops the
   waypoints already passed, clamps the step from the previous command with
   :meth:`SafetyFilter.limit_step` and sends ``servoL``.

Watchdog: once no waypoint lies ahead, the final pose is held for at most
``watchdog_s``; then ``servoStop`` and the plan is dropped (``watchdog_stops``).
A protective or emergency stop (safety status bits 2 / 7) latches a fault: the
plan is dropped, every chunk is refused until :meth:`ArmDriverProcess.reset_fault`,
which (once the robot has been unlocked) re-uploads the control script if it is
not running and then clears the fault. A plan never survives a fault or a lost
connection: motion resumes only with a chunk received afterwards.

A lost connection (either interface reports disconnected, or a call raises) is
re-established with exponential backoff between ``reconnect_min_s`` and
``reconnect_max_s`` (a deadline checked by the loop, never a sleep). Known issue
(untested path): after the twin drops the connections mid-``servoL``, ur_rtde 1.6.5
crashed this process with SIGSEGV in 2 of 3 tries (its own auto-reconnect inside
``servoL`` races the teardown); the parent sees ``alive`` go False.

Cleanup (``finally``): ``servoStop`` → ``stopScript`` → ``disconnect``.
"""

from __future__ import annotations

import contextlib
import math
import queue
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.drivers.process import Driver, DriverProcess
from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix
from demuse_ros.safety.filter import REASONS, SafetyConfig, SafetyFilter
from demuse_ros.sync.streams import arm_schema
from demuse_ros.timing.clock import NS_PER_S, now_ns
from demuse_ros.timing.clock_mapper import ClockMapper
from demuse_ros.timing.loop import PeriodicLoop
from demuse_ros.transport.schema import RecordSchema, capacity_for

#: Safety status bits that latch a fault: protective stop (2), emergency stop (7).
PROTECTIVE_STOP_BIT = 2
EMERGENCY_STOP_BIT = 7
FAULT_MASK = (1 << PROTECTIVE_STOP_BIT) | (1 << EMERGENCY_STOP_BIT)

#: Why a chunk can be refused: the filter's reasons plus "fault" (latched driver fault).
REJECT_REASONS = tuple(r for r in REASONS if r != "step_clamped") + ("fault",)

STATS = (
    "state_records",
    "servo_commands",
    "chunks_accepted",
    "chunks_rejected",
    *(f"rejected_{r}" for r in REJECT_REASONS),
    "step_clamps",
    "watchdog_stops",
    "faults",
    "fault",
    "resets",
    "period_ms_p99",
    "rate_hz",
    "overruns",
    "control_rate_hz",
    "connected",
    "reconnects",
    "disconnects",
    "connect_failures",
    "errors",
)


@dataclass(frozen=True)
class ArmDriverConfig:
    """The UR controller connection, the servo parameters and the safety limits."""

    host: str = param("192.168.1.102", doc="Controller address (ports are fixed by ur_rtde).")
    frequency_hz: float = param(
        0.0,
        doc="RTDE/control rate; 0 = from the controller (125 Hz CB3, 500 Hz e-Series).",
        unit="Hz",
        range=(0.0, 500.0),
    )
    lookahead_time_s: float = param(
        0.1, doc="servoL lookahead time (smoother but later).", unit="s", range=(0.03, 0.2)
    )
    gain: float = param(300.0, doc="servoL proportional gain.", range=(100.0, 2000.0))
    watchdog_s: float = param(
        0.3,
        doc="Hold the last target this long with no waypoint ahead, then servoStop.",
        unit="s",
        range=(0.0, 10.0),
    )
    reconnect_min_s: float = param(
        0.1, doc="First reconnect backoff after a lost connection.", unit="s", range=(0.0, 60.0)
    )
    reconnect_max_s: float = param(
        5.0, doc="Largest reconnect backoff (doubles up to this).", unit="s", range=(0.0, 600.0)
    )
    script_timeout_s: float = param(
        5.0,
        doc="How long a reset waits for the re-uploaded control script to run.",
        unit="s",
        range=(0.1, 60.0),
    )
    read_budget_s: float = param(
        2.0, doc="How far behind a reader may fall (sizes the ring).", unit="s", range=(0.1, 60.0)
    )
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        validate_fields(self)
        if 0.0 < self.frequency_hz < 1.0:
            raise ValueError(f"frequency_hz must be 0 (auto) or >= 1 Hz, got {self.frequency_hz}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")


# ------------------------------------------------------------------ pure helpers
def validate_chunk(t_ns: Any, poses: Any) -> tuple[np.ndarray, np.ndarray]:
    """Shape/finiteness check of a waypoint chunk (the filter vets the motion in the child)."""
    t = np.asarray(t_ns)
    p = np.asarray(poses, dtype=np.float64)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"t_ns must be a non-empty 1-D array, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"t_ns must hold integer ns (host monotonic), got {t.dtype}")
    if p.shape != (len(t), 6):
        raise ValueError(f"poses must have shape ({len(t)}, 6), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("poses contain NaN or Inf")
    return t.astype(np.int64), p


def interpolate_pose(t_ns: np.ndarray, poses: np.ndarray, t: int) -> tuple[np.ndarray, int]:
    """Pose at ``t`` on the piecewise path (linear position, slerp rotation).

    Returns ``(pose, i)`` with ``i`` the index of the segment start (``t`` is
    clamped to ``[t_ns[0], t_ns[-1]]``).
    """
    n = len(t_ns)
    if t <= t_ns[0] or n == 1:
        return poses[0].copy(), 0
    if t >= t_ns[-1]:
        return poses[-1].copy(), n - 1
    i = int(np.searchsorted(t_ns, t, side="right")) - 1
    a = (t - int(t_ns[i])) / float(int(t_ns[i + 1]) - int(t_ns[i]))
    p0, p1 = poses[i], poses[i + 1]
    out = np.empty(6)
    out[:3] = p0[:3] + a * (p1[:3] - p0[:3])
    r0 = rotvec_to_matrix(p0[3:])
    rel = matrix_to_rotvec(rotvec_to_matrix(p1[3:]) @ r0.T)
    out[3:] = matrix_to_rotvec(rotvec_to_matrix(a * rel) @ r0)
    return out, i


def _measure_rate_hz(recv: Any, timeout_s: float = 1.0) -> float:
    """125 or 500 Hz from the controller timestamp step (ur_rtde chose it by version)."""
    last = recv.getTimestamp()
    steps: list[float] = []
    poll = PeriodicLoop(2000.0)  # sample the stream at 4x the fastest controller rate
    deadline = time.monotonic() + timeout_s
    while len(steps) < 8 and time.monotonic() < deadline:
        poll.wait()
        ts = recv.getTimestamp()
        if ts > last:
            steps.append(ts - last)
            last = ts
    if not steps:
        return 125.0
    return 125.0 if min(steps) > 0.004 else 500.0


# ------------------------------------------------------------------ driver
class ArmDriver(Driver):
    """The UR state/servo loop (runs in the child; see the module docstring)."""

    STATS: ClassVar[tuple[str, ...]] = STATS

    def __init__(self, config: Any, ring: Any, stats: Any, commands: Any = None) -> None:
        super().__init__(config, ring, stats, commands)
        cfg = config
        self.filter = SafetyFilter(cfg.safety)
        self.mapper = ClockMapper(name="ur")
        self._recv: Any = None
        self._ctrl: Any = None
        self._connected = False
        self._ever_connected = False
        self._backoff_s = cfg.reconnect_min_s
        self._next_connect_ns = 0
        self.rate_hz = float(cfg.frequency_hz)
        self._dt_s = 1.0 / self.rate_hz if self.rate_hz > 0 else 0.008
        # State of the last read.
        self._pose = np.zeros(6)
        self._bits = 0
        self._last_ts = -math.inf
        # Plan: None, or (t_ns (M,), poses (M, 6)) with t_ns[0] the anchor.
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._command: np.ndarray | None = None  # last pose sent with servoL
        self._servoing = False
        self._hold_since_ns: int | None = None
        self._fault = False
        self._resetting_until_ns: int | None = None

    @classmethod
    def schema(cls, config: Any) -> RecordSchema:
        return arm_schema()

    @classmethod
    def capacity(cls, config: Any) -> int:
        cfg = config
        return capacity_for(cfg.frequency_hz or 500.0, cfg.read_budget_s)

    # -------------------------------------------------------------- connection
    def _connect(self, now: int) -> None:
        if now < self._next_connect_ns:
            return
        import rtde_control
        import rtde_receive

        cfg = self.config
        freq = cfg.frequency_hz if cfg.frequency_hz > 0 else -1.0
        try:
            self._recv = rtde_receive.RTDEReceiveInterface(cfg.host, freq)
            self._ctrl = rtde_control.RTDEControlInterface(cfg.host, freq)
        except Exception:
            self.count("connect_failures")
            self._drop_handles()
            self._next_connect_ns = now_ns() + round(self._backoff_s * NS_PER_S)
            self._backoff_s = min(max(self._backoff_s, 1e-3) * 2.0, cfg.reconnect_max_s)
            return
        if cfg.frequency_hz <= 0 and self.rate_hz <= 0:
            self.rate_hz = _measure_rate_hz(self._recv)
            self._dt_s = 1.0 / self.rate_hz
        self._connected = True
        self._backoff_s = cfg.reconnect_min_s
        self.mapper.reset()
        self._last_ts = -math.inf
        self._clear_plan()
        if self._ever_connected:
            self.count("reconnects")
        self._ever_connected = True
        self.set("connected", 1.0)
        self.set("control_rate_hz", self.rate_hz)

    def _drop_handles(self) -> None:
        for handle in (self._ctrl, self._recv):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.disconnect()
        self._ctrl = self._recv = None

    def _lost(self) -> None:
        """The connection is gone: drop the plan (never resume it), reconnect after backoff."""
        self.count("disconnects")
        self._connected = False
        self.set("connected", 0.0)
        self._clear_plan()
        self._drop_handles()
        self._next_connect_ns = now_ns() + round(self._backoff_s * NS_PER_S)
        self._backoff_s = min(max(self._backoff_s, 1e-3) * 2.0, self.config.reconnect_max_s)

    # -------------------------------------------------------------- state
    def _read_state(self) -> bool:
        """Read one state; write a record when the package is new. False: connection lost."""
        recv = self._recv
        if not recv.isConnected() or not self._ctrl.isConnected():
            return False
        ts = recv.getTimestamp()
        q = recv.getActualQ()
        qd = recv.getActualQd()
        pose = recv.getActualTCPPose()
        speed = recv.getActualTCPSpeed()
        robot_mode = recv.getRobotMode()
        safety_mode = recv.getSafetyMode()
        runtime_state = recv.getRuntimeState()
        self._bits = int(recv.getSafetyStatusBits())
        t_receive = now_ns()
        self._pose = np.asarray(pose, dtype=np.float64)
        if not math.isfinite(ts) or ts <= self._last_ts:
            return True  # the same package as last cycle: no new record
        self._last_ts = ts
        t_capture = self.mapper.update(ts, t_receive)
        if self.ring.put(
            t_capture,
            t_receive,
            float(ts),
            joint_positions_rad=q,
            joint_velocities_rad_s=qd,
            tcp_pose=self._pose,
            tcp_speed=speed,
            robot_mode=robot_mode,
            safety_mode=safety_mode,
            runtime_state=runtime_state,
        ):
            self.count("state_records")
        return True

    # -------------------------------------------------------------- commands
    def _run_commands(self, now: int) -> None:
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
            kind = cmd[0]
            if kind == "chunk":
                self._chunk(now, cmd[1], cmd[2])
            elif kind == "reset":
                self._reset(now)
            elif kind == "stop":
                self._stop_motion()
            else:
                self.count("errors")

    def _reject(self, reason: str) -> None:
        self.count("chunks_rejected")
        self.count(f"rejected_{reason}")

    def _chunk(self, now: int, t_ns: Any, poses: Any) -> None:
        if self._fault or self._resetting_until_ns is not None:
            self._reject("fault")
            return
        t = np.asarray(t_ns)
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
            self._reject("bad_stamps")
            return
        t = t.astype(np.int64)
        p = np.asarray(poses, dtype=np.float64)
        # Drop the waypoints already in the past (a chunk that arrives late).
        future = t > now
        t, p = (t[future], p[future]) if p.shape[:1] == t.shape else (t, p)
        verdict = self.filter.check_chunk(self._pose, now, t, p)
        if not verdict.ok:
            self._reject(verdict.reason)
            return
        start = self._command if self._servoing and self._command is not None else self._pose
        self._plan = (np.concatenate([[now], t]), np.vstack([start, p]))
        self._hold_since_ns = None
        self.count("chunks_accepted")

    def _reset(self, now: int) -> None:
        self.count("resets")
        if self._bits & FAULT_MASK:
            return  # still stopped: unlock the robot first
        ctrl = self._ctrl
        self.filter.reset()
        self._clear_plan()
        if not ctrl.isProgramRunning():
            ctrl.reuploadScript()
            self._resetting_until_ns = now + round(self.config.script_timeout_s * NS_PER_S)
        else:
            self._clear_fault()

    def _clear_fault(self) -> None:
        self._fault = False
        self._resetting_until_ns = None
        self.set("fault", 0.0)

    def _clear_plan(self) -> None:
        self._plan = None
        self._hold_since_ns = None
        self._command = None
        self._servoing = False

    def _stop_motion(self) -> None:
        if self._servoing:
            self._ctrl.servoStop()
        self._clear_plan()

    # -------------------------------------------------------------- servo
    def _servo(self, now: int) -> None:
        plan = self._plan
        if plan is None:
            return
        t_ns, poses = plan
        target, i = interpolate_pose(t_ns, poses, now)
        if i > 0 and i < len(t_ns) - 1:  # drop the waypoints already passed
            self._plan = plan = (t_ns[i:], poses[i:])
        if now >= t_ns[-1]:
            if self._hold_since_ns is None:
                self._hold_since_ns = int(t_ns[-1])
            if now - self._hold_since_ns >= self.config.watchdog_s * NS_PER_S:
                self.count("watchdog_stops")
                self._stop_motion()
                return
        previous = self._command if self._command is not None else self._pose
        command, clamped = self.filter.limit_step(previous, target)
        if clamped:
            self.count("step_clamps")
        cfg = self.config
        self._ctrl.servoL(command.tolist(), 0.0, 0.0, self._dt_s, cfg.lookahead_time_s, cfg.gain)
        self._command = command
        self._servoing = True
        self.count("servo_commands")

    # -------------------------------------------------------------- loop
    def _cycle(self, now: int, ready: Any) -> None:
        if not self._read_state():
            self._lost()
            return
        if not ready.is_set() and self.ring.count > 0:
            ready.set()
        if self._bits & FAULT_MASK and not self._fault:
            self._fault = True
            self._resetting_until_ns = None
            self._clear_plan()  # the robot is stopped; never resume this plan
            self.count("faults")
            self.set("fault", 1.0)
        if self._resetting_until_ns is not None:
            if self._ctrl.isProgramRunning():
                self._clear_fault()
            elif now > self._resetting_until_ns:
                self._resetting_until_ns = None  # script did not start: still faulted
                self.count("errors")
        self._run_commands(now_ns())
        if not self._fault:
            self._servo(now_ns())

    def run(self, stop: Any, ready: Any) -> None:
        loop: PeriodicLoop | None = None
        # While disconnected, retry on a deadline grid; _connect applies the backoff.
        retry = PeriodicLoop(100.0)
        cycle = 0
        try:
            while not stop.is_set():
                if not self._connected:
                    self._connect(now_ns())
                    if not self._connected:
                        retry.wait()
                        continue
                if loop is None:
                    loop = PeriodicLoop(self.rate_hz)
                    publish_every = max(1, round(self.rate_hz / 2))
                loop.wait()
                cycle += 1
                try:
                    self._cycle(now_ns(), ready)
                except RuntimeError:
                    self.count("errors")
                    self._lost()
                if cycle % publish_every == 0:
                    self._publish(loop)
        finally:
            if loop is not None:
                self._publish(loop)
            ctrl = self._ctrl
            if ctrl is not None:
                with contextlib.suppress(Exception):
                    ctrl.servoStop()
                with contextlib.suppress(Exception):
                    ctrl.stopScript()
            self._drop_handles()
            self.set("connected", 0.0)

    def _publish(self, loop: PeriodicLoop) -> None:
        st = loop.stats()
        if math.isfinite(st.rate_hz):
            self.set("rate_hz", st.rate_hz)
            self.set("period_ms_p99", st.period_s_p99 * 1e3)
        self.set("overruns", float(st.overruns))


class ArmDriverProcess(DriverProcess):
    """The UR driver in its own process, plus waypoint chunks and commands from the parent.

    :meth:`send_chunk` checks shapes and finiteness here (``ValueError``) and queues
    the chunk; the safety filter in the child accepts or rejects it (see
    ``stats()["chunks_accepted"]`` / ``["chunks_rejected"]`` and ``rejected_<reason>``).
    """

    def __init__(self, config: ArmDriverConfig, *, name: str = "arm") -> None:
        super().__init__(ArmDriver, config, name=name)

    def send_chunk(self, t_ns: Any, poses: Any) -> None:
        """Queue waypoints: absolute host-monotonic stamps (N,) int ns and TCP poses (N, 6)."""
        t, p = validate_chunk(t_ns, poses)
        self.send(("chunk", t, p))

    def reset_fault(self) -> None:
        """Clear a latched fault once the robot is unlocked (re-uploads the script if needed)."""
        self.send(("reset",))

    def stop_motion(self) -> None:
        """servoStop and drop the plan."""
        self.send(("stop",))


__all__ = [
    "FAULT_MASK",
    "ArmDriver",
    "ArmDriverConfig",
    "ArmDriverProcess",
    "interpolate_pose",
    "validate_chunk",
]
