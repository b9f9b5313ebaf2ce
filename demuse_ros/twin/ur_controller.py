"""Emulated UR controller: robot/safety/runtime state, the ``rtde_control`` script, motion.

:class:`URController` is what ur_rtde talks to through :mod:`.ur_servers`. Each
:meth:`URController.tick` is one controller cycle (8 ms CB3 / 2 ms e-Series): read
the plant, check safety, run one iteration of the emulated ``rtde_control.script``
main loop on the input registers, step the active motion generator
(:mod:`.ur_motion`) and command **one** joint setpoint with
``plant.set_joint_setpoint``. It never steps the plant and never reads a clock: the
runner does ``controller.tick(); plant.step(period); servers.publish()``.

Script emulation (:class:`~demuse_ros.twin.ur_control_script.ControlScriptEmulation`,
hardware.md §1.7; register indices + the offset 0/24 parsed from the upload):
``cmd = input_int_register_0``; real-time commands are processed every cycle while
the register holds them (``output_int_register_0`` = 1); cmd 0 clears
``executing``; any other command runs once and then sets ``output_int_register_0`` = 2,
synchronous motions (moveJ/L, stopJ/L, servoStop, speedStop, jogStop) only when the
motion has ended, as the script's blocking ``movel`` does. Async moves report through
``output_int_register_2`` (op id, change counter, running bit). Results go to
``output_double_register_0..5`` / ``output_int_register_1``. Cmd 255 ends the script
(``runtime_state`` 1).

Supported command ids: 1 moveJ, 2 moveJ_IK, 3 moveL, 4 moveL_FK, 7 forceModeStop (a
stopl(10)), 8 zeroFtSensor (calls ``on_zero_ft_sensor``; ``actual_TCP_force`` is
reported relative to the wrench at that moment), 9 speedJ, 10 speedL, 11 servoJ,
15 speedStop, 16 servoStop, 17 setPayload, 18/19 teachMode/endTeachMode and 52/53/54
freedrive (see below), 20/21 force-mode damping/gain scaling
(recorded), 24 servoL, 26 getStepTime, 27 getActualJointPositionsHistory,
28 getTargetWaypoint, 29 setTcp, 30/46 getInverseKinematics, 31 protectiveStop,
33 stopL, 34 stopJ, 35 setWatchdog (when no packet writes the command register for
1/min_frequency s the motion is stopped, as stopj; real-time commands resume on the
next packet), 36/37 is*WithinSafetyLimits, 38 getJointTorques, 39 poseTrans,
40 getTCPOffset, 41/42 jogStart/jogStop, 43/44 getForwardKinematics, 47 isSteady,
58 getActualToolFlangePose, 59 setGravity (recorded), 60/61 IK has solution,
65 setTargetPayload, 255 stopScript.

Unsupported (answered without motion, logged once, so clients do not hang): 6 forceMode,
12 servoC, 25 toolContact (returns 0), 45 movePath, 51 moveUntilContact,
55 setExternalForceTorque, 56/57 external FT sensor, 62–64 contact detection,
66 directTorque, 67–71 dynamics queries, 254, and any other id.

Quirk kept as on the robot: cmd 44 reads the TCP offset from ``input_double_register_6..11``,
but ur_rtde 1.6.5's ``getForwardKinematics(q)`` without ``tcp_offset`` sends only
registers 0..5, so the offset is whatever 6..11 last held (e.g. moveL's speed and
acceleration); pass ``tcp_offset`` explicitly.

Teach mode (18 ``teachMode``, 52 ``freedriveMode``; free axes and feature are not
modelled): the arm stops holding its position (:class:`~.ur_motion.Freedrive`: the
setpoint follows the measured joints) and follows an operator's hand, which the twin
stands in for with :meth:`URController.guide_tcp`. Moves, servo/speed commands and
stops are ignored meanwhile ("the robot will not be able to follow a trajectory"),
19/53 end it (the arm holds where it is), and so does the end of the script.

An IK failure inside a command (servoL, moveL, getInverseKinematics) is a script
runtime error, as on the robot: the script stops (``runtime_state`` 1).

Protective stop: raised by ``arm_state().in_collision``, by ``|tcp_wrench[:3]|`` above
``force_limit_n``, by a joint setpoint leaving the position limits, or by cmd 31.
``safety_mode`` 3, ``safety_status_bits`` bits 2 and 10, the arm holds its measured
position, a playing script pauses (``runtime_state`` 4) so every ur_rtde command
returns False. Only :meth:`URController.unlock_protective_stop` (dashboard
``unlock protective stop``) clears it; the script is then stopped (``runtime_state``
1) and ``rtde_c.reuploadScript()`` (or ``disconnect()`` + ``reconnect()``) starts it again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from demuse_ros.config import param, validate_fields
from demuse_ros.kinematics import MODELS, IKError, URKinematics
from demuse_ros.twin.interface import PERSONALITIES, Personality, Plant
from demuse_ros.twin.ur_control_script import ControlScriptEmulation
from demuse_ros.twin.ur_motion import Freedrive, Motion, StopJoint
from demuse_ros.twin.ur_rtde_protocol import (
    INPUT_SLOTS,
    OUTPUT_DEFAULTS,
    PAUSED,
    PLAYING,
    STOPPED,
    URSnapshot,
)

log = logging.getLogger(__name__)

ROBOT_RUNNING, ROBOT_POWER_OFF, ROBOT_IDLE = 7, 3, 5
SAFETY_NORMAL, SAFETY_PROTECTIVE_STOP = 1, 3
_PSTOP_BITS = (1 << 2) | (1 << 10)


@dataclass(frozen=True)
class URControllerConfig:
    """Behaviour of the emulated UR controller (the arm model comes from the personality)."""

    personality: str = param(
        "cb3",
        doc="Controller personality (version, rate, arm model).",
        choices=tuple(PERSONALITIES),
    )
    force_limit_n: float = param(
        150.0, doc="TCP force magnitude that raises a protective stop.", unit="N", range=(1.0, 1e4)
    )
    joint_acceleration_limit_rad_s2: float = param(
        40.0, doc="Joint acceleration limit of servo tracking.", unit="rad/s^2", range=(0.1, 1e3)
    )
    servo_bandwidth_rad_s: float = param(
        50.0,
        doc="Bandwidth of the servoj tracking filter at gain 300 and lookahead 0.1 s.",
        unit="rad/s",
        range=(1.0, 1e4),
    )
    stop_deceleration_rad_s2: float = param(
        10.0,
        doc="Deceleration when a program stops, pauses or the watchdog trips.",
        unit="rad/s^2",
        range=(0.1, 1e3),
    )
    steady_speed_rad_s: float = param(
        1e-3, doc="Joint speed below which isSteady reports true.", unit="rad/s", range=(0.0, 1.0)
    )
    serial_number: str = param("20185500001", doc="Dashboard 'get serial number' reply (digits).")
    remote_control: bool = param(True, doc="Dashboard 'is in remote control' answer.")
    powered_on: bool = param(True, doc="Start powered on with brakes released (RUNNING).")
    boot_time_s: float = param(
        0.0, doc="Controller timestamp before the first tick.", unit="s", range=(0.0, 1e9)
    )
    joint_history: int = param(
        1000, doc="Cycles kept for getActualJointPositionsHistory.", range=(1, 1_000_000)
    )

    def __post_init__(self) -> None:
        validate_fields(self)


class URController(ControlScriptEmulation):
    """UR controller state machine driving one arm of a :class:`~demuse_ros.twin.interface.Plant`.

    Thread-safe: RTDE/dashboard/script server threads call :meth:`write_inputs`,
    :meth:`start_script` and the dashboard methods while the runner calls
    :meth:`tick`; one lock guards the state. :meth:`snapshot` reads the plant and
    must be called from the runner thread (after ``plant.step``).

    Args:
        plant: Only ``set_joint_setpoint`` and ``arm_state`` are used.
        config: Behaviour; ``config.personality`` unless ``personality`` is given.
        personality: Overrides the configured personality.
        on_zero_ft_sensor: Called (outside the lock) when ur_rtde sends zeroFtSensor.
    """

    def __init__(
        self,
        plant: Plant,
        config: URControllerConfig | None = None,
        *,
        personality: Personality | None = None,
        on_zero_ft_sensor: Callable[[], None] | None = None,
    ) -> None:
        self.config = config or URControllerConfig()
        self.personality = personality or PERSONALITIES[self.config.personality]
        self.period_s = self.personality.control_period_s
        self.kin = URKinematics(MODELS[self.personality.arm_model])
        self.on_zero_ft_sensor = on_zero_ft_sensor
        self._plant = plant
        self._lock = threading.Lock()
        model = self.kin.model
        self._vmax = np.asarray(model.joint_velocity_limits_rad_s, dtype=float)
        self._qlim = np.asarray(model.joint_position_limits_rad, dtype=float)
        self._in_int, self._in_double = [0] * 48, [0.0] * 48
        self._out_int, self._out_double = [0] * 48, [0.0] * 48
        self._in_bits = self._out_bits = self._digital_out = 0
        self._analog_out = [0.0, 0.0]
        self._speed_slider = 1.0
        self._robot_mode = ROBOT_RUNNING if self.config.powered_on else ROBOT_POWER_OFF
        self._safety_mode, self._safety_bits = SAFETY_NORMAL, 1
        self._runtime_state = STOPPED
        self._off = 0
        self._script_loaded = False
        self._executing = False
        self._busy: Motion | None = None  # generator of the synchronous command running
        self._async: Motion | None = None  # generator of the async move running
        self._async_wr = self._async_op = 0
        self._cmd_seq = self._seen_seq = self._wd_seq = 0
        self._watchdog_s, self._wd_last_s, self._wd_tripped = 0.0, 0.0, False
        self._motion: Motion | None = None
        self._speed_linear = False
        self._servol_cache: tuple[tuple[float, ...], np.ndarray] | None = None
        self._q: np.ndarray | None = None  # last setpoint
        self._qd, self._qdd = np.zeros(6), np.zeros(6)
        self._ticks = 0
        self._time_s = self.config.boot_time_s
        self._history: deque[np.ndarray] = deque(maxlen=self.config.joint_history)
        self._actual_q, self._actual_qd = np.zeros(6), np.zeros(6)
        self._torques, self._wrench = np.zeros(6), np.zeros(6)
        self._ft_zero = np.zeros(6)
        self._payload = [0.0, 0.0, 0.0, 0.0]
        self._payload_inertia = [0.0] * 6
        self._flags: dict[str, object] = {}
        self._logged: set[int] = set()
        self._hooks: list[Callable[[], None]] = []
        self.protective_stop_reason = ""

    # ----------------------------------------------------------------- state
    @property
    def time_s(self) -> float:
        """Controller time since boot (s), advanced by one period per tick."""
        return self._time_s

    @property
    def robot_mode(self) -> int:
        return self._robot_mode

    @property
    def safety_mode(self) -> int:
        return self._safety_mode

    @property
    def runtime_state(self) -> int:
        return self._runtime_state

    @property
    def register_offset(self) -> int:
        return self._off

    # ------------------------------------------------------------ server side
    def write_inputs(self, values: Mapping[str, Any]) -> None:
        """Apply one RTDE input package (``{name: value}``) to the input registers and IO."""
        get = values.get
        with self._lock:
            for name, value in values.items():
                slot = INPUT_SLOTS.get(name)
                if slot is not None:
                    (self._in_int if slot[0] == "int" else self._in_double)[slot[1]] = value
            low, high = get("input_bit_registers0_to_31"), get("input_bit_registers32_to_63")
            if low is not None:
                self._in_bits = (self._in_bits & ~0xFFFFFFFF) | int(low)
            if high is not None:
                self._in_bits = (self._in_bits & 0xFFFFFFFF) | (int(high) << 32)
            if f"input_int_register_{self._off}" in values:
                self._cmd_seq += 1  # a command packet (watchdog, speed time limits)
            for prefix, shift in (("standard", 0), ("configurable", 8), ("tool", 16)):
                mask = int(get(f"{prefix}_digital_output_mask", 0))
                bits = int(get(f"{prefix}_digital_output", 0)) & mask
                self._digital_out = (self._digital_out & ~(mask << shift)) | (bits << shift)
            if int(get("speed_slider_mask", 0)) & 1:
                self._speed_slider = float(get("speed_slider_fraction", 1.0))
            analog_mask = int(get("standard_analog_output_mask", 0))
            for i in (0, 1):
                if analog_mask & (1 << i):
                    self._analog_out[i] = float(get(f"standard_analog_output_{i}", 0.0))

    def start_script(self, register_offset: int = 0) -> bool:
        """The rtde_control script arrived on the script port: start it (False if refused)."""
        with self._lock:
            if self._safety_mode != SAFETY_NORMAL or self._robot_mode != ROBOT_RUNNING:
                log.warning(
                    "UR twin: script upload refused (robot mode %d, safety mode %d)",
                    self._robot_mode,
                    self._safety_mode,
                )
                return False
            self._off, self._script_loaded = register_offset, True
            self._begin_script()
            return True

    def _begin_script(self) -> None:
        self._runtime_state = PLAYING
        self._executing, self._busy, self._async = False, None, None
        self._async_wr = self._async_op = 0
        self._watchdog_s, self._wd_tripped = 0.0, False
        self._seen_seq = self._cmd_seq
        if self._motion is not None and self._motion.kind != "stop":
            self._motion = None
        self._write_async(-1)  # reset_async_progress()
        self._out_int[self._off] = 1  # signal_ready()

    def _end_script(self, runtime_state: int = STOPPED) -> None:
        if self._runtime_state == PLAYING or runtime_state == STOPPED:
            self._runtime_state = runtime_state
        self._busy = None
        if self._async is not None:
            self._write_async(-1)
            self._async = None
        if runtime_state == STOPPED:
            self._out_int[self._off] = 0
        if self._motion is not None or np.any(self._qd):
            self._motion = StopJoint(self.config.stop_deceleration_rad_s2)

    # --------------------------------------------------------------- dashboard
    def stop_program(self) -> None:
        """Dashboard ``stop``."""
        with self._lock:
            self._end_script(STOPPED)

    def pause_program(self) -> bool:
        """Dashboard ``pause``; False when no program is playing."""
        with self._lock:
            if self._runtime_state != PLAYING:
                return False
            self._end_script(PAUSED)
            return True

    def play_program(self) -> bool:
        """Dashboard ``play``: resume a paused script or restart the last uploaded one."""
        with self._lock:
            if not self._script_loaded or self._safety_mode != SAFETY_NORMAL:
                return False
            if self._robot_mode != ROBOT_RUNNING:
                return False
            if self._runtime_state == PAUSED:
                self._runtime_state, self._busy = PLAYING, None
            elif self._runtime_state != PLAYING:
                self._begin_script()
            return True

    def unlock_protective_stop(self) -> None:
        """Dashboard ``unlock protective stop``: safety back to normal, script stopped."""
        with self._lock:
            if self._safety_mode != SAFETY_PROTECTIVE_STOP:
                return
            log.info("UR twin: protective stop released")
            self._safety_mode, self._safety_bits = SAFETY_NORMAL, 1
            self.protective_stop_reason = ""
            self._end_script(STOPPED)
            self._motion = None

    def set_power(self, on: bool) -> None:
        """Dashboard ``power on`` (→ IDLE) / ``power off`` (→ POWER_OFF, script stopped)."""
        with self._lock:
            if not on:
                self._end_script(STOPPED)
                self._motion, self._robot_mode = None, ROBOT_POWER_OFF
            elif self._robot_mode == ROBOT_POWER_OFF:
                self._robot_mode = ROBOT_IDLE

    def brake_release(self) -> None:
        """Dashboard ``brake release``: IDLE → RUNNING."""
        with self._lock:
            if self._robot_mode in (ROBOT_IDLE, 4):
                self._robot_mode = ROBOT_RUNNING

    def guide_tcp(self, twist: Any, seconds: float) -> bool:
        """An operator's hand moves the tool at ``twist`` (base frame, m/s and rad/s) for
        ``seconds``. Only a compliant arm follows (teach mode); False otherwise."""
        with self._lock:
            motion = self._motion
            if not isinstance(motion, Freedrive) or self._q is None:
                return False
            motion.guide(self._q, self._qd, np.asarray(twist, dtype=float), float(seconds))
            return True

    def trigger_protective_stop(self, reason: str) -> None:
        """Raise a protective stop now (as a safety violation would)."""
        with self._lock:
            self._protective_stop(reason)

    def _protective_stop(self, reason: str) -> None:
        if self._safety_mode == SAFETY_PROTECTIVE_STOP:
            return
        log.warning("UR twin: protective stop: %s", reason)
        self.protective_stop_reason = reason
        self._safety_mode, self._safety_bits = SAFETY_PROTECTIVE_STOP, _PSTOP_BITS
        self._end_script(PAUSED)
        self._motion = None
        self._q, self._qd = self._actual_q.copy(), np.zeros(6)

    # -------------------------------------------------------------------- tick
    def tick(self) -> None:
        """One control period: safety, script cycle, one joint setpoint to the plant."""
        with self._lock:
            self._tick_locked()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def _tick_locked(self) -> None:
        st = self._plant.arm_state()
        self._actual_q, self._actual_qd = np.array(st.q, dtype=float), np.array(st.qd, dtype=float)
        self._torques, self._wrench = np.asarray(st.joint_torques_nm), np.asarray(st.tcp_wrench)
        if self._q is None:
            self._q = self._actual_q.copy()
        self._ticks += 1
        self._time_s = self.config.boot_time_s + self._ticks * self.period_s
        self._history.append(self._actual_q)
        if self._safety_mode == SAFETY_NORMAL:
            if st.in_collision:
                self._protective_stop("arm in collision")
            elif float(np.linalg.norm(self._wrench[:3])) > self.config.force_limit_n:
                self._protective_stop(
                    f"TCP force {np.linalg.norm(self._wrench[:3]):.1f} N "
                    f"> limit {self.config.force_limit_n:.1f} N"
                )
        if self._runtime_state == PLAYING:
            self._check_watchdog()
            self._script_cycle()
        q, qd = self._generate()
        self._plant.set_joint_setpoint(q.copy(), qd.copy())

    def _generate(self) -> tuple[np.ndarray, np.ndarray]:
        q0, qd0, dt = self._q, self._qd, self.period_s
        assert q0 is not None
        motion = self._motion
        if self._safety_mode != SAFETY_NORMAL or self._robot_mode != ROBOT_RUNNING:
            motion = self._motion = None
        if motion is None:
            q, qd, done = q0, np.zeros(6), False
        else:
            try:
                q, qd, done = motion.step(q0, qd0, dt)
            except IKError as exc:
                motion = self._script_error(f"movel: {exc}")
                q, qd, done = motion.step(q0, qd0, dt)
        if np.any((np.abs(q) > self._qlim) & (np.abs(q) > np.abs(q0))):
            self._protective_stop("joint position limit")
            q, qd, done = self._q, np.zeros(6), False
        if done and motion is self._motion:
            self._motion = None
            if motion is self._async:
                self._async = None
                self._write_async(-1)
            if motion is self._busy:
                self._busy, self._executing = None, True
                self._out_int[self._off] = 2  # signal_done_with_cmd()
        self._qdd = (qd - qd0) / dt
        self._q, self._qd = q, qd
        return q, qd

    def _script_error(self, message: str) -> Motion:
        log.error("UR twin: rtde_control script error, program stopped: %s", message)
        self._end_script(STOPPED)
        self._motion = StopJoint(self.config.stop_deceleration_rad_s2)
        return self._motion

    def _set_motion(
        self, gen: Motion | None, *, sync: bool = False, asynchronous: bool = False
    ) -> None:
        if self._async is not None and self._async is not gen:  # stop_async_move()
            self._write_async(-1)
            self._async = None
        self._motion = gen
        if asynchronous:
            self._async = gen
            self._write_async(0)
        elif sync:
            self._busy = gen

    # ------------------------------------------------------------------ output
    def snapshot(self) -> URSnapshot:
        """Output variables now (reads the plant: call from the runner thread)."""
        st = self._plant.arm_state()
        with self._lock:
            kin = self.kin
            q, qd = np.asarray(st.q, dtype=float), np.asarray(st.qd, dtype=float)
            tq = self._actual_q if self._q is None else self._q
            wrench = np.asarray(st.tcp_wrench, dtype=float)
            torques = np.asarray(st.joint_torques_nm, dtype=float).tolist()
            fa, ft = kin.frames(q), kin.frames(tq)
            running = self._runtime_state == PLAYING
            powered = self._robot_mode in (4, 5, 6, 7)
            v = dict(OUTPUT_DEFAULTS)
            v.update(
                timestamp=[self._time_s],
                target_q=tq.tolist(),
                target_qd=self._qd.tolist(),
                target_qdd=self._qdd.tolist(),
                target_moment=torques,
                actual_current_as_torque=torques,
                actual_q=q.tolist(),
                actual_qd=qd.tolist(),
                actual_TCP_pose=kin.fk(q, fa).tolist(),
                actual_TCP_speed=(kin.jacobian(q, fa) @ qd).tolist(),
                actual_TCP_force=(wrench - self._ft_zero).tolist(),
                ft_raw_wrench=wrench.tolist(),
                target_TCP_pose=kin.fk(tq, ft).tolist(),
                target_TCP_speed=(kin.jacobian(tq, ft) @ self._qd).tolist(),
                elbow_position=fa[2][:3, 3].tolist(),
                robot_mode=[self._robot_mode],
                safety_mode=[self._safety_mode],
                safety_status=[self._safety_mode],
                joint_mode=[253 if powered else 239] * 6,  # RUNNING / POWER_OFF (unverified)
                runtime_state=[self._runtime_state],
                robot_status_bits=[int(powered) | (int(running) << 1)],
                safety_status_bits=[self._safety_bits],
                speed_scaling=[1.0],
                target_speed_fraction=[self._speed_slider],
                actual_digital_output_bits=[self._digital_out],
                standard_analog_output0=[self._analog_out[0]],
                standard_analog_output1=[self._analog_out[1]],
                payload=[self._payload[0]],
                payload_cog=self._payload[1:],
                payload_inertia=list(self._payload_inertia),
                tcp_offset=kin.tcp_offset.tolist(),
                joint_temperatures=[30.0] * 6,
                actual_joint_voltage=[48.0] * 6,
                actual_main_voltage=[48.0],
                actual_robot_voltage=[48.0],
                actual_tool_accelerometer=[0.0, 0.0, 9.81],
                actual_execution_time=[0.2],
                output_bit_registers0_to_31=[self._out_bits & 0xFFFFFFFF],
                output_bit_registers32_to_63=[(self._out_bits >> 32) & 0xFFFFFFFF],
                input_bit_registers0_to_31=[self._in_bits & 0xFFFFFFFF],
                input_bit_registers32_to_63=[(self._in_bits >> 32) & 0xFFFFFFFF],
            )
            return URSnapshot(
                v,
                tuple(self._out_int),
                tuple(self._out_double),
                tuple(self._in_int),
                tuple(self._in_double),
                self._out_bits,
                self._in_bits,
            )
