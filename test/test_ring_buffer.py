"""Ring buffer: layout, seqlock, time lookup, shared memory across processes."""

from __future__ import annotations

import multiprocessing as mp
import zlib

import numpy as np
import pytest

from demuse_ros.transport import OverwrittenError, RecordSchema, RingBuffer, capacity_for


def small_schema() -> RecordSchema:
    return RecordSchema({"x": ((3,), np.float64), "k": ((), np.int32)}, name="small")


def put_n(ring: RingBuffer, n: int, start: int = 0, step_ns: int = 10) -> None:
    for i in range(start, start + n):
        assert ring.put(i * step_ns, i * step_ns + 1, float(i), x=np.full(3, float(i)), k=i)


def test_schema_validation_messages() -> None:
    with pytest.raises(ValueError, match="already has"):
        RecordSchema({"t_capture_ns": ((), np.int64)})
    with pytest.raises(ValueError, match="positive"):
        RecordSchema({"img": ((0, 3), np.uint8)})
    with pytest.raises(ValueError, match="object dtype"):
        RecordSchema({"o": ((), object)})
    a = RecordSchema({"x": ((3,), np.float64)})
    assert a == RecordSchema({"x": ((3,), "f8")})
    assert a.digest() != RecordSchema({"x": ((4,), np.float64)}).digest()


def test_capacity_for() -> None:
    assert capacity_for(500, 0.1) == 75 + 4
    assert capacity_for(30, 0.5, margin=2.0, extra=1) == 30 + 2
    with pytest.raises(ValueError, match="rate_hz"):
        capacity_for(float("nan"), 1.0)
    with pytest.raises(ValueError, match="read_budget_s"):
        capacity_for(30, 0.0)


@pytest.mark.parametrize("shared", [False, True])
def test_put_read_and_wrap(shared: bool) -> None:
    with RingBuffer.create(small_schema(), 8, shared=shared) as ring:
        put_n(ring, 21)
        assert ring.count == 21
        rec = ring.read(20)
        assert rec["t_capture_ns"] == 200 and rec["t_receive_ns"] == 201 and rec["k"] == 20
        np.testing.assert_array_equal(rec["x"], [20.0, 20.0, 20.0])
        assert ring.read_latest(["k"])["k"] == 20
        # The oldest readable record leaves one slot of guard for the writer.
        assert ring.oldest_readable() == 21 - 8 + 1
        with pytest.raises(OverwrittenError, match="overwritten"):
            ring.read(12)
        with pytest.raises(OverwrittenError, match="not been written yet"):
            ring.read(21)


def test_read_returns_copies_and_fills_out() -> None:
    with RingBuffer.create(small_schema(), 4) as ring:
        put_n(ring, 2)
        rec = ring.read(1)
        rec["x"][:] = -1
        assert ring.read(1)["x"][0] == 1.0
        out = {"x": np.zeros(3)}
        rec = ring.read(0, ["x"], out)
        assert rec["x"] is out["x"] and out["x"][0] == 0.0
        assert set(rec) == {"t_capture_ns", "t_receive_ns", "device_time_s", "x"}


def test_put_rejects_out_of_order_and_bad_fields() -> None:
    with RingBuffer.create(small_schema(), 4) as ring:
        put_n(ring, 3)
        assert not ring.put(5, 100, x=np.zeros(3), k=0)
        assert ring.rejected_out_of_order == 1 and ring.count == 3
        assert ring.put(20, 100, x=np.zeros(3), k=0)  # equal time is allowed
        with pytest.raises(KeyError, match="missing \\['k'\\]"):
            ring.put(30, 31, x=np.zeros(3))
        with pytest.raises(KeyError, match="unknown \\['y'\\]"):
            ring.put(30, 31, x=np.zeros(3), k=1, y=2)
        assert ring.count == 4


