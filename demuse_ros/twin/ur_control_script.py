"""The rtde_control script's register protocol, emulated: one iteration of the uploaded
script's main loop per control cycle on the input/output registers
(:class:`ControlScriptEmulation`, mixed into
:class:`~demuse_ros.twin.ur_controller.URController`). The RTDE wire format it rides
on is :mod:`demuse_ros.twin.ur_rtde_protocol`. Source: hardware.md §1.
"""

from __future__ import annotations

import logging

import numpy as np

from demuse_ros.kinematics import IKError, URKinematics, matrix_to_pose, pose_to_matrix
from demuse_ros.twin.ur_motion import (
    Freedrive,
    JointMove,
    LinearMove,
    ServoTracker,
    SpeedJoint,
    SpeedLinear,
    StopJoint,
    StopLinear,
)
from demuse_ros.twin.ur_rtde_protocol import PLAYING, STOPPED

log = logging.getLogger(__name__)

# rtde_control script: command ids processed every cycle, and the stops that block.
RT_COMMANDS = frozenset({6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71})
SYNC_STOP_COMMANDS = frozenset({7, 15, 16, 42})
#: Moves, speeds, servos, jogs and stops: ignored (answered at once) in teach mode.
MOTION_COMMANDS = frozenset({1, 2, 3, 4, 9, 10, 11, 24, 33, 34, 41}) | SYNC_STOP_COMMANDS
_IK_TOL = 1e-10  # get_inverse_kin's default max position/orientation error


