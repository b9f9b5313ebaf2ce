"""The recorder: the cell's three rings (and the commanded chunks) into episode files.

A :class:`Recorder` owns one *drain* thread that reads every record of the
camera, F/T and arm rings exactly once, by record index
(:meth:`RingBuffer.read`), from the first record written after
:meth:`start_episode` to the last one written before :meth:`stop_episode`, and
hands each to an :class:`~demuse_ros.record.writer.EpisodeWriter` (its own
thread: message building, CDR encoding and file I/O). The control loop only
calls :meth:`log_chunk`, which queues and returns.

Back-pressure and losses: when the writer's byte budget is full the drain
thread leaves records in their ring (a second buffer, ``read_budget_s`` deep)
and counts a *stall*; a record the ring overwrote before it was read is counted
as *lost* for its stream and logged. Both appear in :meth:`stats` and in the
episode's ``demuse/episode_end`` metadata; nothing is skipped silently.

Files: one per episode, ``<out_dir>/<prefix>-<YYYYmmdd-HHMMSS>-<n>.mcap``,
written as ``….mcap.part`` and renamed when the episode stops (after the index,
summary and an fsync). A crash leaves the ``.part``: readable up to its last
complete chunk in stream mode; ``demuse record --recover`` rewrites it indexed.
A discarded episode's file is deleted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from demuse_ros.record import meta as M
from demuse_ros.record.episode import EpisodeState, RecorderConfig, fsync_dir, outcome
from demuse_ros.record.messages import (
    CameraIntrinsics,
    Frames,
    arm_messages,
    camera_messages,
    chunk_messages,
    ft_messages,
)
from demuse_ros.record.writer import EpisodeWriter
from demuse_ros.timing.clock import NS_PER_S, now_ns
from demuse_ros.timing.loop import PeriodicLoop
from demuse_ros.transport.ring_buffer import OverwrittenError, RingBuffer

log = logging.getLogger("demuse.record")

STREAMS = ("camera", "ft", "arm")


class Recorder:
    """Records the rings of a cell into MCAP episodes (module docstring).

    Args:
        rings: ``{"camera": ring, "ft": ring, "arm": ring}`` (readers; any subset).
        config: :class:`RecorderConfig`.
        intrinsics: colour intrinsics for ``camera/color/camera_info`` (None: no
            camera info topic).
        frames: TF frame names.
        base_metadata: stored in every episode's ``demuse/episode`` record.
    """

    def __init__(
        self,
        rings: Mapping[str, RingBuffer],
        config: RecorderConfig | None = None,
        *,
        intrinsics: CameraIntrinsics | None = None,
        frames: Frames | None = None,
        base_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        unknown = set(rings) - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown ring name(s) {sorted(unknown)}; use {STREAMS}")
        self.rings = dict(rings)
        self.config = config or RecorderConfig()
        self.intrinsics, self.frames = intrinsics, frames or Frames()
        self.base_metadata = dict(base_metadata or {})
        self._nbytes = {name: ring.schema.record_nbytes for name, ring in self.rings.items()}
        self._lock = threading.Lock()
        self._episode: EpisodeState | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._drain_cpu_s = 0.0
        self._pending_meta: M.EpisodeMeta | None = None
        self._totals: dict[str, Any] = {
            "episodes": 0,
            "discarded": 0,
            "records": dict.fromkeys(self.rings, 0),
            "lost": dict.fromkeys(self.rings, 0),
            "stalls": 0,
            "dropped": 0,
            "chunks": 0,
            "bytes_written": 0,
            "writer_cpu_s": 0.0,
            "backlog_bytes_max": 0,
        }
        self.last_path: Path | None = None

    @classmethod
    def from_cell(cls, cell: Any, config: RecorderConfig | None = None, **kwargs: Any) -> Recorder:
        """A recorder on a started :class:`~demuse_ros.drivers.cell.Cell`'s three rings."""
        rings = {name: getattr(cell, name).ring for name in STREAMS}
        missing = [name for name, ring in rings.items() if ring is None]
        if missing:
            raise RuntimeError(f"cell drivers {missing} have no ring: start the cell first")
        return cls(rings, config, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Recorder:
        """Start the drain thread (idle until :meth:`start_episode`)."""
        if self._thread is None:
            Path(self.config.out_dir).mkdir(parents=True, exist_ok=True)
            self._closing.clear()
            self._thread = threading.Thread(target=self._drain_loop, name="recorder", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop a running episode (kept, not discarded), then the drain thread."""
        if self.recording:
            try:
                self.stop_episode()
            except Exception:
                log.exception("recorder: stopping the episode on close failed")
        self._closing.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def recording(self) -> bool:
        return self._episode is not None

    @property
    def marked_success(self) -> bool | None:
        """The running episode's success flag (None: not marked, or no episode)."""
        ep = self._episode
        return None if ep is None else ep.success

    # ------------------------------------------------------------------ episodes
    def start_episode(self, meta: M.EpisodeMeta | Mapping[str, Any] | None = None) -> Path:
        """Open a new episode file; records written from now on go into it. Returns its path
        (the ``.part`` name until :meth:`stop_episode`)."""
        if self._thread is None:
            self.start()
        if self._episode is not None:
            raise RuntimeError(f"an episode is already recording ({self._episode.path})")
        if meta is None:
            meta = M.EpisodeMeta()
        elif not isinstance(meta, M.EpisodeMeta):
            meta = M.EpisodeMeta(**meta)
        cfg = self.config
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{cfg.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 0
        while (out / f"{stem}-{n:03d}.mcap").exists() or (
            out / f"{stem}-{n:03d}.mcap.part"
        ).exists():
            n += 1
        final = out / f"{stem}-{n:03d}.mcap"
        part = final.with_name(final.name + ".part")
        offset = M.wall_minus_monotonic_ns()
        start = {name: ring.count for name, ring in self.rings.items()}
        info = {
            **self.base_metadata,
            **meta.as_dict(),
            "episode": final.name,
            "wall_minus_monotonic_ns": offset,
            "start_monotonic_ns": now_ns(),
            "start_wall": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recorder": asdict(cfg),
            "frames": asdict(self.frames),
            "intrinsics": asdict(self.intrinsics) if self.intrinsics else None,
            "streams": {name: ring.schema.describe() for name, ring in self.rings.items()},
            "stamps": "header.stamp = capture (wall); MCAP log_time = receive (wall), "
            "publish_time = capture (wall), sequence = source ring record index; "
            "<stream>/time_reference: device time",
        }
        writer = EpisodeWriter(
            part,
            metadata={M.EPISODE: info},
            chunk_size_bytes=cfg.chunk_size_bytes,
            compression=cfg.compression,
            max_backlog_bytes=round(cfg.max_backlog_mb * 1e6),
            flush_interval_s=cfg.flush_interval_s,
        )
        ep = EpisodeState(part, writer, offset, start)
        ep.success = meta.success
        with self._lock:
            self._episode = ep
        log.info("recording episode %s", part)
        return part

    def mark_success(self, success: bool | None) -> None:
        """Set the running episode's success flag (stored when it stops)."""
        ep = self._episode
        if ep is None:
            raise RuntimeError("no episode is recording: mark success before stopping it")
        ep.success = success
        log.info("episode %s marked %s", ep.path.name, outcome(success))

    def stop_episode(self, success: bool | None = None, **end_info: Any) -> Path:
        """Finish the episode: drain the rings up to now, write the index, rename.

        ``success`` (when not None) overrides :meth:`mark_success`; ``end_info``
        goes into ``demuse/episode_end`` (e.g. ``interrupted=True``). Returns the
        final path.

        Raises:
            RuntimeError: no episode, or the file could not be finished (the
                ``.part`` stays; ``demuse record --recover`` repairs it).
        """
        ep = self._end_capture()
        if success is not None:
            ep.success = success
        summary = self._episode_summary(ep)
        ep.writer.add_metadata(M.EPISODE_END, {**summary, **end_info})
        try:
            wstats = ep.writer.close(self.config.stop_timeout_s)
        except BaseException as exc:
            self._account(ep, ep.writer.stats())
            raise RuntimeError(
                f"episode {ep.path} could not be finished ({exc!r}); its complete chunks are "
                f"on disk: run `demuse record --recover {ep.path}`"
            ) from exc
        final = ep.path.with_name(ep.path.name.removesuffix(".part"))
        os.replace(ep.path, final)
        fsync_dir(final.parent)
        self._account(ep, wstats)
        self._totals["episodes"] += 1
        self.last_path = final
        lost = sum(summary["lost"].values())
        log_fn = log.warning if lost or wstats["dropped"] else log.info
        log_fn(
            "episode %s: %.1f s, %s records, %d lost in rings, %d dropped by the writer, %s",
            final.name,
            summary["duration_s"],
            summary["records"],
            lost,
            wstats["dropped"],
            outcome(ep.success),
        )
        return final

    def discard_episode(self) -> None:
        """Stop the running episode and delete its file."""
        ep = self._end_capture(drain=False)
        ep.writer.abort()
        with contextlib.suppress(FileNotFoundError):
            ep.path.unlink()
        self._totals["discarded"] += 1
        log.info("episode %s discarded", ep.path.name)

    def _end_capture(self, drain: bool = True) -> EpisodeState:
        ep = self._episode
        if ep is None:
            raise RuntimeError("no episode is recording")
        with self._lock:  # between two drain passes: no pass reads past these ends
            ep.end = {name: ring.count for name, ring in self.rings.items()}
        if drain and not ep.drained.wait(self.config.stop_timeout_s):
            log.error("recorder: rings not drained within %.1f s", self.config.stop_timeout_s)
        with self._lock:  # the drain thread no longer touches ep after this
            self._episode = None
        if drain:  # what the drain thread could not reach is lost, and counted
            for name, end in ep.end.items():
                if ep.cursor[name] < end:
                    ep.lost[name] += end - ep.cursor[name]
        return ep

    def _episode_summary(self, ep: EpisodeState) -> dict[str, Any]:
        end = ep.end or {}
        return {
            "success": ep.success,
            "stop_monotonic_ns": now_ns(),
            "duration_s": (now_ns() - ep.t_start_ns) / NS_PER_S,
            "records": {n: end.get(n, ep.cursor[n]) - ep.first[n] - ep.lost[n] for n in ep.first},
            "lost": dict(ep.lost),
            "writer_stalls": ep.stalls,
            "writer_dropped": ep.writer.dropped,
            "chunks_logged": ep.chunks,
        }

    def _account(self, ep: EpisodeState, wstats: dict[str, Any]) -> None:
        t = self._totals
        for name in ep.first:
            t["records"][name] += ep.cursor[name] - ep.first[name] - ep.lost[name]
            t["lost"][name] += ep.lost[name]
        t["stalls"] += ep.stalls
        t["dropped"] += wstats["dropped"]
        t["chunks"] += ep.chunks
        t["bytes_written"] += wstats["bytes_written"]
        t["writer_cpu_s"] += wstats["cpu_s"]
        t["backlog_bytes_max"] = max(t["backlog_bytes_max"], wstats["backlog_bytes_max"])

    # ------------------------------------------------------------------ commanded waypoints
    def log_chunk(
        self,
        t_ns: int,
        waypoints_t_ns: Any,
        poses: Any,
        gripper_width_m: Any = None,
    ) -> bool:
        """Record a chunk sent at ``t_ns`` (monotonic): waypoint times (N,) ns, TCP poses
        (N, 6), optional gripper widths (N,). Copies and queues; returns False when no
        episode is recording or the writer dropped it (counted)."""
        ep = self._episode
        if ep is None:
            return False
        t = np.array(waypoints_t_ns, dtype=np.int64, copy=True)
        p = np.array(poses, dtype=np.float64, copy=True)
        w = None if gripper_width_m is None else np.array(gripper_width_m, np.float64, copy=True)
        build = functools.partial(chunk_messages, int(t_ns), t, p, w, ep.offset_ns, self.frames)
        wall = int(t_ns) + ep.offset_ns
        ok = ep.writer.submit(build, log_time_ns=wall, publish_time_ns=wall, sequence=ep.chunks)
        ep.chunks += ok
        return ok

    # ------------------------------------------------------------------ drain thread
    def _drain_loop(self) -> None:
        loop = PeriodicLoop(self.config.poll_rate_hz, spin_s=0.0)
        cpu0 = time.thread_time()
        while not self._closing.is_set():
            loop.wait()
            with self._lock:
                ep = self._episode
                if ep is not None:
                    end = ep.end
                    done = True
                    for name in self.rings:
                        done &= self._drain(ep, name, None if end is None else end[name])
                    if end is not None and done:
                        ep.drained.set()
            self._drain_cpu_s = time.thread_time() - cpu0

    def _drain(self, ep: EpisodeState, name: str, end: int | None) -> bool:
        """Hand the stream's new records to the writer; True when ``end`` is reached."""
        ring, writer = self.rings[name], ep.writer
        cur, stop = ep.cursor[name], ring.count if end is None else end
        nbytes = self._nbytes[name]
        while cur < stop:
            oldest = ring.oldest_readable()
            if cur < oldest:
                self._lose(ep, name, oldest - cur, ring)
                cur = oldest
                continue
            if not writer.has_room(nbytes):
                if writer.error is not None:  # writing failed: what's left is lost, counted
                    self._lose(ep, name, stop - cur, ring)
                    cur = stop
                    break
                ep.stalls += 1
                break
            try:
                rec = ring.read(cur)
            except OverwrittenError:
                if cur >= ring.oldest_readable():  # not a lap: count this one and go on
                    self._lose(ep, name, 1, ring)
                    cur += 1
                continue
            writer.submit(
                functools.partial(self._build, name, rec, ep.offset_ns),
                log_time_ns=rec["t_receive_ns"] + ep.offset_ns,
                publish_time_ns=rec["t_capture_ns"] + ep.offset_ns,
                sequence=cur,
                nbytes=nbytes,
            )
            cur += 1
        ep.cursor[name] = cur
        return end is not None and cur >= end

    def _lose(self, ep: EpisodeState, name: str, n: int, ring: RingBuffer) -> None:
        ep.lost[name] += n
        log.warning(
            "recorder: %d %s record(s) lost (overwritten in the ring of %d before being read; "
            "%d lost this episode)",
            n,
            name,
            ring.capacity,
            ep.lost[name],
        )

    def _build(self, name: str, rec: dict[str, Any], offset_ns: int) -> list:
        if name == "camera":
            return camera_messages(rec, offset_ns, self.frames, self.intrinsics)
        if name == "ft":
            return ft_messages(rec, offset_ns, self.frames)
        return arm_messages(rec, offset_ns, self.frames)

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, Any]:
        """Totals over finished episodes plus the running one."""
        t = self._totals
        out = {
            "recording": self.recording,
            "episodes": t["episodes"],
            "discarded": t["discarded"],
            "records": dict(t["records"]),
            "lost": dict(t["lost"]),
            "stalls": t["stalls"],
            "dropped": t["dropped"],
            "chunks_logged": t["chunks"],
            "bytes_written": t["bytes_written"],
            "backlog_bytes": 0,
            "backlog_bytes_max": t["backlog_bytes_max"],
            "drain_cpu_s": self._drain_cpu_s,
            "writer_cpu_s": t["writer_cpu_s"],
            "error": None,
        }
        ep = self._episode
        if ep is not None:
            w = ep.writer.stats()
            for name in ep.first:
                out["records"][name] += ep.cursor[name] - ep.first[name] - ep.lost[name]
                out["lost"][name] += ep.lost[name]
            out["stalls"] += ep.stalls
            out["dropped"] += w["dropped"]
            out["chunks_logged"] += ep.chunks
            out["bytes_written"] += w["bytes_written"]
            out["backlog_bytes"] = w["backlog_bytes"]
            out["backlog_bytes_max"] = max(out["backlog_bytes_max"], w["backlog_bytes_max"])
            out["writer_cpu_s"] += w["cpu_s"]
            out["error"] = w["error"]
            out["current"] = str(ep.path)
        out["cpu_s"] = out["drain_cpu_s"] + out["writer_cpu_s"]
        return out


__all__ = ["STREAMS", "Recorder", "RecorderConfig"]