@pytest.mark.parametrize("n", [0, 1, 5, 8, 9, 23])
def test_index_at_or_before_matches_linear_scan(n: int) -> None:
    with RingBuffer.create(small_schema(), 8) as ring:
        put_n(ring, n, step_ns=10)
        lo = ring.oldest_readable()
        for t in range(-5, n * 10 + 15, 3):
            index, lo_s, hi_s = ring.index_at_or_before(t)
            assert (lo_s, hi_s) == (lo, n)
            expected = [i for i in range(lo, n) if i * 10 <= t]
            assert index == (expected[-1] if expected else None), t


def test_shared_attach_checks_schema_and_readers_cannot_write() -> None:
    with RingBuffer.create(small_schema(), 8, shared=True) as ring:
        put_n(ring, 3)
        other = RecordSchema({"x": ((4,), np.float64), "k": ((), np.int32)}, name="other")
        with pytest.raises(ValueError, match="another schema"):
            RingBuffer.attach(ring.name, other)
        with RingBuffer.attach(ring.name, small_schema()) as reader:
            assert reader.capacity == 8 and reader.read(2)["k"] == 2
            with pytest.raises(PermissionError, match="reader"):
                reader.put(100, 100, x=np.zeros(3), k=0)
            put_n(ring, 1, start=3)
            assert reader.count == 4 and reader.read_latest()["k"] == 3
    with pytest.raises(FileNotFoundError, match="writer process running"):
        RingBuffer.attach(ring.name, small_schema())


# ------------------------------------------------------------------ cross-process torn reads
IMG = (240, 320, 3)  # 230 kB records: large enough that a copy takes real time


def torn_schema() -> RecordSchema:
    return RecordSchema({"img": (IMG, np.uint8), "crc": ((), np.uint32)}, name="torn")


def _fast_writer(names: mp.Queue, go, n_records: int, rate_hz: float) -> None:
    from demuse_ros.timing.loop import PeriodicLoop

    rng = np.random.default_rng(1)
    pool = [rng.integers(0, 255, IMG, dtype=np.uint8) for _ in range(8)]
    crcs = [zlib.crc32(p.tobytes()) for p in pool]
    with RingBuffer.create(torn_schema(), 6, shared=True) as ring:
        names.put(ring.name)
        go.wait()
        loop = PeriodicLoop(rate_hz)
        for i in range(n_records):
            loop.wait()
            ring.put(i, i, float(i), img=pool[i % 8], crc=crcs[i % 8])
        names.put(("done", loop.stats().rate_hz))
        go.clear()
        names.get()  # the test's "detached" token, put after the reader closed


def test_cross_process_no_torn_reads() -> None:
    """A 1 kHz writer of 230 kB records against a reader that copies and checksums each one.

    The ring is small (6 slots) so the writer laps the reader often: every read
    must either return a record whose checksum matches, or raise OverwrittenError.
    """
    ctx = mp.get_context("spawn")
    names, go = ctx.Queue(), ctx.Event()
    n_records = 3000
    proc = ctx.Process(target=_fast_writer, args=(names, go, n_records, 1000.0), daemon=True)
    proc.start()
    try:
        reader = RingBuffer.attach(names.get(timeout=60), torn_schema())
        go.set()
        good = overwritten = 0
        out = {"img": np.empty(IMG, np.uint8)}
        last = -1
        while go.is_set() or reader.count < n_records:
            index = reader.count - 1
            if index < 0:
                continue
            # Read the newest and, to provoke laps, an older record too.
            for i in (index, max(0, index - 4)):
                try:
                    rec = reader.read(i, ["img", "crc"], out)
                except OverwrittenError:
                    overwritten += 1
                    continue
                assert zlib.crc32(rec["img"].tobytes()) == rec["crc"], f"torn read of record {i}"
                good += 1
            last = index
            if last == n_records - 1:
                break
        msg = names.get(timeout=30)
        assert msg[0] == "done", msg
        reader.close()
        names.put("detached")
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    assert proc.exitcode == 0
    assert good > 500, (good, overwritten)
