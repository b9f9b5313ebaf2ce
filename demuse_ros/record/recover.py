"""Repairing an interrupted episode: rewrite what is on disk as a valid, indexed MCAP file.

A crash (``kill -9``, power loss after the page cache was written, a full disk)
leaves ``….mcap.part`` without the summary and index that seeking readers,
Foxglove and ``ros2 bag`` need. :func:`recover` reads it in stream mode up to the
last complete record (every complete chunk, with its schemas and channels, and
the metadata records), writes a new file with the same messages, times and
sequence numbers, the same chunk compression, and a ``demuse/recovery``
metadata record (what was kept, what was cut), then renames it into place.

Output: ``x.mcap.part`` → ``x.mcap`` (the ``.part`` is removed once the new file
is on disk: everything readable in it is in the new file); ``x.mcap`` without an
index → rewritten in place. A complete file is left alone.
"""

from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from demuse_ros.record.meta import RECOVERY
from demuse_ros.record.reader import NotAnEpisodeError, check_file, scan


@dataclass
class RecoveryReport:
    """What :func:`recover` did."""

    source: Path
    output: Path
    already_complete: bool = False
    messages: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    kept_bytes: int = 0
    discarded_bytes: int = 0
    tail_error: str | None = None

    def describe(self) -> str:
        if self.already_complete:
            return f"{self.source}: already complete (indexed); nothing to do"
        return (
            f"{self.source} -> {self.output}: kept {self.messages} messages on "
            f"{len(self.topics)} topics ({self.kept_bytes / 1e6:.1f} MB); discarded the "
            f"incomplete tail of {self.discarded_bytes} bytes"
            + (f" ({self.tail_error})" if self.tail_error else "")
        )


def output_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".part")) if path.name.endswith(".part") else path


def recover(
    path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
) -> RecoveryReport:
    """Rewrite the episode at ``path`` as an indexed MCAP file (module docstring).

    Raises:
        EpisodeNotFoundError / NotAnEpisodeError: missing file or not MCAP at all.
        FileExistsError: the output exists and is another file (never overwritten).
    """
    from mcap.records import Attachment, Channel, Header, Message, Metadata, Schema
    from mcap.writer import CompressionType
    from mcap.writer import Writer as McapWriter

    src, complete = check_file(path)
    out = Path(output) if output is not None else output_path(src)
    report = RecoveryReport(source=src, output=out)
    if complete and _has_summary(src):
        report.already_complete = True
        return report
    if out != src and out.exists():
        raise FileExistsError(f"{out} exists; move it away or pass another output path")
    size = src.stat().st_size
    tmp = out.with_name(out.name + ".recovering")
    state: dict = {}
    records = _records_before_summary(scan(src, state))
    compression = {"lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD}.get(
        _first_chunk_compression(src), CompressionType.NONE
    )
    header = next(records, None)
    if not isinstance(header, Header):
        raise NotAnEpisodeError(f"{src}: not even the MCAP header is complete; nothing to recover")
    counts: collections.Counter[str] = collections.Counter()
    schema_ids: dict[int, int] = {}
    channel_ids: dict[int, int] = {}
    topics: dict[int, str] = {}
    try:
        with open(tmp, "wb") as fh:
            w = McapWriter(fh, compression=compression)
            w.start(profile=header.profile, library=header.library)
            for rec in records:
                if isinstance(rec, Schema) and rec.id not in schema_ids:
                    schema_ids[rec.id] = w.register_schema(rec.name, rec.encoding, rec.data)
                elif isinstance(rec, Channel) and rec.id not in channel_ids:
                    channel_ids[rec.id] = w.register_channel(
                        rec.topic,
                        rec.message_encoding,
                        schema_ids.get(rec.schema_id, 0),
                        rec.metadata,
                    )
                    topics[rec.id] = rec.topic
                elif isinstance(rec, Message) and rec.channel_id in channel_ids:
                    w.add_message(
                        channel_ids[rec.channel_id],
                        rec.log_time,
                        rec.data,
                        rec.publish_time,
                        rec.sequence,
                    )
                    counts[topics[rec.channel_id]] += 1
                elif isinstance(rec, Metadata):
                    w.add_metadata(rec.name, rec.metadata)
                elif isinstance(rec, Attachment):
                    w.add_attachment(
                        rec.create_time, rec.log_time, rec.name, rec.media_type, rec.data
                    )
            report.messages = sum(counts.values())
            report.topics = dict(counts)
            report.kept_bytes = state["good_bytes"]
            report.discarded_bytes = size - state["good_bytes"]
            report.tail_error = state["tail_error"]
            w.add_metadata(
                RECOVERY,
                {
                    "recovered": "true",
                    "recovered_from": src.name,
                    "recovered_messages": str(report.messages),
                    "discarded_bytes": str(report.discarded_bytes),
                    "tail_error": report.tail_error or "",
                },
            )
            w.finish()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if out != src:
        src.unlink()
    return report


def _has_summary(path: Path) -> bool:
    from mcap.reader import SeekingReader

    try:
        with path.open("rb") as fh:
            summary = SeekingReader(fh).get_summary()
    except Exception:
        return False
    return summary is not None and summary.statistics is not None


def _first_chunk_compression(path: Path) -> str:
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    with contextlib.suppress(Exception), path.open("rb") as fh:
        for rec in StreamReader(fh, emit_chunks=True, record_size_limit=1 << 31).records:
            if isinstance(rec, Chunk):
                return rec.compression
    return ""


def _records_before_summary(records):  # type: ignore[no-untyped-def]
    """The data section's records (everything up to DataEnd / the summary)."""
    from mcap.records import DataEnd, Footer

    for rec in records:
        if isinstance(rec, DataEnd | Footer):
            return
        yield rec


__all__ = ["RecoveryReport", "output_path", "recover"]
