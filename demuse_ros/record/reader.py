"""Reading episode files back: metadata, counts and decoded values with exact stamps.

``open_episode(path)`` checks the file and returns an :class:`Episode`:

* ``metadata``: ``demuse/episode`` merged with ``demuse/episode_end`` (JSON
  values decoded);
* ``topics`` / ``counts``: datatype and message count per topic;
* ``messages(topic)``: :class:`Sample` tuples — host-monotonic capture and
  receive times (ns, exact: MCAP ``publish_time``/``log_time`` minus the
  episode's ``wall_minus_monotonic_ns``), the source record index and the
  decoded value as numpy (see :func:`decode`);
* ``records(stream)``: the ``camera``/``ft``/``arm`` ring records rebuilt from
  their topics (field names of :mod:`demuse_ros.sync.streams`, stamps, device
  time from ``<stream>/time_reference``, depth back in float32 metres).

A file without an index (a crash left it) is refused with the fix
(``demuse record --recover``) unless ``allow_truncated=True``: it is then read
in stream mode up to its last complete chunk.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from demuse_ros.record.decode import STREAM_TOPICS, decode, fill_record
from demuse_ros.record.meta import EPISODE, EPISODE_END, RECOVERY, STRING_KEYS

MAGIC = b"\x89MCAP0\r\n"


class EpisodeError(Exception):
    """An episode file cannot be read as asked (the message says why and what to do)."""


class EpisodeNotFoundError(EpisodeError, FileNotFoundError):
    pass


class NotAnEpisodeError(EpisodeError):
    pass


class TruncatedEpisodeError(EpisodeError):
    pass


class MissingTopicError(EpisodeError, LookupError):
    pass


class Sample(NamedTuple):
    """One message: monotonic capture/receive ns, source record index, decoded value."""

    t_capture_ns: int
    t_receive_ns: int
    sequence: int
    value: Any


def _recover_hint(path: Path) -> str:
    return (
        f"run `demuse record --recover {path}` to rewrite it with an index (keeps every "
        "complete chunk), or open it with allow_truncated=True to read it up to its last "
        "complete chunk"
    )


def check_file(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """``(path, complete)``: the file exists, is MCAP, and whether it ends in a footer.

    Raises:
        EpisodeNotFoundError, NotAnEpisodeError.
    """
    p = Path(path)
    if not p.exists():
        hint = ""
        if p.with_name(p.name + ".part").exists():
            hint = f" ({p.name}.part exists: the recording was interrupted; recover that)"
        raise EpisodeNotFoundError(f"episode file {p} does not exist{hint}")
    if not p.is_file():
        raise NotAnEpisodeError(f"{p} is not a file")
    size = p.stat().st_size
    with p.open("rb") as fh:
        head = fh.read(8)
        if head != MAGIC:
            raise NotAnEpisodeError(
                f"{p} is not an MCAP file (it starts with {head!r}, MCAP files with {MAGIC!r}); "
                "episodes are written by `demuse record`"
            )
        if size < 8 + 9 + 20 + 8:
            return p, False
        fh.seek(-8, io.SEEK_END)
        complete = fh.read(8) == MAGIC
    return p, complete


def scan(path: str | os.PathLike[str], state: dict[str, Any] | None = None) -> Iterator[Any]:
    """Every record of an MCAP file in file order (chunks broken up), stopping cleanly at the
    first incomplete or unreadable record. ``state`` gets ``good_bytes`` (the offset after
    the last complete record), ``tail_error`` and ``chunk_compression``."""
    from mcap.records import Chunk, DataEnd
    from mcap.stream_reader import StreamReader, breakup_chunk

    state = state if state is not None else {}
    state.update(good_bytes=0, tail_error=None, chunk_compression=None, complete=False)
    with open(path, "rb") as fh:
        records = StreamReader(fh, emit_chunks=True, record_size_limit=1 << 31).records
        while True:
            try:
                record = next(records)
                inner = breakup_chunk(record) if isinstance(record, Chunk) else None
            except StopIteration:
                state["complete"] = True
                return
            except Exception as exc:  # truncated or corrupt: stop at the last good record
                state["tail_error"] = f"{type(exc).__name__}: {exc}"
                return
            state["good_bytes"] = fh.tell()
            if inner is None:
                if isinstance(record, DataEnd):
                    state["complete"] = True
                yield record
            else:
                state["chunk_compression"] = record.compression
                yield from inner


def _decode_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


class Episode:
    """An open episode file (see the module docstring). Use :func:`open_episode`."""

    def __init__(self, path: str | os.PathLike[str], *, allow_truncated: bool = False) -> None:
        from mcap_ros2.decoder import DecoderFactory

        self.path, self.complete = check_file(path)
        self.truncated = not self.complete
        self._decoders = DecoderFactory()
        self._fh: Any = None
        self.tail_error: str | None = None
        self.uncompressed_bytes = 0
        self.readable_bytes = self.path.stat().st_size
        raw_meta: dict[str, dict[str, str]] = {}
        if self.complete:
            try:
                self._open_indexed(raw_meta)
            except Exception as exc:
                self.close()
                if not allow_truncated:
                    raise TruncatedEpisodeError(
                        f"{self.path}: its index cannot be read ({exc}); "
                        + _recover_hint(self.path)
                    ) from exc
                self.complete = False
        if not self.complete:
            if not allow_truncated:
                raise TruncatedEpisodeError(
                    f"{self.path} is incomplete: it has no index (the recording was interrupted "
                    "before the episode was stopped); " + _recover_hint(self.path)
                )
            self._scan_truncated(raw_meta)
        if EPISODE not in raw_meta:
            self.close()
            raise NotAnEpisodeError(
                f"{self.path} is an MCAP file but not a demuse episode (no {EPISODE!r} "
                "metadata); it was not written by `demuse record`"
            )
        self.metadata: dict[str, Any] = {}
        for name in (EPISODE, EPISODE_END, RECOVERY):
            for k, v in raw_meta.get(name, {}).items():
                self.metadata[k] = v if k in STRING_KEYS else _decode_json(v)
        self.metadata["finished"] = EPISODE_END in raw_meta
        self.wall_offset_ns = int(self.metadata["wall_minus_monotonic_ns"])

    # ------------------------------------------------------------------ opening
    def _open_indexed(self, raw_meta: dict[str, dict[str, str]]) -> None:
        from mcap.reader import SeekingReader

        self._fh = self.path.open("rb")
        reader = SeekingReader(self._fh, decoder_factories=[self._decoders])
        summary = reader.get_summary()
        if summary is None or summary.statistics is None:
            raise EpisodeError("no summary section")
        self._reader = reader
        self.topics = {
            ch.topic: summary.schemas[ch.schema_id].name for ch in summary.channels.values()
        }
        #: bytes of the chunks before compression (the raw data rate's numerator)
        self.uncompressed_bytes = sum(ci.uncompressed_size for ci in summary.chunk_indexes)
        counts = summary.statistics.channel_message_counts
        self.counts = {ch.topic: int(counts.get(cid, 0)) for cid, ch in summary.channels.items()}
        for m in reader.iter_metadata():
            raw_meta[m.name] = dict(m.metadata)

    def _scan_truncated(self, raw_meta: dict[str, dict[str, str]]) -> None:
        from mcap.records import Channel, Message, Metadata, Schema

        state: dict[str, Any] = {}
        schemas: dict[int, str] = {}
        channels: dict[int, str] = {}
        self.topics, self.counts = {}, {}
        for rec in scan(self.path, state):
            if isinstance(rec, Schema):
                schemas[rec.id] = rec.name
            elif isinstance(rec, Channel):
                channels[rec.id] = rec.topic
                self.topics[rec.topic] = schemas.get(rec.schema_id, "")
                self.counts.setdefault(rec.topic, 0)
            elif isinstance(rec, Message) and rec.channel_id in channels:
                self.counts[channels[rec.channel_id]] += 1
            elif isinstance(rec, Metadata):
                raw_meta[rec.name] = dict(rec.metadata)
        self.tail_error = state["tail_error"]
        self.readable_bytes = state["good_bytes"]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> Episode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ messages
    def _check_topics(self, topics: Iterable[str]) -> list[str]:
        topics = list(topics)
        missing = [t for t in topics if t not in self.topics]
        if missing:
            raise MissingTopicError(
                f"episode {self.path.name} has no topic(s) {missing}; it has: "
                f"{', '.join(sorted(self.topics)) or 'none'}"
            )
        return topics

    def raw_messages(self, topics: Iterable[str]) -> Iterator[tuple[str, Any, Any]]:
        """``(topic, mcap Message, decoded ROS message)`` in file order."""
        topics = self._check_topics(topics)
        if self.complete:
            for _, channel, message, decoded in self._reader.iter_decoded_messages(
                topics, log_time_order=False
            ):
                yield channel.topic, message, decoded
            return
        from mcap.records import Channel, Message, Schema

        schemas: dict[int, Any] = {}
        channels: dict[int, Any] = {}
        for rec in scan(self.path):
            if isinstance(rec, Schema):
                schemas[rec.id] = rec
            elif isinstance(rec, Channel):
                channels[rec.id] = rec
            elif isinstance(rec, Message):
                ch = channels.get(rec.channel_id)
                if ch is None or ch.topic not in topics:
                    continue
                decoder = self._decoders.decoder_for(ch.message_encoding, schemas[ch.schema_id])
                yield ch.topic, rec, decoder(rec.data)

    def messages(self, topic: str) -> Iterator[Sample]:
        """Decoded messages of ``topic`` with monotonic stamps, in file (= record) order."""
        off = self.wall_offset_ns
        for _, m, msg in self.raw_messages([topic]):
            yield Sample(m.publish_time - off, m.log_time - off, m.sequence, decode(msg, off))

    def records(self, stream: str) -> Iterator[dict[str, Any]]:
        """The ``camera``, ``ft`` or ``arm`` ring records, rebuilt (module docstring)."""
        if stream not in STREAM_TOPICS:
            raise ValueError(f"unknown stream {stream!r}; use one of {sorted(STREAM_TOPICS)}")
        topics = self._check_topics(STREAM_TOPICS[stream])
        off = self.wall_offset_ns
        current: dict[str, Any] | None = None
        for topic, m, msg in self.raw_messages(topics):
            if current is None or current["index"] != m.sequence:
                if current is not None:
                    yield current
                current = {
                    "index": m.sequence,
                    "t_capture_ns": m.publish_time - off,
                    "t_receive_ns": m.log_time - off,
                }
            fill_record(current, topic, decode(msg, off))
        if current is not None:
            yield current

    def load(self, topic: str) -> dict[str, np.ndarray]:
        """All of ``topic`` at once: stamp arrays and the values stacked (when they stack)."""
        samples = list(self.messages(topic))
        out = {
            "t_capture_ns": np.array([s.t_capture_ns for s in samples], dtype=np.int64),
            "t_receive_ns": np.array([s.t_receive_ns for s in samples], dtype=np.int64),
            "sequence": np.array([s.sequence for s in samples], dtype=np.int64),
        }
        values = [s.value for s in samples]
        out["value"] = np.stack(values) if values and isinstance(values[0], np.ndarray) else values
        return out


def open_episode(path: str | os.PathLike[str], *, allow_truncated: bool = False) -> Episode:
    """Open an episode file (module docstring). Raises :class:`EpisodeError` subclasses."""
    return Episode(path, allow_truncated=allow_truncated)


__all__ = [
    "STREAM_TOPICS",
    "Episode",
    "EpisodeError",
    "EpisodeNotFoundError",
    "MissingTopicError",
    "NotAnEpisodeError",
    "Sample",
    "TruncatedEpisodeError",
    "check_file",
    "open_episode",
    "scan",
]
