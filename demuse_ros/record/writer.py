"""Episode files: ROS 2 messages into a chunked MCAP file, written by its own thread.

:class:`EpisodeWriter` takes work items from any thread (``submit``: a callable
that builds ``(topic, message dict)`` pairs, plus the MCAP times) into a queue
bounded in *bytes*; a writer thread builds, CDR-encodes and appends them to the
file. Nothing is lost silently:

* ``has_room(nbytes)`` lets a producer hold back (the :class:`Recorder` leaves
  records in their ring, which is a second buffer) instead of overfilling;
* an item that does not fit is dropped, counted (``dropped``,
  ``dropped_bytes``) and logged; a backlog above half the budget is logged too;
* an I/O error stops writing, is kept in ``error`` and re-raised by ``close``.

Crash safety: messages go into MCAP chunks of about ``chunk_size_bytes``, closed
between items (the messages of one item never straddle two chunks); every
finished chunk is handed to the OS at once (no user-space buffering), and an open
chunk is finished at least every ``flush_interval_s``. A ``kill -9`` therefore
loses only the chunk being filled (≤ ``flush_interval_s`` of data); what is on
disk reads in stream mode (:mod:`demuse_ros.record.reader`) and
``demuse record --recover`` rewrites it with an index.

Compression (``"none"``, ``"lz4"``, ``"zstd"``) applies per chunk; see the
README's Recording section for what keeps up on two cores.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from demuse_ros.record.cdr import ENCODERS
from demuse_ros.record.messages import TOPICS, msgdef
from demuse_ros.record.meta import STRING_KEYS

log = logging.getLogger("demuse.record")

Build = Callable[[], Iterable[tuple[str, dict[str, Any]]]]
COMPRESSIONS = ("none", "lz4", "zstd")


class _FileSink:
    """Unbuffered binary sink: every ``write`` reaches the OS before it returns.

    (mcap's writer wraps raw files in a ``BufferedWriter``; a crash would then lose
    what sits in that buffer.) ``tell`` counts bytes; ``fsync`` makes them durable.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pos = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass  # nothing is buffered here

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _metadata_strings(data: Mapping[str, Any]) -> dict[str, str]:
    """MCAP metadata is str -> str: the free-text keys (``STRING_KEYS``) stay plain strings,
    every other value is stored as JSON (so ``"true"`` and ``true`` stay distinct)."""
    return {
        str(k): str(v) if k in STRING_KEYS else json.dumps(v, sort_keys=True, default=str)
        for k, v in data.items()
    }


