"""UR arm driver: RTDE state stream and safety-filtered ``servoL`` tracking of waypoint chunks.

The driver runs in its own supervised process (:class:`ArmDriverProcess`, the
:mod:`demuse_ros.drivers.process` pattern) and owns the ``ur_rtde`` receive and
control interfaces (their constructors block while holding the GIL, so they
must never share an interpreter with the twin or the policy). The loop is
locked to the controller's stream (125 Hz CB3 / 500 Hz e-Series): it sleeps
until shortly before the next package is due, polls for it, and then

1. reads the state (actual q, qd, TCP pose and speed, robot/safety mode, runtime
   state, safety status bits, controller timestamp), stamps ``t_receive_ns`` right
   after, maps the controller timestamp onto host monotonic time with a
   :class:`~demuse_ros.timing.clock_mapper.ClockMapper` (``t_capture_ns``) and
   writes one ``arm_schema()`` record per package;
2. drains the parent's commands (waypoint chunks, ``reset``, ``stop``) without
   blocking. A chunk (absolute host-monotonic stamps ``t_ns`` (N,), TCP poses
   (N, 6)) is vetted **whole** by :meth:`SafetyFilter.check_chunk` from the
   actual TCP pose; a rejected chunk is counted by reason and the arm keeps doing
   what it did (holding, or the previous accepted plan). An accepted chunk
   replaces the plan, anchored at the last commanded pose *now*;
3. interpolates the plan at now (position linear, rotation slerp; see
   :mod:`~demuse_ros.drivers.arm_path`), drops the waypoints already passed,
   clamps the step from the previous command with :meth:`SafetyFilter.limit_step`
   and sends ``servoL``.

Teach mode (:meth:`ArmDriverProcess.teach_mode`, :mod:`~demuse_ros.drivers.arm_teach`):
the UR is in freedrive, the state keeps streaming, chunks are refused (``teach_mode``).

Watchdog: once no waypoint lies ahead, the final pose is held for at most
``watchdog_s``; then ``servoStop`` and the plan is dropped (``watchdog_stops``).
A protective or emergency stop (safety status bits 2 / 7) latches a fault: the
plan is dropped, every chunk is refused until :meth:`ArmDriverProcess.reset_fault`,
which (once the robot has been unlocked) re-uploads the control script if it is
not running and then clears the fault.

Lost connection (either interface reports it, a call raises, or no package for
``stream_timeout_s``): ``ur_rtde`` 1.6.5's own in-process reconnect crashed with
SIGSEGV against the twin, so the driver exits with
:data:`~demuse_ros.drivers.process.EXIT_RESTART` and its supervisor starts a
fresh process after a backoff (``reconnect_min_s`` doubling to
``reconnect_max_s``). The new process has no plan and refuses chunks *sent*
before it connected (``rejected_stale``): the arm never resumes toward a stale
target. A crash inside ``ur_rtde`` takes the same path.

Cleanup on a normal stop (``finally``): ``servoStop`` → ``stopScript`` → ``disconnect``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import sys
import threading
import time
from typing import Any, ClassVar

import numpy as np

from demuse_ros.drivers.arm_config import (
    FAULT_MASK,
    STATS,
    ArmDriverConfig,
    measure_rate_hz,
)
from demuse_ros.drivers.arm_path import WaypointPlan, future_waypoints, validate_chunk
from demuse_ros.drivers.arm_teach import ArmTeachMode
from demuse_ros.drivers.process import EXIT_RESTART, Driver, DriverProcess
from demuse_ros.safety.filter import SafetyFilter
from demuse_ros.safety.wrench_guard import WrenchGuard
from demuse_ros.sync.streams import arm_schema
from demuse_ros.timing.clock import NS_PER_S, now_ns
from demuse_ros.timing.clock_mapper import ClockMapper
from demuse_ros.timing.loop import PeriodicLoop, PeriodRecorder, sleep_until_ns
from demuse_ros.timing.realtime import set_realtime_priority
from demuse_ros.transport.schema import RecordSchema, capacity_for


class ConnectionLostError(RuntimeError):
    """The controller connection is gone; the process exits for a fresh start."""


# ------------------------------------------------------------------ driver
class ArmDriver(ArmTeachMode, Driver):
    """The UR state/servo loop (runs in the child; see the module docstring)."""

    STATS: ClassVar[tuple[str, ...]] = STATS

    #: Wake this long before a package is due, then poll for it.
    EARLY_NS = 1_000_000
    POLL_S = 0.0001
    CLEANUP_TIMEOUT_S = 2.0

    def __init__(self, config: Any, ring: Any, stats: Any, commands: Any = None) -> None:
        super().__init__(config, ring, stats, commands)
        cfg = config
        self.log = logging.getLogger("demuse.driver.arm")
        self.filter = SafetyFilter(cfg.safety)
        self.mapper = ClockMapper(name="ur")
        self._recv: Any = None
        self._ctrl: Any = None
        self._connected = False
        self._connected_since_ns = 0
        self._backoff_s = cfg.reconnect_min_s
        self._next_connect_ns = 0
        self.rate_hz = float(cfg.frequency_hz)
        self._dt_s = 1.0 / self.rate_hz if self.rate_hz > 0 else 0.008
        self._period_ns = round(self._dt_s * NS_PER_S)
        self._periods = PeriodRecorder()
        self._packages = PeriodRecorder()  # host arrival of each package (as detected)
        # State of the last read.
        self._pose = np.zeros(6)
        self._bits = 0
        self._last_ts = -math.inf
        self._last_package_ns = 0  # host time the last new package was seen
        self._last_due_ns = 0  # when packages are missing: the last grid point waited for
        self._plan: WaypointPlan | None = None
        self._command: np.ndarray | None = None  # last pose sent with servoL
        self._servoing = False
        self._fault = False
        self._resetting_until_ns: int | None = None
        self._wrench = (
            WrenchGuard(cfg.ft_ring, self.filter, cfg.ft_max_age_s) if cfg.ft_ring else None
        )
        self._holding = False

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
        except Exception as exc:
            self.count("connect_failures")
            self.log.warning("cannot connect to the UR controller at %s: %s", cfg.host, exc)
            self._drop_handles()
            self._next_connect_ns = now_ns() + round(self._backoff_s * NS_PER_S)
            self._backoff_s = min(max(self._backoff_s, 1e-3) * 2.0, cfg.reconnect_max_s)
            return
        if cfg.frequency_hz <= 0 and self.rate_hz <= 0:
            self.rate_hz = measure_rate_hz(self._recv)
            self._dt_s = 1.0 / self.rate_hz
            self._period_ns = round(self._dt_s * NS_PER_S)
        self._connected = True
        self._connected_since_ns = now_ns()
        self._last_package_ns = self._connected_since_ns
        self.mapper.reset()
        self._last_ts = -math.inf
        if self._stats_value("connects") > 0:  # an earlier process (or loop) was connected
            self.count("reconnects")
        self.count("connects")
        self.set("connected", 1.0)
        self.set("control_rate_hz", self.rate_hz)

    def _stats_value(self, name: str) -> float:
        return float(self._stats[self._index[name]])

    def _drop_handles(self) -> None:
        for handle in (self._ctrl, self._recv):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.disconnect()
        self._ctrl = self._recv = None

    # -------------------------------------------------------------- state
    def _await_package(self) -> int | None:
        """Sleep until just before the next package is due, then poll for it.

        Returns the host time it was seen, or None when it did not come within
        half a period (the cycle then runs on the expected grid).
        """
        recv = self._recv
        due = max(self._last_package_ns, self._last_due_ns) + self._period_ns
        sleep_until_ns(due - self.EARLY_NS, spin_ns=0)
        give_up = due + self._period_ns // 2
        while True:
            if recv.getTimestamp() > self._last_ts:
                return now_ns()
            if now_ns() >= give_up:
                self._last_due_ns = due  # keep the grid: the next wait is a period on
                return None
            time.sleep(self.POLL_S)

    def _read_state(self, t_seen: int | None) -> None:
        """Read the whole state; write a record when the package is new.

        ``t_seen``: when :meth:`_await_package` saw the package (its receive stamp).
        """
        recv = self._recv
        ts = recv.getTimestamp()
        q = recv.getActualQ()
        qd = recv.getActualQd()
        pose = recv.getActualTCPPose()
        speed = recv.getActualTCPSpeed()
        robot_mode = recv.getRobotMode()
        safety_mode = recv.getSafetyMode()
        runtime_state = recv.getRuntimeState()
        t_receive = t_seen if t_seen is not None else now_ns()
        self._pose = np.asarray(pose, dtype=np.float64)
        if not math.isfinite(ts) or ts <= self._last_ts:
            if t_receive - self._last_package_ns > self.config.stream_timeout_s * NS_PER_S:
                self.count("stream_timeouts")
                raise ConnectionLostError(
                    f"no controller package for {self.config.stream_timeout_s} s"
                )
            return  # the same package as last cycle: no new record
        skipped = 0
        if math.isfinite(self._last_ts):
            skipped = round((ts - self._last_ts) / self._dt_s) - 1
            if skipped > 0:
                self.count("packages_missed", skipped)
        if skipped == 0:
            self._packages.mark(t_receive)
        else:
            self._packages.restart()
        self._last_ts = ts
        self._last_package_ns = t_receive
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
                self._chunk(now, *cmd[1:])
            elif kind == "reset":
                self._reset(now)
            elif kind == "stop":
                self._stop_motion()
            elif kind == "teach":
                self._teach(bool(cmd[1]))
            elif kind == "reset_stats":  # start the timing statistics afresh
                self._periods = PeriodRecorder()
                self._packages = PeriodRecorder()
            else:
                self.count("errors")

    def _reject(self, reason: str) -> None:
        self.count("chunks_rejected")
        self.count(f"rejected_{reason}")

    def _chunk(self, now: int, t_ns: Any, poses: Any, sent_ns: int = 0) -> None:
        if self._fault or self._resetting_until_ns is not None:
            self._reject("fault")
            return
        if sent_ns < self._connected_since_ns:
            self._reject("stale")  # planned before this connection: never resume it
            return
        if self._teach_mode:
            self._reject("teach_mode")  # moved by hand: no servo target
            return
        t = np.asarray(t_ns)
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
            self._reject("bad_stamps")
            return
        t, p = future_waypoints(now, t.astype(np.int64), np.asarray(poses, dtype=np.float64))
        # Vet the motion that will be commanded: from the last servo target while
        # servoing (the actual pose lags it by the tracking error), else from rest.
        start = self._command if self._servoing and self._command is not None else self._pose
        verdict = self.filter.check_chunk(start, now, t, p)
        if not verdict.ok:
            self._reject(verdict.reason)
            return
        self._plan = WaypointPlan(now, start, t, p)
        self.count("chunks_accepted")

    def _reset(self, now: int) -> None:
        self.count("resets")
        if self._bits & FAULT_MASK:
            return  # still stopped: unlock the robot first
        ctrl = self._ctrl
        self.filter.reset()
        self._holding = False
        self.set("hold", 0.0)
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
        self._command = None
        self._servoing = False
        self._periods.restart()

    def _stop_motion(self) -> None:
        if self._servoing:
            self._ctrl.servoStop()
        self._clear_plan()

    # -------------------------------------------------------------- servo
    def _servo(self, now: int) -> None:
        plan = self._plan
        if plan is None:
            return
        if now - plan.end_ns >= self.config.watchdog_s * NS_PER_S:  # nothing ahead for long
            self.count("watchdog_stops")
            self._stop_motion()
            return
        target = plan.target(now)
        previous = self._command if self._command is not None else self._pose
        command, clamped = self.filter.limit_step(previous, target)
        if clamped:
            self.count("step_clamps")
        cfg = self.config
        self._ctrl.servoL(command.tolist(), 0.0, 0.0, self._dt_s, cfg.lookahead_time_s, cfg.gain)
        self._periods.mark(now_ns())
        self._command = command
        self._servoing = True
        self.count("servo_commands")

    # -------------------------------------------------------------- force limit
    def _check_wrench(self, now: int) -> None:
        """The F/T force limit (:class:`WrenchGuard`); a latched hold stops the motion."""
        if self._wrench is None:
            return
        if self._wrench.update(now, moving=self._plan is not None) and not self._holding:
            self._holding = True
            self.log.warning("protective hold: %s", self.filter.hold_reason)
            self.count("protective_holds")
            self.set("hold", 1.0)
            self._stop_motion()

    # -------------------------------------------------------------- loop
    def _cycle(self, ready: Any, t_seen: int | None) -> None:
        """One package: fault check and ``servoL`` first (least latency), then the rest."""
        recv, ctrl = self._recv, self._ctrl
        if not recv.isConnected() or not ctrl.isConnected():
            raise ConnectionLostError("ur_rtde reports the connection lost")
        self._bits = int(recv.getSafetyStatusBits())
        if self._bits & FAULT_MASK and not self._fault:
            self._fault = True
            self._resetting_until_ns = None
            self._clear_plan()  # the robot is stopped; never resume this plan
            self._set_teach(False)  # the program stopped, and with it teach mode
            self.count("faults")
            self.set("fault", 1.0)
        if not self._fault and not self.filter.hold_reason:
            self._servo(now_ns())
        self._read_state(t_seen)
        if not ready.is_set() and self.ring.count > 0:
            ready.set()
        now = now_ns()
        if self._resetting_until_ns is not None:
            if ctrl.isProgramRunning():
                self._clear_fault()
            elif now > self._resetting_until_ns:
                self._resetting_until_ns = None  # script did not start: still faulted
                self.count("errors")
        self._run_commands(now)
        self._check_wrench(now)

    def run(self, stop: Any, ready: Any) -> None:
        denied = set_realtime_priority(self.config.realtime_priority)
        if denied:
            self.log.warning("arm driver: %s", denied)
        self.set("realtime", 0.0 if denied or not self.config.realtime_priority else 1.0)
        retry = PeriodicLoop(100.0)  # while disconnected; _connect applies the backoff
        publish_every_ns = NS_PER_S // 2
        next_publish = 0
        lost: ConnectionLostError | None = None
        try:
            while not stop.is_set():
                if not self._connected:
                    self._connect(now_ns())
                    if not self._connected:
                        retry.wait()
                        continue
                t_seen = self._await_package()
                try:
                    self._cycle(ready, t_seen)
                except ConnectionLostError as exc:
                    lost = exc
                    break
                except RuntimeError as exc:  # ur_rtde raises RuntimeError on a dead socket
                    lost = ConnectionLostError(str(exc))
                    break
                now = now_ns()
                if now >= next_publish:
                    self._publish()
                    next_publish = now + publish_every_ns
        finally:
            self._publish()
            if self._wrench is not None:
                self._wrench.close()
            if lost is not None:
                self._exit_for_restart(lost)
            if self._connected and not self._link_alive():
                # Stopped while the controller is gone (e.g. the whole cell shutting down):
                # any ur_rtde call would block in its own reconnect loop. Leave untouched.
                self.set("connected", 0.0)
                os._exit(0)
            # servoStop -> stopScript -> disconnect, with a deadline: if the controller
            # vanished just now, ur_rtde blocks in its reconnect loop; do not hang in it.
            done = threading.Event()
            threading.Thread(target=self._close, args=(done,), daemon=True).start()
            if not done.wait(self.CLEANUP_TIMEOUT_S):
                self.log.warning("ur_rtde cleanup blocked (controller gone?); exiting anyway")
                self.set("connected", 0.0)
                os._exit(0)

    def _close(self, done: threading.Event) -> None:
        ctrl = self._ctrl
        if ctrl is not None:
            self._end_teach_for_close()
            with contextlib.suppress(Exception):
                ctrl.servoStop()
            with contextlib.suppress(Exception):
                ctrl.stopScript()
        self._drop_handles()
        self.set("connected", 0.0)
        done.set()

    def _link_alive(self) -> bool:
        """Both interfaces connected and a package within ``stream_timeout_s``."""
        try:
            fresh = self._recv.getTimestamp() > self._last_ts or (
                now_ns() - self._last_package_ns < self.config.stream_timeout_s * NS_PER_S
            )
            return bool(fresh and self._recv.isConnected() and self._ctrl.isConnected())
        except Exception:
            return False

    def _exit_for_restart(self, why: ConnectionLostError) -> None:
        """Leave without touching ur_rtde again (its own reconnect may be racing us)."""
        self.count("disconnects")
        self.set("connected", 0.0)
        print(f"arm driver: connection lost ({why}); exiting for a restart", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_RESTART)

    def _publish(self) -> None:
        summary = self._periods.summary_ms(self._period_ns)
        if summary is not None:
            rate, p50, p99, pmax, error_p99 = summary
            self.set("servo_period_error_ms_p99", error_p99)
            self.set("servo_rate_hz", rate)
            self.set("servo_period_ms_p50", p50)
            self.set("servo_period_ms_p99", p99)
            self.set("servo_period_ms_max", pmax)
        packages = self._packages.summary_ms(self._period_ns)
        if packages is not None:
            self.set("package_period_error_ms_p99", packages[4])


class ArmDriverProcess(DriverProcess):
    """The UR driver in its own supervised process, plus waypoint chunks and commands.

    :meth:`send_chunk` checks shapes and finiteness here (``ValueError``) and queues
    the chunk with its send time; the safety filter in the child accepts or rejects
    it (see ``stats()["chunks_accepted"]`` / ``["chunks_rejected"]`` and
    ``rejected_<reason>``). While the process restarts after a lost connection,
    :meth:`send_chunk` raises ``RuntimeError``; plan again from the new state.
    """

    def __init__(self, config: ArmDriverConfig, *, name: str = "arm") -> None:
        super().__init__(
            ArmDriver,
            config,
            name=name,
            restart_min_s=config.reconnect_min_s,
            restart_max_s=config.reconnect_max_s,
        )

    def send_chunk(self, t_ns: Any, poses: Any) -> None:
        """Queue waypoints: absolute host-monotonic stamps (N,) int ns and TCP poses (N, 6)."""
        t, p = validate_chunk(t_ns, poses)
        self.send(("chunk", t, p, now_ns()))

    def reset_fault(self) -> None:
        """Clear a latched fault once the robot is unlocked (re-uploads the script if needed)."""
        self.send(("reset",))

    def stop_motion(self) -> None:
        """servoStop and drop the plan."""
        self.send(("stop",))

    def teach_mode(self, on: bool) -> None:
        """Teach mode on (the arm stops, then can be moved by hand; state keeps streaming,
        chunks are refused with ``teach_mode``) or off (it holds; chunks accepted again)."""
        self.send(("teach", bool(on)))

    def reset_timing_stats(self) -> None:
        """Start the servo period statistics afresh (benchmarks: after a warm-up)."""
        self.send(("reset_stats",))


__all__ = [
    "FAULT_MASK",
    "ArmDriver",
    "ArmDriverConfig",
    "ArmDriverProcess",
    "ConnectionLostError",
    "validate_chunk",
]
