"""Fixed record schemas for ring buffers.

A schema names every field of a record with its numpy dtype and shape, declared
up front, so a ring buffer can be laid out once (struct of arrays) and shared
between processes without pickling. Every record also carries the three stamps
of DESIGN §3: the mapped capture time on the host monotonic clock (the time
key), the host receive time, and the device's own timestamp.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

#: Stamp fields present in every record. ``t_capture_ns`` is the time key:
#: capture time mapped to host ``CLOCK_MONOTONIC`` (ns). ``t_receive_ns`` is the
#: host monotonic receive time (ns). ``device_time_s`` is the device's own stamp
#: in its own domain (seconds; NaN for devices without one, such as Modbus).
STAMP_FIELDS: tuple[tuple[str, tuple[int, ...], np.dtype], ...] = (
    ("t_capture_ns", (), np.dtype(np.int64)),
    ("t_receive_ns", (), np.dtype(np.int64)),
    ("device_time_s", (), np.dtype(np.float64)),
)
STAMP_NAMES = frozenset(name for name, _, _ in STAMP_FIELDS)


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record: name, per-record shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of one record's value of this field."""
        return int(math.prod(self.shape)) * self.dtype.itemsize


class RecordSchema:
    """The declared fields of a record, stamps included.

    Args:
        fields: field name -> ``(shape, dtype)``; shape ``()`` is a scalar.
        name: a short name for messages (``"camera"``, ``"ft"``, ``"arm"``).

    Raises:
        ValueError: a field shadows a stamp, has a non-positive dimension, or an
            object dtype (which cannot live in shared memory).
    """

    def __init__(self, fields: Mapping[str, tuple[tuple[int, ...], DTypeLike]], *, name: str = ""):
        specs = [FieldSpec(n, s, d) for n, s, d in STAMP_FIELDS]
        for field_name, (shape, dtype) in fields.items():
            if field_name in STAMP_NAMES:
                raise ValueError(
                    f"schema {name!r}: field {field_name!r} is a stamp every record already has; "
                    "rename it"
                )
            shape = tuple(int(d) for d in shape)
            if any(d <= 0 for d in shape):
                raise ValueError(
                    f"schema {name!r}: field {field_name!r} has shape {shape}; "
                    "every dimension must be positive"
                )
            dt = np.dtype(dtype)
            if dt.hasobject:
                raise ValueError(
                    f"schema {name!r}: field {field_name!r} has object dtype {dt}; "
                    "use a fixed-size numeric dtype"
                )
            specs.append(FieldSpec(field_name, shape, dt))
        self.name = name
        self.fields: tuple[FieldSpec, ...] = tuple(specs)
        self.by_name: dict[str, FieldSpec] = {f.name: f for f in specs}

    @property
    def names(self) -> tuple[str, ...]:
        """All field names, stamps first."""
        return tuple(f.name for f in self.fields)

    @property
    def record_nbytes(self) -> int:
        """Bytes of one record, all fields together (without slot padding)."""
        return sum(f.nbytes for f in self.fields)

    def describe(self) -> list[list]:
        """A canonical, JSON-able description (name, shape, dtype string) of every field."""
        return [[f.name, list(f.shape), f.dtype.str] for f in self.fields]

    def digest(self) -> bytes:
        """16 bytes identifying the layout; a reader refuses a ring with another digest."""
        text = json.dumps(self.describe(), separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordSchema) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}{list(f.shape)}:{f.dtype}" for f in self.fields)
        return f"RecordSchema({self.name!r}: {inner})"


def capacity_for(
    rate_hz: float, read_budget_s: float, *, margin: float = 1.5, extra: int = 4
) -> int:
    """Slots a ring needs so a reader ``read_budget_s`` behind the writer never loses data.

    ``ceil(rate_hz * read_budget_s * margin) + extra`` (the diffusion_policy sizing);
    ``extra`` covers the slot being written and scheduling hiccups.
    """
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate_hz must be a positive finite number, got {rate_hz!r}")
    if not (math.isfinite(read_budget_s) and read_budget_s > 0):
        raise ValueError(f"read_budget_s must be a positive finite number, got {read_budget_s!r}")
    if margin < 1.0:
        raise ValueError(f"margin must be >= 1.0, got {margin!r}")
    return math.ceil(rate_hz * read_budget_s * margin) + max(int(extra), 2)
