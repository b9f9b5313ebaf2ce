"""ur_rtde's protocols as the emulated UR controller speaks them.

1. **RTDE wire format** (protocol version 2): packets, type tables, recipes, the
   output snapshot encoding (:class:`URSnapshot`, :func:`output_getter`).
2. **The rtde_control script's register protocol**
   (:class:`ControlScriptEmulation`, mixed into
   :class:`~demuse_ros.twin.ur_controller.URController`): one iteration of the
   uploaded script's main loop per control cycle on the input/output registers.

Framing: every packet is ``uint16 size`` (header included) + ``uint8 type`` +
payload, big-endian. Data packages ('U') are ``uint8 recipe_id`` followed by the
recipe's fields packed back-to-back.

Output variables are encoded with the types ur_rtde 1.6.5 decodes them with
(its static ``RobotState::state_types_`` table, which ignores the type names the
server returns): every ``vector<double>`` is VECTOR6D except the four VECTOR3D
ones below, ``robot_mode``/``safety_mode`` are INT32, ``joint_mode`` is
VECTOR6INT32, status words are UINT32 and the digital bit words UINT64. Names
missing from the tables here are answered ``NOT_FOUND``. Source: hardware.md §1.2–1.5.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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

log = logging.getLogger(__name__)

# Packet types.
REQUEST_PROTOCOL_VERSION = ord("V")
GET_URCONTROL_VERSION = ord("v")
TEXT_MESSAGE = ord("M")
DATA_PACKAGE = ord("U")
SETUP_OUTPUTS = ord("O")
SETUP_INPUTS = ord("I")
START = ord("S")
PAUSE = ord("P")

HEADER = struct.Struct(">HB")
NOT_FOUND = "NOT_FOUND"

# Per type: struct format characters of one value, and whether the value is a vector.
TYPE_FORMATS: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "B",
    "INT32": "i",
    "UINT32": "I",
    "UINT64": "Q",
    "DOUBLE": "d",
    "VECTOR3D": "ddd",
    "VECTOR6D": "dddddd",
    "VECTOR6INT32": "iiiiii",
    "VECTOR6UINT32": "IIIIII",
}

_VECTOR6D_OUT = (
    "target_q target_qd target_qdd target_current target_moment actual_q actual_qd actual_qdd "
    "actual_current actual_moment joint_control_output actual_TCP_pose actual_TCP_speed "
    "actual_TCP_force target_TCP_pose target_TCP_speed joint_temperatures actual_joint_voltage "
    "ft_raw_wrench actual_current_as_torque payload_inertia tcp_offset"
)
_DOUBLE_OUT = (
    "timestamp actual_execution_time speed_scaling target_speed_fraction actual_momentum "
    "actual_main_voltage actual_robot_voltage actual_robot_current standard_analog_input0 "
    "standard_analog_input1 standard_analog_output0 standard_analog_output1 payload "
    "tool_analog_input0 tool_analog_input1 tool_temperature io_current"
)
_UINT32_OUT = (
    "runtime_state robot_status_bits safety_status_bits output_bit_registers0_to_31 "
    "output_bit_registers32_to_63 tool_mode input_bit_registers0_to_31 input_bit_registers32_to_63"
)

OUTPUT_TYPES: dict[str, str] = {
    **dict.fromkeys(_VECTOR6D_OUT.split(), "VECTOR6D"),
    **dict.fromkeys(_DOUBLE_OUT.split(), "DOUBLE"),
    **dict.fromkeys(_UINT32_OUT.split(), "UINT32"),
    **dict.fromkeys(
        ["actual_tool_accelerometer", "payload_cog", "elbow_position", "elbow_velocity"], "VECTOR3D"
    ),
    **dict.fromkeys(
        [
            "robot_mode",
            "safety_mode",
            "safety_status",
            "tool_output_voltage",
            "tool_output_current",
        ],
        "INT32",
    ),
    **dict.fromkeys(
        [
            "actual_digital_input_bits",
            "actual_digital_output_bits",
            "actual_configurable_digital_input_bits",
            "actual_configurable_digital_output_bits",
        ],
        "UINT64",
    ),
    "joint_mode": "VECTOR6INT32",
    "tool_output_mode": "UINT8",
    **{f"output_int_register_{i}": "INT32" for i in range(48)},
    **{f"output_double_register_{i}": "DOUBLE" for i in range(48)},
    **{f"output_bit_register_{i}": "BOOL" for i in range(64, 128)},
    # Input registers can be read back as outputs.
    **{f"input_int_register_{i}": "INT32" for i in range(48)},
    **{f"input_double_register_{i}": "DOUBLE" for i in range(48)},
    **{f"input_bit_register_{i}": "BOOL" for i in range(64, 128)},
}

INPUT_TYPES: dict[str, str] = {
    **{f"input_int_register_{i}": "INT32" for i in range(48)},
    **{f"input_double_register_{i}": "DOUBLE" for i in range(48)},
    **{f"input_bit_register_{i}": "BOOL" for i in range(64, 128)},
    "input_bit_registers0_to_31": "UINT32",
    "input_bit_registers32_to_63": "UINT32",
    "speed_slider_mask": "UINT32",
    "speed_slider_fraction": "DOUBLE",
    **dict.fromkeys(
        [
            "standard_digital_output_mask",
            "standard_digital_output",
            "configurable_digital_output_mask",
            "configurable_digital_output",
            "tool_digital_output_mask",
            "tool_digital_output",
            "standard_analog_output_mask",
            "standard_analog_output_type",
        ],
        "UINT8",
    ),
    "standard_analog_output_0": "DOUBLE",
    "standard_analog_output_1": "DOUBLE",
    "external_force_torque": "VECTOR6D",
}

ROBOT_MODE_NAMES = {
    -1: "NO_CONTROLLER",
    0: "DISCONNECTED",
    1: "CONFIRM_SAFETY",
    2: "BOOTING",
    3: "POWER_OFF",
    4: "POWER_ON",
    5: "IDLE",
    6: "BACKDRIVE",
    7: "RUNNING",
    8: "UPDATING_FIRMWARE",
}
SAFETY_MODE_NAMES = {
    1: "NORMAL",
    2: "REDUCED",
    3: "PROTECTIVE_STOP",
    4: "RECOVERY",
    5: "SAFEGUARD_STOP",
    6: "SYSTEM_EMERGENCY_STOP",
    7: "ROBOT_EMERGENCY_STOP",
    8: "VIOLATION",
    9: "FAULT",
}

# rtde_control script: command ids processed every cycle, and the stops that block.
RT_COMMANDS = frozenset({6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71})
SYNC_STOP_COMMANDS = frozenset({7, 15, 16, 42})
#: Moves, speeds, servos, jogs and stops: ignored (answered at once) in teach mode.
MOTION_COMMANDS = frozenset({1, 2, 3, 4, 9, 10, 11, 24, 33, 34, 41}) | SYNC_STOP_COMMANDS
STOPPED, PLAYING, PAUSED = 1, 2, 4  # runtime_state
_IK_TOL = 1e-10  # get_inverse_kin's default max position/orientation error

_OFFSET_RE = re.compile(rb"reg_offset_int = # int register offset\r?\n(\d+)")
SCRIPT_HEADER = b"def rtde_control():"


def packet(ptype: int, payload: bytes = b"") -> bytes:
    """One framed RTDE packet."""
    return HEADER.pack(len(payload) + HEADER.size, ptype) + payload


def version_reply(version: Sequence[int]) -> bytes:
    """'v' reply: ``uint32 major, minor, bugfix, build``."""
    return packet(GET_URCONTROL_VERSION, struct.pack(">IIII", *version))


def parse_names(text: bytes) -> list[str]:
    """Comma-separated variable names; empty items (ur_rtde's trailing comma) dropped."""
    return [n.strip() for n in text.decode("ascii", "replace").split(",") if n.strip()]


def parse_register_offset(script: bytes) -> int:
    """Register offset (0 or 24) that ur_rtde injected into its control script."""
    m = _OFFSET_RE.search(script)
    return int(m.group(1)) if m else 0


class Recipe:
    """A set of named fields with known types: encodes or decodes one 'U' package body.

    ``types`` holds ``NOT_FOUND`` for unknown names; such a recipe is not ``valid``.
    """

    def __init__(self, names: Iterable[str], table: dict[str, str]) -> None:
        self.names = list(names)
        self.types = [table.get(n, NOT_FOUND) for n in self.names]
        self.valid = bool(self.names) and NOT_FOUND not in self.types
        fmt = "".join(TYPE_FORMATS.get(t, "") for t in self.types)
        self.struct = struct.Struct(">B" + fmt)
        self._widths = [len(TYPE_FORMATS.get(t, "")) for t in self.types]

    def reply(self, recipe_id: int) -> bytes:
        """Body of the 'O'/'I' reply: recipe id + comma-joined type names."""
        return bytes([recipe_id & 0xFF]) + ",".join(self.types).encode("ascii")

    def encode(self, recipe_id: int, values: Sequence[object]) -> bytes:
        """A framed 'U' packet from flat values (vectors already expanded)."""
        return packet(DATA_PACKAGE, self.struct.pack(recipe_id, *values))

    def decode(self, body: bytes) -> dict[str, object]:
        """``{name: value}`` from a 'U' body (recipe id included); vectors as tuples.

        Raises:
            struct.error: The body does not have the recipe's size.
        """
        flat = self.struct.unpack(body)
        out: dict[str, object] = {}
        i = 1
        for name, width in zip(self.names, self._widths, strict=True):
            out[name] = flat[i] if width == 1 else tuple(flat[i : i + width])
            i += width
        return out


@dataclass(frozen=True)
class URSnapshot:
    """Output state after a cycle; ``values`` maps non-register output names to flat lists."""

    values: dict[str, list]
    out_int: tuple[int, ...]
    out_double: tuple[float, ...]
    in_int: tuple[int, ...]
    in_double: tuple[float, ...]
    out_bits: int
    in_bits: int


_REGISTER = re.compile(r"(output|input)_(int|double|bit)_register_(\d+)$")


def _zero(type_name: str) -> list:
    fmt = TYPE_FORMATS[type_name]
    return [0.0 if c == "d" else (False if c == "?" else 0) for c in fmt]


OUTPUT_DEFAULTS: dict[str, list] = {
    n: _zero(t) for n, t in OUTPUT_TYPES.items() if not _REGISTER.match(n)
}


def output_getter(name: str) -> Callable[[URSnapshot], list] | None:
    """Function extracting output ``name`` (flat list) from a snapshot; None if unknown."""
    if name not in OUTPUT_TYPES:
        return None
    m = _REGISTER.match(name)
    if not m:
        return lambda s: s.values[name]
    io, kind, i = m.group(1), m.group(2), int(m.group(3))
    if kind == "bit":
        attr = "out_bits" if io == "output" else "in_bits"
        return lambda s: [bool((getattr(s, attr) >> (i - 64)) & 1)]
    attr = ("out_" if io == "output" else "in_") + kind
    return lambda s: [getattr(s, attr)[i]]


INPUT_SLOTS: dict[str, tuple[str, int]] = {
    **{f"input_int_register_{i}": ("int", i) for i in range(48)},
    **{f"input_double_register_{i}": ("double", i) for i in range(48)},
}


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
