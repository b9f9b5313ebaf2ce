"""ur_rtde's protocols as the emulated UR controller speaks them.

1. **RTDE wire format** (protocol version 2): packets, type tables, recipes, the
   output snapshot encoding (:class:`URSnapshot`, :func:`output_getter`).
2. **The rtde_control script's upload**: its header and register offset
   (:func:`parse_register_offset`); the script's register protocol itself is
   emulated in :mod:`demuse_ros.twin.ur_control_script`.

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

import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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

STOPPED, PLAYING, PAUSED = 1, 2, 4  # runtime_state

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
