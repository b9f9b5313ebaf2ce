"""Preallocated, time-indexed ring buffer: one writer, any number of lock-free readers.

Layout (one contiguous buffer, process memory or POSIX shared memory)::

    header  u64[8]: magic, version, capacity, digest lo/hi, write_count, rejected, 0
    meta    capacity × {seq u64, t_capture_ns i64, t_receive_ns i64, device_time_s f64}
    fields  one array per field, shape (capacity, *field_shape), 64-byte aligned

The per-slot sequence word and the three stamps share one 32-byte struct, so a
reader gets all four with one numpy call: at this record size the cost of a
read is the number of numpy calls, not the bytes.

Writing record ``i`` into slot ``i % capacity`` sets ``seq = 2i + 1`` (odd: being
written), copies the fields, then sets ``seq = 2i + 2`` and publishes
``write_count = i + 1``. A reader of record ``i`` checks ``seq == 2i + 2`` before
and after its copy; any other value means the slot was (being) overwritten and
the read raises :class:`OverwrittenError` instead of returning mixed data.

Records must arrive in capture-time order (``t_capture_ns`` non-decreasing):
that is what makes lookup by time a binary search over the two sorted halves of
the ring. An out-of-order record is rejected and counted, never inserted.

Memory ordering: the seqlock relies on stores becoming visible in program order
and loads not being reordered with loads, which x86-64 (TSO) guarantees for the
plain stores numpy issues. On weakly ordered CPUs (aarch64) this is not
guaranteed without fences; see the README's note on Jetson.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from demuse_ros.transport.schema import STAMP_NAMES, RecordSchema
from demuse_ros.transport.shm import Backing, ProcessMemory, SharedSegment

_MAGIC = 0x44454D5553455242  # "DEMUSERB"
_VERSION = 2
_META = np.dtype(
    [("seq", "<u8"), ("t_capture_ns", "<i8"), ("t_receive_ns", "<i8"), ("device_time_s", "<f8")]
)
_H_MAGIC, _H_VERSION, _H_CAPACITY, _H_DIGEST_LO, _H_DIGEST_HI, _H_COUNT, _H_REJECTED = range(7)
_HEADER_WORDS = 8
_ALIGN = 64


class OverwrittenError(RuntimeError):
    """A record was overwritten (or not yet written) while it was read."""


class Around(NamedTuple):
    """Records around a time: capture times, field values by row, and which row is which.

    ``values[name]`` is a list of one or two rows (Python numbers or nested lists,
    as ``ndarray.tolist`` gives them); ``row_before``/``row_after`` index into it
    (None when that record does not exist).
    """

    t_before_ns: int | None
    t_after_ns: int | None
    values: dict[str, list]
    row_before: int | None
    row_after: int | None


def _align(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def _layout(schema: RecordSchema, capacity: int) -> tuple[int, dict[str, int]]:
    """Byte offsets of the slot metadata and every payload array; returns (total size, offsets)."""
    offsets = {"__meta__": _align(_HEADER_WORDS * 8)}
    end = offsets["__meta__"] + capacity * _META.itemsize
    for f in schema.fields:
        if f.name in STAMP_NAMES:
            continue
        offsets[f.name] = _align(end)
        end = offsets[f.name] + capacity * f.nbytes
    return _align(end), offsets


class RingBuffer:
    """A fixed-schema ring of records keyed by capture time.

    Create with :meth:`create` (the writer side, or a single-process ring) or
    :meth:`attach` (a reader in another process). Use as a context manager or
    call :meth:`close`; the creator of a shared ring also unlinks it.

    A supervised driver swaps writers: the parent creates the ring with
    ``writer=False`` (it owns the memory and reads), and each incarnation of the
    driver process attaches with ``writer=True`` and continues the record count
    where the previous one stopped. There is still one writer at a time.
    """

    def __init__(
        self,
        schema: RecordSchema,
        capacity: int,
        backing: Backing,
        *,
        writer: bool,
        fresh: bool = False,
        owner: bool = False,
    ):
        self.schema = schema
        self.capacity = capacity
        self._backing: Backing | None = backing
        self._name = backing.name
        self._writer = writer
        self._owner = owner
        size, offsets = _layout(schema, capacity)
        buf = backing.buf
        if len(buf) < size:
            raise ValueError(
                f"ring {schema.name!r}: backing has {len(buf)} bytes, layout needs {size}"
            )
        self._header = np.ndarray((_HEADER_WORDS,), np.uint64, buf, 0)
        self._meta = np.ndarray((capacity,), _META, buf, offsets["__meta__"])
        self._seq = self._meta["seq"]  # strided views into the metadata, made once
        self._t = self._meta["t_capture_ns"]
        self._arrays: dict[str, np.ndarray] = {
            f.name: np.ndarray((capacity, *f.shape), f.dtype, buf, offsets[f.name])
            for f in schema.fields
            if f.name not in STAMP_NAMES
        }
        self._payload_names = frozenset(self._arrays)
        self._last_t_ns = -(1 << 62)
        if fresh:
            digest = schema.digest()
            self._header[:] = 0
            self._header[_H_MAGIC] = _MAGIC
            self._header[_H_VERSION] = _VERSION
            self._header[_H_CAPACITY] = capacity
            self._header[_H_DIGEST_LO] = int.from_bytes(digest[:8], "little")
            self._header[_H_DIGEST_HI] = int.from_bytes(digest[8:], "little")
            self._seq[:] = 0
        elif writer:  # taking over a ring: keep capture times non-decreasing across writers
            count = int(self._header[_H_COUNT])
            if count > 0:
                self._last_t_ns = int(self._t[(count - 1) % capacity])

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        schema: RecordSchema,
        capacity: int,
        *,
        shared: bool = False,
        name: str | None = None,
        writer: bool = True,
    ) -> RingBuffer:
        """Allocate a ring of ``capacity`` records; ``shared=True`` puts it in shared memory.

        The returned object owns the memory (it unlinks it on close) and is, by
        default, the ring's only writer. With ``shared=True`` other processes
        attach by :attr:`name`; ``writer=False`` leaves writing to a process that
        attaches with ``writer=True``.
        """
        if capacity < 2:
            raise ValueError(f"ring {schema.name!r}: capacity must be >= 2, got {capacity}")
        size, _ = _layout(schema, capacity)
        backing: Backing = SharedSegment.create(size, name) if shared else ProcessMemory(size)
        return cls(schema, capacity, backing, writer=writer, fresh=True, owner=True)

    @classmethod
    def attach(cls, name: str, schema: RecordSchema, *, writer: bool = False) -> RingBuffer:
        """Attach to the shared ring ``name``, checking it has ``schema``'s layout.

        ``writer=True`` takes over writing (the ring's creator made it with
        ``writer=False``; see the class docstring). Attached handles never unlink.
        """
        backing = SharedSegment.attach(name)
        header = np.ndarray((_HEADER_WORDS,), np.uint64, backing.buf, 0)
        try:
            if int(header[_H_MAGIC]) != _MAGIC or int(header[_H_VERSION]) != _VERSION:
                raise ValueError(
                    f"shared memory {name!r} is not a demuse ring buffer (version "
                    f"{_VERSION}); was it created by another program?"
                )
            digest = int(header[_H_DIGEST_LO]).to_bytes(8, "little") + int(
                header[_H_DIGEST_HI]
            ).to_bytes(8, "little")
            if digest != schema.digest():
                raise ValueError(
                    f"ring {name!r} was created with another schema than {schema!r}: "
                    "writer and reader must use the same stream definition"
                )
            capacity = int(header[_H_CAPACITY])
        except BaseException:
            del header
            backing.close()
            raise
        del header
        return cls(schema, capacity, backing, writer=writer)

    @property
    def name(self) -> str | None:
        """The shared-memory name readers attach to (None for a process-memory ring)."""
        return self._name

    def close(self) -> None:
        """Drop this process's mapping; the creator of a shared ring also unlinks it."""
        if self._backing is None:
            return
        self._header = self._meta = self._seq = self._t = None  # type: ignore[assignment]
        self._arrays = {}
        backing, self._backing = self._backing, None
        backing.close()
        if self._owner:
            backing.unlink()

    def _check_open(self) -> None:
        if self._backing is None:
            raise ValueError(f"ring {self.schema.name!r} is closed")

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writer
    @property
    def count(self) -> int:
        """Records written so far (the next record's index)."""
        self._check_open()
        return int(self._header[_H_COUNT])

    @property
    def rejected_out_of_order(self) -> int:
        """Records refused because their capture time was older than the previous one."""
        self._check_open()
        return int(self._header[_H_REJECTED])

    def put(
        self, t_capture_ns: int, t_receive_ns: int, device_time_s: float = math.nan, **fields: Any
    ) -> bool:
        """Append one record (writer only). Returns False if it was out of order.

        Every schema field must be given; values are copied into the slot.
        """
        if not self._writer:
            raise PermissionError(
                f"ring {self.schema.name!r}: this handle is a reader; write through "
                "the handle made by create() or attach(..., writer=True)"
            )
        if t_capture_ns < self._last_t_ns:
            self._header[_H_REJECTED] += np.uint64(1)
            return False
        arrays = self._arrays
        if fields.keys() != self._payload_names:
            missing = sorted(self._payload_names - fields.keys())
            extra = sorted(fields.keys() - self._payload_names)
            raise KeyError(
                f"ring {self.schema.name!r}: put() needs exactly the schema's fields; "
                f"missing {missing}, unknown {extra}"
            )
        index = int(self._header[_H_COUNT])
        slot = index % self.capacity
        # One struct store: seq odd (being written) plus the three stamps.
        self._meta[slot] = (2 * index + 1, t_capture_ns, t_receive_ns, device_time_s)
        for name, value in fields.items():
            arrays[name][slot] = value
        self._seq[slot] = 2 * index + 2
        self._header[_H_COUNT] = index + 1
        self._last_t_ns = t_capture_ns
        return True

    # ------------------------------------------------------------------ readers
    def read(
        self,
        index: int,
        fields: Iterable[str] | None = None,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Copy record ``index`` (all fields, or ``fields``; stamps always included).

        Scalars come back as Python numbers, arrays as fresh copies, or copied
        into ``out[name]`` when given (no allocation; for images).

        Raises:
            OverwrittenError: the record is older than the ring holds, not yet
                written, or was overwritten during the copy.
        """
        slot = index % self.capacity
        want = 2 * index + 2
        seq_before, t_capture, t_receive, device_time = self._meta[slot].item()
        if seq_before != want:
            raise self._overwritten(index, seq_before)
        record: dict[str, Any] = {
            "t_capture_ns": t_capture,
            "t_receive_ns": t_receive,
            "device_time_s": device_time,
        }
        arrays = self._arrays
        for name in fields if fields is not None else arrays:
            if name in record:
                continue
            src = arrays[name][slot]
            if out is not None and name in out:
                np.copyto(out[name], src)
                record[name] = out[name]
            elif src.ndim == 0:
                record[name] = src.item()
            else:
                record[name] = src.copy()
        seq_after = int(self._seq[slot])
        if seq_after != want:
            raise self._overwritten(index, seq_after)
        return record

    def read_latest(
        self, fields: Iterable[str] | None = None, *, retries: int = 2
    ) -> dict[str, Any] | None:
        """The newest record, or None if the ring is empty (retries if lapped mid-copy)."""
        for attempt in range(retries + 1):
            index = self.count - 1
            if index < 0:
                return None
            try:
                record = self.read(index, fields)
            except OverwrittenError:
                if attempt == retries:
                    raise
                continue
            record["index"] = index
            return record
        return None  # pragma: no cover - loop always returns or raises

    def oldest_readable(self) -> int:
        """Index of the oldest record that is safe to start reading now."""
        # One slot of guard: the writer may already be overwriting the oldest slot.
        return max(0, self.count - self.capacity + 1)

    def index_at_or_before(self, t_ns: int) -> tuple[int | None, int, int]:
        """Binary search by capture time over the readable records.

        Returns ``(index, lo, hi)``: ``index`` is the newest record with
        ``t_capture_ns <= t_ns`` (None if all readable records are later or the
        ring is empty) and ``[lo, hi)`` the readable index range searched. The
        caller re-checks the stamps it reads (:meth:`read` is seqlock-checked).
        """
        hi = int(self._header[_H_COUNT])
        lo = max(0, hi - self.capacity + 1)
        n = hi - lo
        if n <= 0:
            return None, lo, hi
        cap = self.capacity
        s_lo = lo % cap
        t = self._t
        if s_lo + n <= cap:
            pos = int(t[s_lo : s_lo + n].searchsorted(t_ns, side="right"))
            return (lo + pos - 1 if pos > 0 else None), lo, hi
        first_len = cap - s_lo
        if t_ns >= t[0]:
            pos = int(t[: n - first_len].searchsorted(t_ns, side="right"))
            return lo + first_len + pos - 1, lo, hi
        pos = int(t[s_lo:].searchsorted(t_ns, side="right"))
        return (lo + pos - 1 if pos > 0 else None), lo, hi

    def around(self, t_ns: int, fields: tuple[str, ...]) -> Around | None:
        """The records just at-or-before and just after ``t_ns``, read under one seqlock check.

        The synchronizer's hot path: one search, then one ``tolist`` per field for
        both records (values come back as Python numbers and lists). Returns None
        when the ring is empty.

        Raises:
            OverwrittenError: a record was overwritten while it was read.
        """
        i0, lo, hi = self.index_at_or_before(t_ns)
        if hi <= lo:
            return None
        first = lo if i0 is None else i0
        two = i0 is not None and first + 1 < hi
        cap = self.capacity
        s = first % cap
        want = 2 * first + 2
        if not two:
            seq, t, _, _ = self._meta[s].item()
            if seq != want:
                raise self._overwritten(first, seq)
            values = {name: [self._arrays[name][s].tolist()] for name in fields}
            if int(self._seq[s]) != want:
                raise self._overwritten(first, int(self._seq[s]))
            if i0 is None:
                return Around(None, t, values, None, 0)
            return Around(t, None, values, 0, None)
        if s + 1 < cap:
            (seq0, t0, _, _), (seq1, t1, _, _) = self._meta[s : s + 2].tolist()
            values = {name: self._arrays[name][s : s + 2].tolist() for name in fields}
            after = self._seq[s : s + 2].tolist()
        else:  # the pair straddles the end of the ring
            seq0, t0, _, _ = self._meta[s].item()
            seq1, t1, _, _ = self._meta[0].item()
            values = {
                name: [self._arrays[name][s].tolist(), self._arrays[name][0].tolist()]
                for name in fields
            }
            after = [int(self._seq[s]), int(self._seq[0])]
        if seq0 != want or after[0] != want:
            raise self._overwritten(first, seq0 if seq0 != want else after[0])
        if seq1 != want + 2 or after[1] != want + 2:
            raise self._overwritten(first + 1, seq1 if seq1 != want + 2 else after[1])
        return Around(t0, t1, values, 0, 1)

    def _overwritten(self, index: int, seq_value: int) -> OverwrittenError:
        name = self.schema.name or "?"
        if seq_value < 2 * index + 1:
            return OverwrittenError(
                f"ring {name!r}: record {index} has not been written yet (count={self.count})"
            )
        behind = self.count - index
        return OverwrittenError(
            f"ring {name!r}: record {index} was overwritten before or during the read "
            f"({behind} records "
            f"behind the writer, capacity {self.capacity}); read sooner or size the ring for a "
            "longer read budget"
        )

    def __repr__(self) -> str:
        where = f"shared {self.name!r}" if self.name else "process memory"
        role = "writer" if self._writer else "reader"
        return f"RingBuffer({self.schema.name!r}, capacity={self.capacity}, {where}, {role})"
