"""Typed, preallocated transport between processes: schemas and seqlock ring buffers."""

from demuse_ros.transport.ring_buffer import OverwrittenError, RingBuffer
from demuse_ros.transport.schema import STAMP_FIELDS, FieldSpec, RecordSchema, capacity_for

__all__ = [
    "STAMP_FIELDS",
    "FieldSpec",
    "OverwrittenError",
    "RecordSchema",
    "RingBuffer",
    "capacity_for",
]
