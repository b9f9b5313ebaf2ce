"""On-disk cache of built inference artifacts: TensorRT engines, ORT TensorRT-EP caches.

Anchors "what users complain about" #8: engines rebuilt needlessly (Isaac ROS rebuilds
on every launch by default) or silently broken by version changes. Here an entry is
keyed by everything that makes an engine valid — the ONNX graph's SHA-256, the
TensorRT version, the GPU name and the precision (plus backend-specific extras) — and
lives in a user cache directory (``$DEMUSE_CACHE_DIR``, else ``~/.cache/demuse_ros``):

* an entry is rebuilt only when its key changes (a different key is a different entry);
* writes are atomic (temporary file, fsync, ``os.replace``) and the key file is written
  last, so a crash mid-write leaves no entry, never a half-written one;
* loading verifies the key file (format, key, size and SHA-256 of the payload) and
  then the caller's deserializer; a corrupt, truncated or incompatible entry is logged,
  removed and rebuilt — never loaded.

Pure Python (no torch, no TensorRT): the build and load functions are passed in, so the
cache logic is tested with a fake builder where TensorRT is absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_ENV = "DEMUSE_CACHE_DIR"
KEY_FILE = "key.json"
ENGINE_FILE = "engine.plan"
KEY_FORMAT = "demuse-engine-cache"
KEY_VERSION = 1


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$DEMUSE_CACHE_DIR``, else ``~/.cache/demuse_ros``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "demuse_ros"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class EngineKey:
    """What a built engine depends on. Any change is a different cache entry.

    ``extra`` holds backend-specific build settings as sorted ``(name, value)`` pairs
    (graph kind, batch, workspace, compute capability, …).
    """

    kind: str  # "tensorrt" (native engine) or "ort-tensorrt" (the EP's engine cache)
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = {k: v for k, v in self.extra}
        return d

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the key (names the entry's directory)."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.extra)
        return (
            f"{self.kind} {self.precision} on {self.gpu_name} (TensorRT {self.trt_version}, "
            f"ONNX {self.onnx_sha256[:12]}{', ' + extra if extra else ''})"
        )


class CacheEntryError(RuntimeError):
    """A cache entry that must not be used (missing, corrupt or for another key)."""


class EngineCache:
    """Engines by :class:`EngineKey` under ``root/engines/<kind>/<digest>``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = cache_root(root)

    def entry_dir(self, key: EngineKey) -> Path:
        return self.root / "engines" / key.kind / key.digest[:32]

    # ---------------------------------------------------------- single-file engines
    def read(self, key: EngineKey) -> bytes:
        """The verified engine bytes for ``key``.

        Raises:
            CacheEntryError: No entry, or it fails verification (says why).
        """
        folder = self.entry_dir(key)
        meta = self._read_key(folder, key)
        path = folder / ENGINE_FILE
        try:
            blob = path.read_bytes()
        except OSError as err:
            raise CacheEntryError(f"{path}: {err}") from err
        if len(blob) != meta.get("engine_bytes"):
            raise CacheEntryError(
                f"{path}: {len(blob)} bytes, the key file says {meta.get('engine_bytes')} "
                "(truncated or overwritten)"
            )
        if hashlib.sha256(blob).hexdigest() != meta.get("engine_sha256"):
            raise CacheEntryError(f"{path}: SHA-256 differs from the key file (corrupt)")
        return blob

    def write(self, key: EngineKey, blob: bytes) -> Path:
        """Stores ``blob`` for ``key`` atomically (engine first, key file last)."""
        folder = self.entry_dir(key)
        atomic_write(folder / ENGINE_FILE, blob)
        body = {
            "engine_sha256": hashlib.sha256(blob).hexdigest(),
            "engine_bytes": len(blob),
        }
        self._write_key(folder, key, body)
        return folder / ENGINE_FILE

    def remove(self, key: EngineKey) -> None:
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)

    def get_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes],
        load: Callable[[bytes], T | None],
    ) -> tuple[T, bool]:
        """The loaded engine for ``key`` and whether it was (re)built now.

        ``load`` turns bytes into the engine and returns None (or raises) when they are
        not usable (TensorRT's ``deserialize_cuda_engine`` returns None for an engine
        from another version or GPU). A failing cached entry is removed and rebuilt; a
        freshly built engine that does not load is an error.
        """
        try:
            engine = load(self.read(key))
        except CacheEntryError as err:
            if self.entry_dir(key).exists():
                log.warning("engine cache: %s; rebuilding", err)
        except Exception as err:  # whatever the deserializer raised: rebuild
            log.warning(
                "engine cache: cached engine for %s did not load (%s); rebuilding",
                key.describe(),
                err,
            )
        else:
            if engine is not None:
                log.info("engine cache: loaded %s from %s", key.describe(), self.entry_dir(key))
                return engine, False
            log.warning(
                "engine cache: cached engine for %s is incompatible with this runtime; rebuilding",
                key.describe(),
            )
        self.remove(key)
        blob = build()
        engine = load(blob)
        if engine is None:
            raise RuntimeError(f"a freshly built engine for {key.describe()} does not load")
        path = self.write(key, blob)
        log.info("engine cache: stored %s (%.1f MB) in %s", key.describe(), len(blob) / 1e6, path)
        return engine, True

    # ---------------------------------------------------------- directory entries
    def prepare_dir(self, key: EngineKey) -> tuple[Path, bool]:
        """A directory another library fills with its cache (ORT's TensorRT EP), and
        whether it holds a verified entry for ``key``.

        An entry that fails verification (a file changed, added or missing since
        :meth:`seal_dir`) is emptied, so the library rebuilds instead of loading it.
        """
        folder = self.entry_dir(key)
        try:
            meta = self._read_key(folder, key)
            files = meta.get("files")
            if not isinstance(files, dict) or not files:
                raise CacheEntryError(f"{folder}: the key file lists no files")
            present = self._payload_files(folder)
            if set(present) != set(files):
                raise CacheEntryError(
                    f"{folder}: files {sorted(present)} differ from the sealed {sorted(files)}"
                )
            for name, digest in files.items():
                if sha256_file(folder / name) != digest:
                    raise CacheEntryError(f"{folder / name}: SHA-256 differs (corrupt)")
        except CacheEntryError as err:
            if folder.exists():
                log.warning("engine cache: %s; rebuilding", err)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            return folder, False
        return folder, True

    def seal_dir(self, key: EngineKey) -> None:
        """Records the SHA-256 of every file in the entry's directory (after a build)."""
        folder = self.entry_dir(key)
        files = {name: sha256_file(folder / name) for name in self._payload_files(folder)}
        if not files:
            raise CacheEntryError(f"{folder}: nothing was written to seal")
        self._write_key(folder, key, {"files": files})

    @staticmethod
    def _payload_files(folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and p.name != KEY_FILE and not p.name.startswith(".")
        )

    # ---------------------------------------------------------- key files
    @staticmethod
    def _write_key(folder: Path, key: EngineKey, body: dict[str, Any]) -> None:
        meta = {
            "format": KEY_FORMAT,
            "version": KEY_VERSION,
            "key": key.as_dict(),
            "created_unix_s": time.time(),
            **body,
        }
        atomic_write(folder / KEY_FILE, (json.dumps(meta, indent=2) + "\n").encode())

    @staticmethod
    def _read_key(folder: Path, key: EngineKey) -> dict[str, Any]:
        path = folder / KEY_FILE
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise CacheEntryError(f"{path}: no cache entry") from err
        except (OSError, ValueError) as err:
            raise CacheEntryError(f"{path}: unreadable key file ({err})") from err
        if not isinstance(meta, dict) or meta.get("format") != KEY_FORMAT:
            raise CacheEntryError(f"{path}: not a demuse engine-cache key file")
        if meta.get("version") != KEY_VERSION:
            raise CacheEntryError(f"{path}: key file version {meta.get('version')!r}")
        if meta.get("key") != key.as_dict():
            raise CacheEntryError(f"{path}: written for another key")
        return meta


# ------------------------------------------------------------------ build progress
@contextlib.contextmanager
def build_progress(message: str, enabled: bool = True) -> Iterator[None]:
    """Logs ``message`` and shows an elapsed-time bar while a build without its own
    progress reporting runs (ORT's TensorRT EP builds inside session creation)."""
    log.warning("%s", message)
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    stop = threading.Event()
    bar = tqdm(total=None, desc="building", unit="s", bar_format="{desc}: {elapsed} {postfix}")

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, name="build-progress", daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
        log.warning("build finished in %.1f s", time.monotonic() - t0)
