"""``demuse bench record --sim``: sustained recording of the whole cell, measured.

Records one episode of ``seconds`` from the twin (30 Hz 640×480 RGB-D, 100 Hz
F/T, arm state at the controller rate, the expert's chunks through the
runtime), then reads the file back and reports:

* ``seconds``, per-stream record ``rates_hz`` (and the file's message counts,
  checked against the recorder's record counts);
* ``drops``: records lost in the rings plus items the writer dropped (0 = every
  record the drivers wrote during the episode is in the file);
* ``write_mb_s`` (bytes written / episode time; compressed), ``raw_mb_s`` (the
  same before chunk compression), ``backlog_mb_max``, ``stalls``;
* ``cpu_percent``: CPU time of the recorder's two threads (drain + writer,
  ``time.thread_time`` in each) over the episode's wall time, in % of one core;
* ``codecs``: lz4 and zstd (level 3, what the MCAP writer uses) on 1 MiB chunks of
  the recorded images — throughput on one core and ratio — and the share of a
  core each costs at this raw data rate.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def run(
    seconds: float,
    sim_config: Any,
    *,
    cell_config: Any = None,
    compression: str = "none",
    keep_dir: str | None = None,
) -> dict[str, Any]:
    from demuse_ros.record.meta import EpisodeMeta
    from demuse_ros.record.reader import open_episode
    from demuse_ros.record.recorder import RecorderConfig
    from demuse_ros.record.session import record_sim

    out_dir = keep_dir or tempfile.mkdtemp(prefix="demuse-bench-record-")
    try:
        result = record_sim(
            sim_config,
            cell_config=cell_config,
            recorder_config=RecorderConfig(out_dir=out_dir, compression=compression),
            meta=EpisodeMeta(task="bench", notes="demuse bench record"),
            episodes=1,
            seconds=seconds,
            until_done=False,
        )
        path = Path(result["episodes"][0]["path"])
        with open_episode(path) as ep:
            duration = float(ep.metadata["duration_s"])
            records = ep.metadata["records"]
            counts = dict(ep.counts)
            codecs = _codecs(ep)
            raw_mb_s = ep.uncompressed_bytes / duration / 1e6
        rec = result["recorder"]
        file_matches = all(
            counts.get(topic, 0) == records[stream]
            for stream, topic in (
                ("camera", "camera/color/image_raw"),
                ("ft", "ft/wrench"),
                ("arm", "joint_states"),
            )
        )
        write_mb_s = rec["bytes_written"] / duration / 1e6
        out = {
            "seconds": duration,
            "drops": sum(rec["lost"].values()) + rec["dropped"],
            "lost": rec["lost"],
            "writer_dropped": rec["dropped"],
            "write_mb_s": write_mb_s,
            "raw_mb_s": raw_mb_s,
            "cpu_percent": rec["cpu_s"] / duration * 100.0,
            "cpu_source": "time.thread_time() of the recorder's drain and writer threads",
            "drain_cpu_percent": rec["drain_cpu_s"] / duration * 100.0,
            "writer_cpu_percent": rec["writer_cpu_s"] / duration * 100.0,
            "rates_hz": {name: n / duration for name, n in records.items()},
            "records": records,
            "file_counts_match": file_matches,
            "chunks_logged": rec["chunks_logged"],
            "backlog_mb_max": rec["backlog_bytes_max"] / 1e6,
            "stalls": rec["stalls"],
            "file_mb": path.stat().st_size / 1e6,
            "compression": compression,
            "runtime": result["runtime"],
            "codecs": {
                name: {**c, "core_share_at_raw_rate": raw_mb_s / c["mb_s"]}
                for name, c in codecs.items()
            },
        }
        if keep_dir:
            out["file"] = str(path)
        return out
    finally:
        if keep_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)


def _codecs(ep: Any, max_frames: int = 30) -> dict[str, dict[str, float]]:
    """lz4 / zstd throughput and ratio on 1 MiB blobs of the recorded image messages."""
    import lz4.frame
    import zstandard

    data = bytearray()
    topics = ["camera/color/image_raw", "camera/aligned_depth_to_color/image_raw"]
    for i, (_, message, _) in enumerate(ep.raw_messages(topics)):
        data += message.data
        if i >= 2 * max_frames:
            break
    blobs = [bytes(data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    out = {}
    for name, fn in (("lz4", lz4.frame.compress), ("zstd", zstandard.compress)):
        t0 = time.thread_time()
        size = sum(len(fn(b)) for b in blobs)
        cpu = max(time.thread_time() - t0, 1e-9)
        out[name] = {"mb_s": len(data) / cpu / 1e6, "ratio": len(data) / max(size, 1)}
    return out


__all__ = ["run"]
