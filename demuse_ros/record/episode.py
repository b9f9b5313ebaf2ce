"""Recorder settings and the state of one episode being recorded."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.record.writer import COMPRESSIONS, EpisodeWriter
from demuse_ros.timing.clock import now_ns


@dataclass(frozen=True)
class RecorderConfig:
    """Episode recording (``recorder`` in the policy node's parameters)."""

    out_dir: str = param("episodes", doc="Folder the episode files go to.")
    prefix: str = param("episode", doc="File name prefix.")
    compression: str = param(
        "lz4",
        doc="MCAP chunk compression: lz4 keeps up on two cores, zstd costs more CPU (README).",
        choices=COMPRESSIONS,
    )
    chunk_size_bytes: int = param(
        1 << 20, doc="MCAP chunk size; a crash loses at most the chunk being filled.",
        unit="B", range=(1024, 1 << 30),
    )  # fmt: skip
    flush_interval_s: float = param(
        0.25, doc="An open chunk is written at least this often.", unit="s", range=(0.01, 60.0)
    )
    max_backlog_mb: float = param(
        256.0, doc="Memory bound of the writer's queue.", unit="MB", range=(1.0, 65536.0)
    )
    poll_rate_hz: float = param(
        50.0, doc="How often the drain thread reads the rings.", unit="Hz", range=(1.0, 1000.0)
    )
    stop_timeout_s: float = param(
        30.0, doc="How long stop waits for the rings and the writer to drain.", unit="s",
        range=(0.1, 3600.0),
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self)


class EpisodeState:
    """State of the episode being recorded (touched by the drain thread and the caller)."""

    def __init__(self, path: Path, writer: EpisodeWriter, offset_ns: int, start: dict[str, int]):
        self.path, self.writer, self.offset_ns = path, writer, offset_ns
        self.t_start_ns = now_ns()
        self.cursor = dict(start)  # next record index to read, per stream
        self.first = dict(start)
        self.end: dict[str, int] | None = None  # set by stop: read up to (excluding) these
        self.drained = threading.Event()
        self.lost = dict.fromkeys(start, 0)
        self.stalls = 0
        self.chunks = 0
        self.success: bool | None = None


def outcome(success: bool | None) -> str:
    return "success" if success else "not marked" if success is None else "failure"


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["EpisodeState", "RecorderConfig", "fsync_dir", "outcome"]