class ControlScriptEmulation:
    """The uploaded ``rtde_control.script`` main loop, one iteration per control cycle.

    A mixin of :class:`~demuse_ros.twin.ur_controller.URController` (it uses the
    controller's registers, kinematics, setpoint and motion state; see the module doc
    of ``ur_controller`` for the command list). Called under the controller's lock.
    Host attributes used: the register lists ``_in_int``/``_in_double``/``_out_int``/
    ``_out_double`` and offset ``_off``; script state ``_executing``, ``_busy``,
    ``_async_wr``/``_async_op``, ``_cmd_seq``/``_seen_seq``, the watchdog fields; the
    setpoint ``_q``/``_qd``, ``_motion``, measured ``_actual_q``/``_actual_qd``/
    ``_wrench``/``_torques``/``_history``; ``kin``, ``config``, ``period_s``; and the
    hooks ``_set_motion``, ``_protective_stop``, ``_script_error``, ``_end_script``.
    """

    def _check_watchdog(self) -> None:
        if self._cmd_seq != self._wd_seq:
            self._wd_seq, self._wd_last_s, self._wd_tripped = self._cmd_seq, self._time_s, False
        elif (
            self._watchdog_s > 0.0
            and not self._wd_tripped
            and self._time_s - self._wd_last_s > self._watchdog_s
        ):
            log.warning("UR twin: RTDE watchdog expired (%.3f s without input)", self._watchdog_s)
            self._wd_tripped = True  # a synchronous command in progress ends with the stop
            stop = StopJoint(self.config.stop_deceleration_rad_s2)
            self._set_motion(stop, sync=self._busy is not None)

    def _write_async(self, value: int) -> None:
        self._async_wr = self._async_wr + 1 if self._async_wr < 127 else 0
        if value == 0:
            self._async_op = self._async_op + 1 if self._async_op < 127 else 0
        reg = self._async_wr * 65536 + self._async_op * 16777216
        if value >= 0:
            reg += min(value, 32767) + 32768
        self._out_int[self._off + 2] = reg

    def _script_cycle(self) -> None:
        if self._busy is not None:  # blocked inside a synchronous process_cmd
            return
        off = self._off
        cmd = self._in_int[off]
        fresh = self._cmd_seq != self._seen_seq
        self._seen_seq = self._cmd_seq
        if cmd in RT_COMMANDS:
            if not self._wd_tripped:
                self._process(cmd, fresh)
            if self._runtime_state == PLAYING:
                self._out_int[off] = 1
        elif cmd == 0:
            self._executing = False
            self._out_int[off] = 1
        elif not self._executing:
            self._executing = True
            self._process(cmd, fresh)
            if cmd == 255:
                log.info("UR twin: received stop script")
                self._end_script(STOPPED)
            elif self._busy is None and self._runtime_state == PLAYING:
                self._out_int[off] = 2

    def _vec(self, i: int, n: int = 6) -> np.ndarray:
        return np.array(self._in_double[self._off + i : self._off + i + n], dtype=float)

    def _d(self, i: int) -> float:
        return float(self._in_double[self._off + i])

    def _n(self, i: int) -> int:
        return int(self._in_int[self._off + i])

    def _result(self, values: np.ndarray | list[float]) -> None:
        for i, v in enumerate(values):
            self._out_double[self._off + i] = float(v)

    def _flag_result(self, value: bool | int) -> None:
        self._out_int[self._off + 1] = int(value)

    def _ik(self, pose: np.ndarray, q_near: np.ndarray, pos_tol: float, ori_tol: float):
        return self.kin.ik(
            pose, q_near, max_position_error_m=pos_tol, max_orientation_error_rad=ori_tol
        )

    def _process(self, cmd: int, fresh: bool) -> None:
        try:
            self._dispatch(cmd, fresh)
        except IKError as exc:
            self._script_error(f"cmd {cmd}: {exc}")

    def _dispatch(self, cmd: int, fresh: bool) -> None:
        q_now, kin = self._q, self.kin
        assert q_now is not None
        if cmd in MOTION_COMMANDS and isinstance(self._motion, Freedrive):
            # "The robot will not be able to follow a trajectory in this mode" (URScript).
            if -cmd not in self._logged:
                self._logged.add(-cmd)
                log.warning("UR twin: command id %d ignored in teach mode", cmd)
            return
        if cmd in (1, 2, 3, 4):
            target, v, a, asynchronous = self._vec(0), self._d(6), self._d(7), self._n(1) == 1
            if cmd == 2:
                target = self._ik(target, self._actual_q, _IK_TOL, _IK_TOL)
            elif cmd == 4:
                target = kin.fk(target)
            if cmd in (1, 2):
                gen: object = JointMove(q_now, target, v, a, self._vmax)
            else:
                gen = LinearMove(kin, q_now, target, v, a)
            self._set_motion(gen, sync=not asynchronous, asynchronous=asynchronous)
        elif cmd in (11, 24):
            target = self._vec(0)
            if cmd == 24:
                key = tuple(target.tolist())
                cache = self._servol_cache
                if cache is None or cache[0] != key:
                    # Seeded at the previous servoL solution (a period away, same branch as the
                    # robot's default qnear = actual q, fewer iterations).
                    near = self._actual_q if cache is None else cache[1]
                    cache = self._servol_cache = (key, self._ik(target, near, 1e-9, 1e-9))
                target = cache[1]
            if not isinstance(self._motion, ServoTracker):
                self._set_motion(
                    ServoTracker(
                        q_now,
                        self._vmax,
                        self.config.joint_acceleration_limit_rad_s2,
                        self.config.servo_bandwidth_rad_s,
                    )
                )
            self._motion.set_target(target, self._d(9), self._d(10))  # type: ignore[union-attr]
        elif cmd in (9, 10, 41):
            linear = cmd != 9
            cls = SpeedLinear if linear else SpeedJoint
            if not isinstance(self._motion, cls) or cmd == 41:
                self._set_motion(
                    SpeedLinear(kin, q_now, self._qd, self._vmax)
                    if linear
                    else SpeedJoint(self._qd, self._vmax)
                )
                self._speed_linear = linear
            xd, a, t = self._vec(0), self._d(6), self._d(7)
            if cmd == 41:  # jogStart: speed in the base (0), tool (1) or custom (2) feature
                feature = int(self._d(6))
                frame = kin.fk(self._actual_q) if feature == 1 else self._vec(8)
                if feature in (1, 2):
                    rot = pose_to_matrix(frame)[:3, :3]
                    xd = np.concatenate([rot @ xd[:3], rot @ xd[3:]])
                a, t = self._d(7), 0.0
            self._motion.set_target(xd, a, t, fresh or cmd == 41)  # type: ignore[union-attr]
        elif cmd in (33, 34) or cmd in SYNC_STOP_COMMANDS:
            a = {7: 10.0, 42: 1.2}.get(cmd, self._d(0))
            linear = cmd in (7, 16, 33, 42) or (cmd == 15 and self._speed_linear)
            stop = StopLinear(kin, a) if linear else StopJoint(a)
            asynchronous = cmd in (33, 34) and self._n(1) == 1
            self._set_motion(stop, sync=not asynchronous, asynchronous=asynchronous)
        elif cmd == 8:
            self._ft_zero = self._wrench.copy()
            if self.on_zero_ft_sensor is not None:
                self._hooks.append(self.on_zero_ft_sensor)
        elif cmd in (17, 65):
            cog = self._vec(1, 3).tolist()
            if not any(cog):
                cog = self._payload[1:]
            self._payload = [self._d(0), *cog]
            if cmd == 65:
                self._payload_inertia = self._vec(4).tolist()
        elif cmd in (18, 52):  # teach_mode() / freedrive_mode(): the arm stops holding
            if not isinstance(self._motion, Freedrive):
                self._set_motion(Freedrive(kin, self._vmax, lambda: self._actual_q))
        elif cmd in (19, 53):  # end_teach_mode() / end_freedrive_mode(): hold where it is
            if isinstance(self._motion, Freedrive):
                self._q, self._qd = self._actual_q.copy(), np.zeros(6)
                self._set_motion(None)
        elif cmd == 54:
            self._flag_result(isinstance(self._motion, Freedrive))
        elif cmd in (20, 21, 59):
            self._flags[f"cmd{cmd}"] = self._vec(0, 3).tolist()
        elif cmd == 26:
            self._result([self.period_s])
        elif cmd == 27:
            steps = min(max(self._n(1), 0), len(self._history) - 1)
            self._result(self._history[-1 - steps])
        elif cmd == 28:
            waypoint = getattr(self._motion, "target_pose", None)
            if waypoint is None:
                target_q = getattr(self._motion, "target_q", None)
                waypoint = kin.fk(q_now if target_q is None else target_q)
            self._result(waypoint)
        elif cmd == 29:
            kin.set_tcp_offset(self._vec(0))
            self._servol_cache = None
        elif cmd in (30, 46, 60, 61):
            args = cmd in (30, 61)
            near = self._vec(6) if args else self._actual_q
            tols = (self._d(12), self._d(13)) if args else (_IK_TOL, _IK_TOL)
            tols = (max(tols[0], 1e-12), max(tols[1], 1e-12))
            if cmd in (30, 46):
                self._result(self._ik(self._vec(0), near, *tols))
            else:
                try:
                    self._flag_result(self._within_limits(self._ik(self._vec(0), near, *tols)))
                except IKError:
                    self._flag_result(0)
        elif cmd == 31:
            self._protective_stop("protectiveStop() requested by the client")
        elif cmd == 35:
            f = self._d(0)
            self._watchdog_s = 1.0 / f if f > 0.0 else 0.0
            self._wd_last_s, self._wd_tripped = self._time_s, False
        elif cmd == 36:
            try:
                q = self._ik(self._vec(0), self._actual_q, 1e-9, 1e-9)
                self._flag_result(self._within_limits(q))
            except IKError:
                self._flag_result(0)
        elif cmd == 37:
            self._flag_result(self._within_limits(self._vec(0)))
        elif cmd == 38:
            self._result(self._torques)
        elif cmd == 39:
            self._result(
                matrix_to_pose(pose_to_matrix(self._vec(0)) @ pose_to_matrix(self._vec(6)))
            )
        elif cmd == 40:
            self._result(kin.tcp_offset)
        elif cmd in (43, 44):
            if cmd == 43:
                self._result(kin.fk(self._actual_q))
            else:
                self._result(URKinematics(kin.model, self._vec(6)).fk(self._vec(0)))
        elif cmd == 47:
            speed = max(float(np.max(np.abs(self._actual_qd))), float(np.max(np.abs(self._qd))))
            self._flag_result(speed < self.config.steady_speed_rad_s and self._motion is None)
        elif cmd == 58:
            self._result(kin.flange_pose(self._actual_q))
        elif cmd != 255:
            if cmd == 25:
                self._flag_result(0)
            if cmd not in self._logged:
                self._logged.add(cmd)
                log.warning("UR twin: command id %d is not supported; answered without motion", cmd)

    def _within_limits(self, q: np.ndarray) -> bool:
        return bool(np.all(np.abs(q) <= self._qlim))
