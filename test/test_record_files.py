"""Recorder → MCAP → reader round trips on in-process rings; losses, slow disks, bad files.

The rings are the same :class:`RingBuffer` class and schemas the drivers use; a
test thread plays the drivers' part with known values, so every value and stamp
can be compared exactly. (The twin-backed round trip is in test_record_sim.py.)
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mcap_ros2", reason="needs mcap-ros2-support (core dependency)")

from demuse_ros.record.meta import EpisodeMeta
from demuse_ros.record.reader import (
    EpisodeNotFoundError,
    MissingTopicError,
    NotAnEpisodeError,
    TruncatedEpisodeError,
    open_episode,
)
from demuse_ros.record.recorder import Recorder, RecorderConfig
from demuse_ros.record.recover import recover
from demuse_ros.record.writer import EpisodeWriter, _FileSink
from demuse_ros.sync.streams import arm_schema, camera_schema, ft_schema
from demuse_ros.timing.clock import now_ns
from demuse_ros.transport import RingBuffer

W, H = 32, 24


def _values(stream: str, i: int) -> dict:
    """Deterministic field values of record ``i`` of ``stream``."""
    rng = np.random.default_rng(hash((stream, i)) % 2**32)
    if stream == "camera":
        return {
            "rgb": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            "depth_m": (rng.integers(0, 4000, (H, W)) / 1000.0).astype(np.float32),
            "frame_number": 100 + i,
        }
    if stream == "ft":
        return {
            "wrench": rng.normal(size=6),
            "finger_wrenches": rng.normal(size=(2, 6)),
            "gripper_width_m": float(rng.uniform(0, 0.1)),
        }
    return {
        "joint_positions_rad": rng.normal(size=6),
        "joint_velocities_rad_s": rng.normal(size=6),
        "tcp_pose": np.r_[rng.normal(size=3), rng.uniform(-1, 1, 3)],
        "tcp_speed": rng.normal(size=6),
        "robot_mode": 7,
        "safety_mode": 1,
        "runtime_state": 2,
    }


def _rings(capacity: int = 64) -> dict[str, RingBuffer]:
    return {
        "camera": RingBuffer.create(camera_schema(W, H), capacity),
        "ft": RingBuffer.create(ft_schema(), capacity),
        "arm": RingBuffer.create(arm_schema(), capacity),
    }


def _put(ring: RingBuffer, stream: str, i: int) -> int:
    t = now_ns()
    device = math.nan if stream == "ft" else 1000.0 + i * 0.008
    ring.put(t, t + 1000 + i, device, **_values(stream, i))
    return t


class _SlowSink:
    """A disk that takes ``delay_s`` per write (and can fail after ``fail_after`` bytes)."""

    def __init__(self, path: Path, delay_s: float, fail_after: int | None = None) -> None:
        self.inner, self.delay_s, self.fail_after = _FileSink(path), delay_s, fail_after

    def write(self, data: bytes) -> int:
        if self.fail_after is not None and self.inner.tell() > self.fail_after:
            raise OSError(28, "No space left on device (injected)")
        time.sleep(self.delay_s)
        return self.inner.write(data)

    def tell(self) -> int:
        return self.inner.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.inner.close()


def test_round_trip_values_stamps_counts_and_metadata(tmp_path: Path) -> None:
    rings = _rings()
    for name, ring in rings.items():  # records before the episode are not recorded
        _put(ring, name, -1)
    cfg = RecorderConfig(out_dir=str(tmp_path), flush_interval_s=0.05)
    stamps: dict[str, list[int]] = {"camera": [], "ft": [], "arm": []}
    chunks = []
    with Recorder(rings, cfg) as rec:
        part = rec.start_episode(EpisodeMeta(task="t1", operator="ann", notes="n", config={"a": 1}))
        assert part.name.endswith(".mcap.part") and part.exists()
        for i in range(60):
            for name in ("ft", "arm") if i % 3 else ("camera", "ft", "arm"):
                stamps[name].append(_put(rings[name], name, len(stamps[name])))
            if i % 20 == 0:
                t = now_ns()
                wp = t + np.arange(1, 5) * 100_000_000
                chunks.append((wp, np.random.default_rng(i).normal(size=(4, 6))))
                assert rec.log_chunk(t, wp, chunks[-1][1], np.full(4, 0.05))
            time.sleep(0.002)
        rec.mark_success(True)
        path = rec.stop_episode(interrupted=False)
        stats = rec.stats()
    assert not part.exists() and path.suffix == ".mcap"
    assert stats["lost"] == {"camera": 0, "ft": 0, "arm": 0} and stats["dropped"] == 0
    assert stats["records"] == {k: len(v) for k, v in stamps.items()}
    with open_episode(path) as ep:
        meta = ep.metadata
        assert (meta["task"], meta["operator"], meta["notes"]) == ("t1", "ann", "n")
        assert meta["success"] is True and meta["finished"] and meta["config"] == {"a": 1}
        assert meta["git_revision"] and meta["records"] == stats["records"]
        assert ep.counts["camera/color/image_raw"] == len(stamps["camera"])
        assert ep.counts["tf"] == ep.counts["joint_states"] == len(stamps["arm"])
        for name in ("camera", "ft", "arm"):
            got = list(ep.records(name))
            assert [g["t_capture_ns"] for g in got] == stamps[name]
            assert [g["index"] for g in got] == list(range(1, len(stamps[name]) + 1))
            for i, g in enumerate(got):
                assert g["t_receive_ns"] == g["t_capture_ns"] + 1000 + i
                want = _values(name, i)
                if name == "ft":
                    assert math.isnan(g["device_time_s"])
                else:
                    assert g["device_time_s"] == pytest.approx(1000.0 + i * 0.008, abs=1e-9)
                for key, value in want.items():
                    if key in ("robot_mode", "safety_mode", "runtime_state"):
                        continue  # not part of the standard messages
                    tol = 1e-12 if key == "tcp_pose" else 0.0
                    np.testing.assert_allclose(g[key], value, atol=tol, err_msg=f"{name}.{key}")
        logged = list(ep.messages("action_chunk"))
        assert len(logged) == len(chunks)
        for sample, (wp, poses) in zip(logged, chunks, strict=True):
            np.testing.assert_array_equal(sample.value["t_ns"], wp)
            np.testing.assert_allclose(sample.value["poses"], poses, atol=1e-12)
        with pytest.raises(MissingTopicError, match="has no topic"):
            next(ep.messages("camera/depth/points"))
        with pytest.raises(ValueError, match="unknown stream"):
            next(ep.records("lidar"))


def test_overwritten_records_are_counted_never_skipped(tmp_path: Path, caplog) -> None:
    rings = _rings(capacity=4)
    cfg = RecorderConfig(out_dir=str(tmp_path), poll_rate_hz=5.0)
    with Recorder({"ft": rings["ft"]}, cfg) as rec, caplog.at_level(logging.WARNING):
        rec.start_episode()
        for i in range(40):  # 40 records in ~0.1 s; the ring holds 4, the drain polls at 5 Hz
            _put(rings["ft"], "ft", i)
            time.sleep(0.0025)
        time.sleep(0.3)
        path = rec.stop_episode()
        st = rec.stats()
    assert st["lost"]["ft"] > 0
    assert st["lost"]["ft"] + st["records"]["ft"] == 40
    assert "lost (overwritten in the ring" in caplog.text
    with open_episode(path) as ep:
        assert ep.metadata["lost"]["ft"] == st["lost"]["ft"]
        indices = [r["index"] for r in ep.records("ft")]
        assert len(indices) == st["records"]["ft"] and indices == sorted(set(indices))


def test_slow_disk_backlog_is_bounded_and_drops_are_reported(tmp_path: Path, caplog) -> None:
    path = tmp_path / "slow.mcap"
    sink = _SlowSink(path, delay_s=0.05)
    w = EpisodeWriter(
        path,
        metadata={"demuse/episode": {"wall_minus_monotonic_ns": 0}},
        sink=sink,
        chunk_size_bytes=4096,
        max_backlog_bytes=40_000,
        compression="none",
    )
    payload = bytes(10_000)
    msg = {"header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": ""}, "height": 1}
    msg.update(width=10_000, encoding="mono8", is_bigendian=0, step=10_000, data=payload)
    with caplog.at_level(logging.WARNING):
        accepted = sum(
            w.write("camera/color/image_raw", msg, log_time_ns=i, sequence=i) for i in range(40)
        )
        assert not w.has_room(40_000)
        stats = w.close()
    assert 0 < accepted < 40
    assert stats["dropped"] == 40 - accepted and stats["dropped_bytes"] == (40 - accepted) * 10_000
    assert stats["backlog_bytes_max"] <= 40_000 and stats["messages"] == accepted
    assert "falling behind" in caplog.text and "dropped" in caplog.text
    with open_episode(path) as ep:
        assert ep.counts["camera/color/image_raw"] == accepted


def test_disk_error_stops_writing_and_is_raised(tmp_path: Path) -> None:
    path = tmp_path / "full.mcap"
    w = EpisodeWriter(
        path,
        metadata={"demuse/episode": {"wall_minus_monotonic_ns": 0}},
        sink=_SlowSink(path, 0.0, fail_after=20_000),
        chunk_size_bytes=4096,
        compression="none",
    )
    msg = {"header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": ""}, "height": 1}
    msg.update(width=5000, encoding="mono8", is_bigendian=0, step=5000, data=bytes(5000))
    for i in range(20):
        w.write("camera/color/image_raw", msg, log_time_ns=i)
        time.sleep(0.005)
    with pytest.raises(OSError, match="No space left"):
        w.close()
    assert w.stats()["error"] and w.stats()["dropped"] > 0
    with open_episode(path, allow_truncated=True) as ep:  # what reached the disk reads
        assert 0 < ep.counts["camera/color/image_raw"] < 20


def test_discard_deletes_the_file(tmp_path: Path) -> None:
    rings = _rings()
    with Recorder(rings, RecorderConfig(out_dir=str(tmp_path))) as rec:
        part = rec.start_episode()
        _put(rings["arm"], "arm", 0)
        time.sleep(0.05)
        rec.discard_episode()
        assert rec.stats()["discarded"] == 1 and not rec.recording
        with pytest.raises(RuntimeError, match="no episode is recording"):
            rec.mark_success(True)
    assert not part.exists() and list(tmp_path.iterdir()) == []


def _finished_episode(tmp_path: Path, n: int = 30) -> Path:
    rings = _rings()
    cfg = RecorderConfig(out_dir=str(tmp_path / "src"), chunk_size_bytes=4096)
    with Recorder(rings, cfg) as rec:
        rec.start_episode()
        for i in range(n):
            for name in rings:
                _put(rings[name], name, i)
            time.sleep(0.002)
        return rec.stop_episode()


def test_bad_missing_and_truncated_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(EpisodeNotFoundError, match="does not exist"):
        open_episode(tmp_path / "nope.mcap")
    (tmp_path / "crashed.mcap.part").write_bytes(b"x")
    with pytest.raises(EpisodeNotFoundError, match="interrupted; recover"):
        open_episode(tmp_path / "crashed.mcap")
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"PK\x03\x04 this is a zip file, not MCAP" * 10)
    with pytest.raises(NotAnEpisodeError, match="not an MCAP file"):
        open_episode(garbage)
    with pytest.raises(NotAnEpisodeError, match="not a file"):
        open_episode(tmp_path)
    plain = tmp_path / "plain.mcap"
    EpisodeWriter(plain, metadata={"other": {"k": "v"}}).close()
    with pytest.raises(NotAnEpisodeError, match="not a demuse episode"):
        open_episode(plain)

    good = _finished_episode(tmp_path)
    with open_episode(good) as ep:
        full = ep.counts
    cut = tmp_path / "cut.mcap.part"
    data = good.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(TruncatedEpisodeError, match=r"demuse record --recover .*cut\.mcap\.part"):
        open_episode(cut)
    with open_episode(cut, allow_truncated=True) as ep:
        partial = ep.counts
        assert 0 < partial["joint_states"] < full["joint_states"]
        assert not ep.metadata["finished"] and ep.tail_error
        arm = list(ep.records("arm"))
        assert [r["index"] for r in arm] == list(range(len(arm)))

    report = recover(cut)
    assert report.output == tmp_path / "cut.mcap" and not cut.exists()
    assert report.messages == sum(partial.values()) and report.discarded_bytes > 0
    with open_episode(report.output) as ep:  # indexed now: no allow_truncated needed
        assert ep.complete and ep.counts == partial and ep.metadata["recovered"] is True
    assert recover(report.output).already_complete


def test_copy_of_a_finished_file_is_unchanged_by_recover(tmp_path: Path) -> None:
    good = _finished_episode(tmp_path, n=5)
    copy = tmp_path / "copy.mcap"
    shutil.copy(good, copy)
    assert recover(copy).already_complete and copy.read_bytes() == good.read_bytes()


def test_log_chunk_is_thread_safe_and_ignored_between_episodes(tmp_path: Path) -> None:
    rings = _rings()
    with Recorder(rings, RecorderConfig(out_dir=str(tmp_path))) as rec:
        assert rec.log_chunk(now_ns(), [now_ns()], np.zeros((1, 6))) is False
        rec.start_episode()
        threads = [
            threading.Thread(
                target=lambda: [
                    rec.log_chunk(now_ns(), [now_ns() + 1], np.zeros((1, 6))) for _ in range(50)
                ]
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        path = rec.stop_episode()
    with open_episode(path) as ep:
        assert ep.counts["action_chunk"] == 200 and ep.metadata["chunks_logged"] == 200
