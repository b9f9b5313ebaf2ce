"""Crash safety: ``kill -9`` mid-episode leaves a file readable up to its last chunk, and
``demuse record --recover`` turns it into an indexed MCAP file with every complete message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mcap_ros2", reason="needs mcap-ros2-support (core dependency)")

from demuse_ros.cli import main
from demuse_ros.record.reader import TruncatedEpisodeError, open_episode

FLUSH_S = 0.1

# The recording process: the drivers' ring class and schemas, known values (record i of the
# arm has joint positions i + [0, .1, …, .5]), the real Recorder; prints its progress.
CHILD = f"""
import sys, time
import numpy as np
from demuse_ros.record.recorder import Recorder, RecorderConfig
from demuse_ros.sync.streams import arm_schema, camera_schema
from demuse_ros.timing.clock import now_ns
from demuse_ros.transport import RingBuffer

arm = RingBuffer.create(arm_schema(), 256)
cam = RingBuffer.create(camera_schema(64, 48), 16)
cfg = RecorderConfig(out_dir=sys.argv[1], flush_interval_s={FLUSH_S}, chunk_size_bytes=65536)
rec = Recorder({{"arm": arm, "camera": cam}}, cfg).start()
print("part", rec.start_episode({{"task": "crash"}}), flush=True)
i = 0
while True:
    t = now_ns()
    arm.put(t, t, float(i), joint_positions_rad=i + np.arange(6) * 0.1,
            joint_velocities_rad_s=np.zeros(6), tcp_pose=np.zeros(6), tcp_speed=np.zeros(6),
            robot_mode=7, safety_mode=1, runtime_state=2)
    if i % 4 == 0:
        cam.put(t, t, float(i), rgb=np.full((48, 64, 3), i % 256, np.uint8),
                depth_m=np.full((48, 64), 1.0, np.float32), frame_number=i)
    i += 1
    if i % 25 == 0:
        print("count", i, flush=True)
    time.sleep(0.004)
"""


def test_kill_9_mid_episode_leaves_a_readable_file_that_recover_indexes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    progress: list[tuple[float, int]] = []
    try:
        kind, part = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert kind == "part"
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, "the recording process died on its own"
            progress.append((time.monotonic(), int(line.split()[1])))
            if progress[-1][1] >= 300:
                break
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    part_path = Path(part)
    assert part_path.name.endswith(".mcap.part") and part_path.exists()
    # Records written well before the kill (flush interval + drain poll + margin) are on disk.
    safe = max(n for t, n in progress if t < t_kill - (FLUSH_S + 0.4))

    with pytest.raises(TruncatedEpisodeError, match="demuse record --recover"):
        open_episode(part_path)
    with open_episode(part_path, allow_truncated=True) as ep:
        counts = dict(ep.counts)
        arm = list(ep.records("arm"))
        assert ep.metadata["task"] == "crash" and not ep.metadata["finished"]
    assert safe <= len(arm) <= progress[-1][1] + 50
    assert [r["index"] for r in arm] == list(range(len(arm)))  # a prefix, nothing skipped
    for r in arm:
        np.testing.assert_array_equal(r["joint_positions_rad"], r["index"] + np.arange(6) * 0.1)
        assert r["device_time_s"] == r["index"]

    assert main(["record", "--recover", str(part_path)]) == 0
    recovered = part_path.with_name(part_path.name.removesuffix(".part"))
    assert recovered.exists() and not part_path.exists()
    with open_episode(recovered) as ep:
        assert ep.complete and ep.counts == counts
        assert ep.metadata["recovered"] is True
        frames = list(ep.records("camera"))
        assert [f["frame_number"] for f in frames] == [4 * k for k in range(len(frames))]
        assert all(int(f["rgb"][0, 0, 0]) == f["frame_number"] % 256 for f in frames)


def test_recover_reports_bad_files_and_fails(tmp_path: Path, caplog) -> None:
    (tmp_path / "junk.mcap.part").write_bytes(b"not mcap at all")
    assert main(["record", "--recover", str(tmp_path / "junk.mcap.part")]) == 1
    assert "not an MCAP file" in caplog.text
    assert main(["record", "--recover", str(tmp_path / "missing.mcap.part")]) == 1
    assert "does not exist" in caplog.text
