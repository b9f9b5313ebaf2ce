"""Engine cache: keyed entries, rebuild only on a key change, corrupt entries rebuilt, not loaded.

A fake builder stands in for TensorRT (which cannot be installed here): it counts its
builds and its "engines" carry a magic header that the fake deserializer checks, as
TensorRT's ``deserialize_cuda_engine`` rejects an engine from another version or GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from demuse_ros.backends.engine_cache import (
    ENGINE_FILE,
    KEY_FILE,
    EngineCache,
    EngineKey,
    atomic_write,
    cache_root,
)

MAGIC = b"FAKE-ENGINE-v1:"


class FakeBuilder:
    def __init__(self, payload: bytes = b"weights") -> None:
        self.payload, self.builds = payload, 0

    def __call__(self) -> bytes:
        self.builds += 1
        return MAGIC + self.payload + bytes([self.builds])

    @staticmethod
    def load(blob: bytes) -> bytes | None:
        """None for an engine this "runtime" cannot use (wrong header)."""
        return blob[len(MAGIC) :] if blob.startswith(MAGIC) else None


def key(**overrides: str) -> EngineKey:
    fields = {
        "kind": "tensorrt",
        "onnx_sha256": "ab" * 32,
        "trt_version": "10.9.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "precision": "fp16",
    }
    fields.update(overrides)
    return EngineKey(**fields, extra=(("batch", "1"),))


@pytest.fixture
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "cache")


def test_cache_dir_from_env_or_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEMUSE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("DEMUSE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "demuse_ros"


def test_unchanged_key_reuses_the_engine(cache: EngineCache) -> None:
    build = FakeBuilder()
    first, built = cache.get_or_build(key(), build, build.load)
    assert built and build.builds == 1
    again, built = cache.get_or_build(key(), build, build.load)
    assert not built and build.builds == 1 and again == first
    # A new process (a new cache object on the same directory) reuses it too.
    again, built = EngineCache(cache.root).get_or_build(key(), build, build.load)
    assert not built and build.builds == 1


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"trt_version": "10.10.0"},
        {"gpu_name": "NVIDIA H200"},
        {"precision": "bf16"},
    ],
)
def test_every_key_field_change_rebuilds(cache: EngineCache, change: dict[str, str]) -> None:
    build = FakeBuilder()
    cache.get_or_build(key(), build, build.load)
    _, built = cache.get_or_build(key(**change), build, build.load)
    assert built and build.builds == 2
    assert cache.entry_dir(key()) != cache.entry_dir(key(**change))
    # The old entry is still valid for the old key: switching back does not rebuild.
    _, built = cache.get_or_build(key(), build, build.load)
    assert not built and build.builds == 2


def test_corrupt_engine_is_rebuilt_not_loaded(cache: EngineCache) -> None:
    build = FakeBuilder()
    cache.get_or_build(key(), build, build.load)
    path = cache.entry_dir(key()) / ENGINE_FILE
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte, same length
    path.write_bytes(bytes(blob))
    loaded: list[bytes] = []

    def load(data: bytes) -> bytes | None:
        loaded.append(data)
        return build.load(data)

    engine, built = cache.get_or_build(key(), build, load)
    assert built and build.builds == 2
    assert loaded == [path.read_bytes()]  # only the fresh engine reached the deserializer
    assert engine.endswith(bytes([2]))


def test_truncated_engine_is_rebuilt(cache: EngineCache) -> None:
    build = FakeBuilder()
    cache.get_or_build(key(), build, build.load)
    path = cache.entry_dir(key()) / ENGINE_FILE
    path.write_bytes(path.read_bytes()[:5])
    _, built = cache.get_or_build(key(), build, build.load)
    assert built and build.builds == 2


def test_incompatible_engine_is_rebuilt(cache: EngineCache) -> None:
    """Bytes that verify but that the runtime refuses (another TensorRT build wrote them
    under a key that matches, e.g. a hand-copied cache) are rebuilt."""
    build = FakeBuilder()
    cache.write(key(), b"SOMEONE-ELSES-ENGINE")
    engine, built = cache.get_or_build(key(), build, build.load)
    assert built and build.builds == 1 and engine.startswith(b"weights")
    assert (cache.entry_dir(key()) / ENGINE_FILE).read_bytes().startswith(MAGIC)


def test_deserializer_errors_rebuild(cache: EngineCache) -> None:
    build = FakeBuilder()
    cache.get_or_build(key(), build, build.load)
    calls = []

    def flaky(data: bytes) -> bytes | None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("deserialization failed")
        return build.load(data)

    _, built = cache.get_or_build(key(), build, flaky)
    assert built and build.builds == 2


def test_a_fresh_engine_that_does_not_load_is_an_error(cache: EngineCache) -> None:
    with pytest.raises(RuntimeError, match="does not load"):
        cache.get_or_build(key(), lambda: b"junk", FakeBuilder.load)
    assert not (cache.entry_dir(key()) / KEY_FILE).exists()  # nothing cached


def test_key_file_for_another_key_or_format_is_not_trusted(cache: EngineCache) -> None:
    build = FakeBuilder()
    cache.get_or_build(key(), build, build.load)
    meta_path = cache.entry_dir(key()) / KEY_FILE
    meta = json.loads(meta_path.read_text())
    meta["key"]["precision"] = "fp32"  # someone edited or moved it
    meta_path.write_text(json.dumps(meta))
    _, built = cache.get_or_build(key(), build, build.load)
    assert built and build.builds == 2
    meta_path.write_text("{not json")
    _, built = cache.get_or_build(key(), build, build.load)
    assert built and build.builds == 3


def test_a_crash_before_the_key_file_leaves_no_entry(cache: EngineCache) -> None:
    """The engine is written first and the key file last: an engine without a key file is
    not an entry (as after a crash between the two writes)."""
    build = FakeBuilder()
    atomic_write(cache.entry_dir(key()) / ENGINE_FILE, build())
    _, built = cache.get_or_build(key(), build, build.load)
    assert built and build.builds == 2


def test_atomic_write_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "d" / "f.bin"
    atomic_write(target, b"1")
    atomic_write(target, b"22")
    assert target.read_bytes() == b"22"
    assert os.listdir(target.parent) == ["f.bin"]

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the data went to the temp file
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"333")
    assert target.read_bytes() == b"22" and os.listdir(target.parent) == ["f.bin"]


def test_directory_entries_for_ort_tensorrt_caches(cache: EngineCache) -> None:
    """ORT's TensorRT EP writes its own files into the entry directory: sealed after the
    build, verified before the next session, emptied when anything changed."""
    k = key(kind="ort-tensorrt")
    folder, cached = cache.prepare_dir(k)
    assert not cached and folder.is_dir() and not any(folder.iterdir())
    (folder / "model_ctx.engine").write_bytes(b"engine")
    (folder / "timing.cache").write_bytes(b"timing")
    cache.seal_dir(k)
    assert cache.prepare_dir(k) == (folder, True)
    (folder / "model_ctx.engine").write_bytes(b"engin3")  # corrupt
    folder2, cached = cache.prepare_dir(k)
    assert folder2 == folder and not cached and not any(folder.iterdir())
    (folder / "a.engine").write_bytes(b"x")
    cache.seal_dir(k)
    (folder / "stray.engine").write_bytes(b"y")  # a file the seal does not list
    assert cache.prepare_dir(k)[1] is False
    assert cache.prepare_dir(key(kind="ort-tensorrt", trt_version="10.1"))[1] is False