class EpisodeWriter:
    """One MCAP episode file written by a background thread (module docstring).

    Args:
        path: the file to create (truncated if it exists).
        metadata: MCAP metadata records written first, ``name -> {key: value}``
            (non-string values are stored as JSON).
        chunk_size_bytes: uncompressed chunk size; a ``kill -9`` loses at most one.
        compression: ``"none"``, ``"lz4"`` or ``"zstd"`` (per chunk).
        max_backlog_bytes: memory bound of the queue (items count their ``nbytes``).
        flush_interval_s: an open chunk is finished at least this often.
        sink: write here instead of opening ``path`` (tests inject a slow disk);
            needs ``write``, ``tell`` and ``flush``.
        topics: topic -> ROS 2 datatype of every topic that may be written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Mapping[str, Any]] | None = None,
        chunk_size_bytes: int = 1 << 20,
        compression: str = "lz4",
        max_backlog_bytes: int = 256 << 20,
        flush_interval_s: float = 0.25,
        sink: BinaryIO | None = None,
        topics: Mapping[str, str] = TOPICS,
    ) -> None:
        from mcap.writer import CompressionType
        from mcap.writer import Writer as McapWriter

        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if chunk_size_bytes < 1024 or max_backlog_bytes < 1 or flush_interval_s <= 0:
            raise ValueError(
                "chunk_size_bytes must be >= 1024, max_backlog_bytes >= 1 and "
                f"flush_interval_s > 0 (got {chunk_size_bytes}, {max_backlog_bytes}, "
                f"{flush_interval_s})"
            )
        self.path = Path(path)
        self.topics = dict(topics)
        self.max_backlog_bytes = int(max_backlog_bytes)
        self.flush_interval_s = float(flush_interval_s)
        self.chunk_size_bytes = int(chunk_size_bytes)
        self._chunk_bytes = 0
        self._sink: Any = sink if sink is not None else _FileSink(self.path)
        self._mcap = McapWriter(
            self._sink,
            # Chunks are finished here, between items, never by size inside mcap: all
            # messages of one item (one ring record) land in the same chunk.
            chunk_size=1 << 62,
            compression={
                "none": CompressionType.NONE,
                "lz4": CompressionType.LZ4,
                "zstd": CompressionType.ZSTD,
            }[compression],
        )
        from mcap_ros2 import __version__ as ros2_version

        self._mcap.start(profile="ros2", library=f"demuse_ros mcap-ros2-support/{ros2_version}")
        for name, data in (metadata or {}).items():
            self._mcap.add_metadata(name, _metadata_strings(data))
        self._sink.flush()
        self._encoders: dict[str, Callable[[Any], bytes]] = {}
        self._schema_ids: dict[str, int] = {}
        self._channel_ids: dict[str, int] = {}
        # The queue: (build, log_time_ns, publish_time_ns, sequence, nbytes) or metadata.
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._cond = threading.Condition()
        self._backlog_bytes = 0
        self._closing = False
        self._abort = False
        self.error: BaseException | None = None
        # Statistics (written by the thread that owns each; read without locks).
        self.submitted = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.encode_errors = 0
        self.messages = 0
        self.counts: dict[str, int] = collections.Counter()
        self.backlog_bytes_max = 0
        self.backlog_items_max = 0
        self.cpu_s = 0.0
        self.write_s = 0.0
        self._warned_backlog = False
        self._last_drop_log = 0.0
        self._t_start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="episode-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producers
    @property
    def backlog_bytes(self) -> int:
        """Bytes of queued items not yet written."""
        return self._backlog_bytes

    def has_room(self, nbytes: int) -> bool:
        """True when an item of ``nbytes`` fits the backlog budget now (and writing works)."""
        return self.error is None and (
            self._backlog_bytes == 0 or self._backlog_bytes + nbytes <= self.max_backlog_bytes
        )

    def submit(
        self,
        build: Build,
        *,
        log_time_ns: int,
        publish_time_ns: int,
        sequence: int = 0,
        nbytes: int = 0,
    ) -> bool:
        """Queue ``build`` (run on the writer thread; returns ``(topic, message)`` pairs).

        All its messages get these MCAP times and ``sequence``. Returns False (and
        counts, and logs) when the item was dropped: over the backlog budget, or
        writing has failed.
        """
        if self._closing:
            raise RuntimeError(f"episode writer for {self.path} is closed")
        with self._cond:
            if not self.has_room(nbytes):
                self.dropped += 1
                self.dropped_bytes += nbytes
                self._log_drop()
                return False
            self._queue.append((build, int(log_time_ns), int(publish_time_ns), sequence, nbytes))
            self._backlog_bytes += nbytes
            self.submitted += 1
            self.backlog_bytes_max = max(self.backlog_bytes_max, self._backlog_bytes)
            self.backlog_items_max = max(self.backlog_items_max, len(self._queue))
            if not self._warned_backlog and self._backlog_bytes > self.max_backlog_bytes // 2:
                self._warned_backlog = True
                log.warning(
                    "episode writer falling behind: %.1f MB queued (budget %.1f MB) for %s",
                    self._backlog_bytes / 1e6,
                    self.max_backlog_bytes / 1e6,
                    self.path.name,
                )
            self._cond.notify()
        return True

    def write(
        self,
        topic: str,
        message: dict[str, Any],
        *,
        log_time_ns: int,
        publish_time_ns: int | None = None,
        sequence: int = 0,
    ) -> bool:
        """Queue one ready message (its ``data`` bytes count against the budget)."""
        data = message.get("data", b"")
        return self.submit(
            lambda: [(topic, message)],
            log_time_ns=log_time_ns,
            publish_time_ns=log_time_ns if publish_time_ns is None else publish_time_ns,
            sequence=sequence,
            nbytes=len(data) if isinstance(data, bytes | bytearray) else 0,
        )

    def add_metadata(self, name: str, data: Mapping[str, Any]) -> None:
        """Queue an MCAP metadata record (written in order with the messages)."""
        if self._closing:
            raise RuntimeError(f"episode writer for {self.path} is closed")
        with self._cond:
            self._queue.append(("metadata", name, _metadata_strings(data)))
            self._cond.notify()

    def _log_drop(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            why = f"writing failed: {self.error}" if self.error else "backlog budget full"
            log.warning(
                "episode writer dropped %d item(s) (%.1f MB) so far for %s: %s",
                self.dropped,
                self.dropped_bytes / 1e6,
                self.path.name,
                why,
            )

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        cpu0 = time.thread_time()
        last_flush = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not self._queue and not (self._closing or self._abort):
                        timeout = self.flush_interval_s - (time.monotonic() - last_flush)
                        if timeout <= 0:
                            break
                        self._cond.wait(timeout)
                    if self._abort or (self._closing and not self._queue):
                        return
                    item = self._queue.popleft() if self._queue else None
                if item is not None:
                    self._write_item(item)
                if (
                    self._chunk_bytes >= self.chunk_size_bytes
                    or time.monotonic() - last_flush >= self.flush_interval_s
                ):
                    t0 = time.perf_counter()
                    self._mcap.flush()  # finish the open chunk: on disk at most this late
                    self.write_s += time.perf_counter() - t0
                    last_flush = time.monotonic()
                    self._chunk_bytes = 0
                self.cpu_s = time.thread_time() - cpu0
        except BaseException as exc:  # disk full, I/O error: stop writing, say why
            self.error = exc
            log.error("episode writer for %s failed: %r; further data is dropped", self.path, exc)
            with self._cond:
                self.dropped += len(self._queue)
                self.dropped_bytes += self._backlog_bytes
                self._queue.clear()
                self._backlog_bytes = 0
        finally:
            self.cpu_s = time.thread_time() - cpu0

    def _write_item(self, item: tuple[Any, ...]) -> None:
        if item[0] == "metadata":
            self._mcap.add_metadata(item[1], item[2])
            return
        build, log_time, publish_time, sequence, nbytes = item
        try:
            pairs = list(build())
            encoded = [(topic, self._encoder(topic)(msg)) for topic, msg in pairs]
        except Exception:
            self.encode_errors += 1
            log.exception("episode writer: could not build/encode an item (skipped, counted)")
            encoded = []
        t0 = time.perf_counter()
        for topic, data in encoded:
            self._mcap.add_message(
                channel_id=self._channel(topic),
                log_time=log_time,
                publish_time=publish_time,
                sequence=sequence & 0xFFFFFFFF,
                data=data,
            )
            self.counts[topic] += 1
            self.messages += 1
            self._chunk_bytes += len(data) + 31  # + the message record's header
        self.write_s += time.perf_counter() - t0
        with self._cond:
            self._backlog_bytes -= nbytes

    def _encoder(self, topic: str) -> Callable[[Any], bytes]:
        enc = self._encoders.get(topic)
        if enc is None:
            datatype = self.topics.get(topic)
            if datatype is None:
                raise KeyError(f"topic {topic!r} is not declared; known: {sorted(self.topics)}")
            enc = ENCODERS.get(datatype)
            if enc is None:  # no fast path: mcap_ros2's encoder from the definition
                from mcap_ros2._dynamic import serialize_dynamic

                enc = serialize_dynamic(datatype, msgdef(datatype))[datatype]
            self._encoders[topic] = enc
        return enc

    def _channel(self, topic: str) -> int:
        cid = self._channel_ids.get(topic)
        if cid is None:
            datatype = self.topics[topic]
            sid = self._schema_ids.get(datatype)
            if sid is None:
                sid = self._mcap.register_schema(datatype, "ros2msg", msgdef(datatype).encode())
                self._schema_ids[datatype] = sid
            cid = self._channel_ids[topic] = self._mcap.register_channel(topic, "cdr", sid)
        return cid

    # ------------------------------------------------------------------ end
    def close(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Write everything queued, the index and the summary; fsync; close. Returns stats.

        Raises:
            OSError (or what writing raised): writing failed; the file holds what was
                written before (readable in stream mode, recoverable).
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"episode writer for {self.path} did not drain in {timeout_s} s")
        if self.error is None:
            try:
                self._mcap.finish()
                if hasattr(self._sink, "fsync"):
                    self._sink.fsync()
            except BaseException as exc:
                self.error = exc
        self._close_sink()
        if self.error is not None:
            raise self.error
        return self.stats()

    def abort(self) -> None:
        """Stop now without writing the queue or the index (for discarding the file)."""
        with self._cond:
            self._closing = self._abort = True
            self._queue.clear()
            self._backlog_bytes = 0
            self._cond.notify()
        self._thread.join()
        self._close_sink()

    def _close_sink(self) -> None:
        close = getattr(self._sink, "close", None)
        if close is not None:
            close()

    def stats(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self._t_start, 1e-9)
        written = self._sink.tell()
        return {
            "messages": self.messages,
            "topics": dict(self.counts),
            "bytes_written": written,
            "write_mb_s": written / wall / 1e6,
            "backlog_bytes": self._backlog_bytes,
            "backlog_bytes_max": self.backlog_bytes_max,
            "backlog_items_max": self.backlog_items_max,
            "dropped": self.dropped,
            "dropped_bytes": self.dropped_bytes,
            "encode_errors": self.encode_errors,
            "cpu_s": self.cpu_s,
            "io_s": self.write_s,
            "error": repr(self.error) if self.error else None,
        }


__all__ = ["COMPRESSIONS", "EpisodeWriter"]
