"""The OnRobot RG2-FT compute box as a register bank (no sockets).

:class:`RG2FTRegisters` holds the 16-bit registers of unit 65 (the gripper) and
unit 63 (the compute box) and maps them to the plant, per ``hardware.md`` §2.2:

* **commands** (unit 65): 0 zero F/T, 2 target force (0.1 N), 3 target width
  (0.1 mm), 4 control (1 grip, 0 stop), 5/6 proximity offsets (0.1 mm);
* **state** (unit 65, block 257..282): per-finger status, Fx/Fy/Fz (int16,
  0.1 N), Tx/Ty/Tz (int16, 0.01 N·m), proximity status/value (0.1 mm), width
  (0.1 mm), busy, grip detected;
* unit 63 register 0: writing 2 power-cycles the tool.

The bank is the single source of truth: the Modbus server
(:mod:`demuse_ros.twin.modbus_server`) forwards every client read and write to
:meth:`RG2FTRegisters.read`/:meth:`RG2FTRegisters.write`, and a lockstep runner
calls them directly. The twin's step loop calls :meth:`apply` (commands -> plant)
before stepping the plant and :meth:`update` (plant -> registers) after. All
methods are thread-safe; the lock is held only for list copies, never while the
plant is called.

Choices where the device's behaviour is not documented (``hardware.md`` §5):

* Commands are edge-triggered: a *write* to register 4 is an event, decided
  when the write arrives. Writing 1 while busy is ignored (counted in
  :attr:`RG2FTRegisters.ignored_commands`); writing 0 stops, busy or not. The
  target force/width are latched at that moment and reach the plant at the next
  :meth:`~RG2FTRegisters.apply`. Register 4 keeps the written 1 while the
  fingers move and is cleared to 0 when the motion ends (as the clearpath
  simulator does), so a driver that reads it back sees 1 only while a grip runs.
* Busy reads 1 from the accepted write on (so "write, then poll busy until 0"
  never sees a stale 0), then follows the plant's ``moving``.
* Register 0: each write of 1 stores the raw fingertip readings of the next
  :meth:`update` as the offset (subtracted from then on); 0 clears the offset.
  The register reads back what was written.
* Quantization rounds half away from zero. A value outside int16 saturates and
  sets :data:`STATUS_SATURATED` in that finger's status word (257 left, 266
  right); a non-finite value reads 0 and sets :data:`STATUS_INVALID`. Both are
  twin conventions (OnRobot's status codes are not public); 0 means ok.
* Proximity: each fingertip sees the other finger (value = opening) or, with a
  grip detected, the object (value 0), capped at ``proximity_range_m``, minus the
  offset in register 5/6, clamped at 0.
* Writes into the state block (addresses >= 256) are refused with
  ILLEGAL_ADDRESS; writes below it are stored (unknown registers just hold data).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from demuse_ros.config.schema import param, validate_fields

if TYPE_CHECKING:
    from demuse_ros.twin.interface import GripperPlantState, Plant

# Unit 65 command registers.
REG_ZERO = 0
REG_TARGET_FORCE = 2
REG_TARGET_WIDTH = 3
REG_CONTROL = 4
REG_PROX_OFFSET_L = 5
REG_PROX_OFFSET_R = 6
# Unit 65 state block.
STATE_START = 257
STATE_COUNT = 26
REG_STATUS_L = 257
REG_FT_L = 259  # Fx, Fy, Fz, Tx, Ty, Tz
REG_STATUS_R = 266
REG_FT_R = 268
REG_PROX_STATUS_L = 274
REG_PROX_L = 275
REG_PROX_STATUS_R = 277
REG_PROX_R = 278
REG_WIDTH = 280
REG_BUSY = 281
REG_GRIP_DETECTED = 282
WRITABLE_END = 256  # writes must end below this address
# Unit 63.
REG_BOX_RESTART = 0
BOX_POWER_CYCLE = 2

CONTROL_GRIP = 1
CONTROL_STOP = 0
STATUS_SATURATED = 0x0001
STATUS_INVALID = 0x0002
ILLEGAL_ADDRESS = 2  # Modbus exception codes
DEVICE_FAILURE = 4

# Register units of the six wrench channels: 0.1 N for forces, 0.01 N·m for torques.
_FT_SCALES = (10.0, 10.0, 10.0, 100.0, 100.0, 100.0)
_FT_SCALE = np.array(_FT_SCALES)


class RegisterAccessError(Exception):
    """A read or write the device refuses; ``code`` is the Modbus exception code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RG2FTConfig:
    """The emulated RG2-FT compute box."""

    gripper_unit_id: int = param(65, doc="Modbus unit id of the gripper.", range=(1, 247))
    box_unit_id: int = param(63, doc="Modbus unit id of the compute box.", range=(1, 247))
    register_count: int = param(
        300, doc="Registers of the gripper unit (addresses 0..count-1).", range=(283, 65536)
    )
    box_register_count: int = param(10, doc="Registers of the compute box unit.", range=(1, 65536))
    max_force_n: float = param(40.0, doc="Largest target force accepted.", unit="N", range=(0, 400))
    max_width_m: float = param(
        0.100, doc="Largest target width accepted.", unit="m", range=(0.0, 0.2)
    )
    proximity_range_m: float = param(
        0.100, doc="Largest distance the proximity sensors report.", unit="m", range=(0.0, 1.0)
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.gripper_unit_id == self.box_unit_id:
            raise ValueError("gripper_unit_id and box_unit_id must differ")


def to_register(value: int) -> int:
    """A signed int16 as the unsigned 16-bit register word (two's complement)."""
    return int(value) & 0xFFFF


def from_register(word: int) -> int:
    """The signed int16 held in a 16-bit register word."""
    word = int(word) & 0xFFFF
    return word - 0x10000 if word & 0x8000 else word


def _q16(x: float) -> tuple[int, bool, bool]:
    """One value -> (int16 rounded half away from zero, saturated, non-finite)."""
    if not math.isfinite(x):
        return 0, False, True
    q = math.floor(abs(x) + 0.5)
    q = q if x >= 0 else -q
    if q > 32767 or q < -32768:
        return (32767 if q > 0 else -32768), True, False
    return q, False, False


def quantize(values: Any, scale: Any) -> tuple[np.ndarray, Any, Any]:
    """``values * scale`` rounded half away from zero into int16.

    Returns ``(ints, saturated, invalid)``; the flags are reduced over the last
    axis (a bool for 1-D input, one per row for 2-D). Out-of-range values are
    clipped to the int16 range, non-finite ones become 0.
    """
    scaled = np.asarray(values, dtype=np.float64) * scale
    q = np.array([_q16(x) for x in scaled.ravel().tolist()], dtype=np.int64).reshape(
        (*scaled.shape, 3)
    )
    return q[..., 0], q[..., 1].any(axis=-1), q[..., 2].any(axis=-1)


class RG2FTRegisters:
    """Register bank of the RG2-FT (unit 65) and its compute box (unit 63).

    Args:
        config: unit ids, sizes and limits.
    """

    def __init__(self, config: RG2FTConfig | None = None) -> None:
        self.config = config or RG2FTConfig()
        self._lock = threading.Lock()
        self._regs = {
            self.config.gripper_unit_id: [0] * self.config.register_count,
            self.config.box_unit_id: [0] * self.config.box_register_count,
        }
        self._offset = np.zeros((2, 6))
        self._zero_pending = False
        self._command: tuple[float | None, float, bool] | None = None  # taken by apply()
        self._restart_pending = False
        self._width_m = 0.0
        self.ignored_commands = 0
        self.power_cycles = 0
        self.commands_sent = 0

    @property
    def unit_ids(self) -> tuple[int, int]:
        """(gripper unit, compute box unit)."""
        return self.config.gripper_unit_id, self.config.box_unit_id

    # ------------------------------------------------------------ client side
    def read(self, unit: int, address: int, count: int) -> list[int]:
        """``count`` register words from ``address`` of ``unit`` (unsigned 16-bit)."""
        with self._lock:
            regs = self._unit(unit)
            if address < 0 or count < 1 or address + count > len(regs):
                raise RegisterAccessError(
                    ILLEGAL_ADDRESS, f"unit {unit}: {address}+{count} outside 0..{len(regs) - 1}"
                )
            return regs[address : address + count]

    def write(self, unit: int, address: int, values: list[int]) -> None:
        """Store ``values`` from ``address`` of ``unit``, as a client's FC06/FC16 does."""
        values = [int(v) & 0xFFFF for v in values]
        with self._lock:
            regs = self._unit(unit)
            end = address + len(values)
            limit = WRITABLE_END if unit == self.config.gripper_unit_id else len(regs)
            if address < 0 or not values or end > limit:
                raise RegisterAccessError(
                    ILLEGAL_ADDRESS, f"unit {unit}: write {address}+{len(values)} not writable"
                )
            regs[address:end] = values
            if unit == self.config.box_unit_id:
                if address <= REG_BOX_RESTART < end and regs[REG_BOX_RESTART] == BOX_POWER_CYCLE:
                    self._restart_pending = True
                return
            if address <= REG_ZERO < end:
                self._set_zero_locked(regs[REG_ZERO] == 1)
            if address <= REG_CONTROL < end:
                self._on_control_locked(regs)

    def _on_control_locked(self, regs: list[int]) -> None:
        """The device takes a control write at once: busy rises before the plant moves."""
        force_n = min(regs[REG_TARGET_FORCE] * 0.1, self.config.max_force_n)
        if regs[REG_CONTROL] == CONTROL_GRIP:
            if regs[REG_BUSY] == 1:
                self.ignored_commands += 1
                return
            regs[REG_BUSY] = 1
            width_m = min(regs[REG_TARGET_WIDTH] * 1e-4, self.config.max_width_m)
            self._command = (width_m, force_n, True)
        else:  # 0 (or anything but 1): stop, busy or not
            regs[REG_CONTROL] = CONTROL_STOP
            self._command = (None, force_n, False)

    def zero(self) -> None:
        """Zero the fingertip sensors (as writing 1 to register 0 does)."""
        self.write(self.config.gripper_unit_id, REG_ZERO, [1])

    def unzero(self) -> None:
        """Cancel the zero offset (as writing 0 to register 0 does)."""
        self.write(self.config.gripper_unit_id, REG_ZERO, [0])

    def _set_zero_locked(self, on: bool) -> None:
        self._zero_pending = on
        if not on:
            self._offset[:] = 0.0

    def _unit(self, unit: int) -> list[int]:
        try:
            return self._regs[unit]
        except KeyError:
            raise RegisterAccessError(DEVICE_FAILURE, f"no unit {unit}") from None

    # ------------------------------------------------------------ twin side
    def apply(self, plant: Plant) -> None:
        """Hand the pending command to the plant (call before stepping it)."""
        with self._lock:
            command, self._command = self._command, None
            restart, self._restart_pending = self._restart_pending, False
            if restart:  # tool power cycle: motion stops, commands and offset are lost
                regs = self._regs[self.config.gripper_unit_id]
                self.power_cycles += 1
                self._regs[self.config.box_unit_id][REG_BOX_RESTART] = 0
                regs[0:WRITABLE_END] = [0] * WRITABLE_END
                regs[REG_BUSY] = 0
                self._offset[:] = 0.0
                self._zero_pending = False
                command = (None, 0.0, False)
            current_width = self._width_m
        if command is not None:
            width_m, force_n, grip = command
            self.commands_sent += 1
            plant.set_gripper_command(
                target_width_m=current_width if width_m is None else width_m,
                target_force_n=force_n,
                grip=grip,
            )

    def update(self, state: GripperPlantState) -> None:
        """Refresh the state block from the plant's gripper state (call after stepping it)."""
        raw = np.asarray(state.finger_wrenches, dtype=np.float64).reshape(2, 6)
        width_m = float(state.width_m)
        prox_raw = 0.0 if state.grip_detected else min(width_m, self.config.proximity_range_m)
        with self._lock:
            regs = self._regs[self.config.gripper_unit_id]
            if self._zero_pending:
                self._offset[:] = np.where(np.isfinite(raw), raw, 0.0)
                self._zero_pending = False
            for finger, (status_reg, ft_reg) in enumerate(
                ((REG_STATUS_L, REG_FT_L), (REG_STATUS_R, REG_FT_R))
            ):
                status = 0
                values = (raw[finger] - self._offset[finger]).tolist()
                for i, (value, scale) in enumerate(zip(values, _FT_SCALES, strict=True)):
                    q, saturated, invalid = _q16(value * scale)
                    regs[ft_reg + i] = q & 0xFFFF
                    status |= STATUS_SATURATED * saturated | STATUS_INVALID * invalid
                regs[status_reg] = status
            for status_reg, value_reg, offset_reg in (
                (REG_PROX_STATUS_L, REG_PROX_L, REG_PROX_OFFSET_L),
                (REG_PROX_STATUS_R, REG_PROX_R, REG_PROX_OFFSET_R),
            ):
                value = max(0, round(prox_raw * 1e4) - from_register(regs[offset_reg]))
                regs[value_reg] = to_register(min(value, 32767))
                regs[status_reg] = 0
            regs[REG_WIDTH] = max(_q16(width_m * 1e4)[0], 0)
            moving = bool(state.moving)
            regs[REG_GRIP_DETECTED] = int(bool(state.grip_detected))
            if self._command is None:  # a grip not yet handed to the plant stays busy
                regs[REG_BUSY] = int(moving)
                if not moving:
                    regs[REG_CONTROL] = 0  # the motion ended: the control register clears
            self._width_m = width_m

    # ------------------------------------------------------------ inspection
    @property
    def offset(self) -> np.ndarray:
        """The zero offset subtracted from the raw readings, (2, 6) N and N·m."""
        with self._lock:
            return self._offset.copy()

    def wrenches(self) -> np.ndarray:
        """The fingertip wrenches as the registers hold them, (2, 6) N and N·m."""
        words = self.read(self.config.gripper_unit_id, STATE_START, STATE_COUNT)
        out = np.empty((2, 6))
        for finger, reg in enumerate((REG_FT_L, REG_FT_R)):
            ints = [from_register(w) for w in words[reg - STATE_START : reg - STATE_START + 6]]
            out[finger] = np.asarray(ints, dtype=np.float64) / _FT_SCALE
        return out

    def width_m(self) -> float:
        """The finger opening as register 280 holds it."""
        return self.read(self.config.gripper_unit_id, REG_WIDTH, 1)[0] * 1e-4


__all__ = [
    "RG2FTConfig",
    "RG2FTRegisters",
    "RegisterAccessError",
    "from_register",
    "quantize",
    "to_register",
]
