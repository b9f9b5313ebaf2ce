"""The sampler's ONNX graphs on disk, exported once per model and reused across processes.

Exporting the fused sampler step takes seconds (the dynamo exporter); unrolling it into
a k-step graph (:func:`~demuse_ros.model.sampler_export.unroll_onnx`) well under one. Both live
in ``<cache>/onnx/<model digest>/`` with a key file listing each graph's SHA-256, which
is checked before a graph is used (and which keys the TensorRT engines built from it).
The digest covers the weights, the model config, the batch, the DDIM clipping (baked
into the graph), the export format and the torch version.
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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from demuse_ros.config import to_dict
from demuse_ros.model.diffusion import DDIMSampler
from demuse_ros.model.dit import DeMUSE
from demuse_ros.model.sampler_export import export_sampler_onnx, unroll_onnx

from .engine_cache import atomic_write, cache_root, sha256_file

log = logging.getLogger(__name__)

#: Bumped whenever the sampler graphs change meaning (invalidates every cached export).
EXPORT_VERSION = 1
KEY_FILE = "key.json"
STEP_GRAPH = "step.onnx"
_lock = threading.Lock()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's optimizer logs every pass at INFO (hundreds of lines): errors only."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def model_digest(model: DeMUSE) -> str:
    """SHA-256 of the model config and every parameter and buffer (names, dtypes, bytes)."""
    h = hashlib.sha256(json.dumps(to_dict(model.cfg), sort_keys=True).encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class SamplerGraphs:
    """The step graph and its unrolled versions for one model, sampler, batch size and
    ONNX opset (onnxruntime takes 20, whose ``Gelu`` op it runs as one kernel; TensorRT
    18, whose parser every TensorRT 10 release supports)."""

    def __init__(
        self,
        model: DeMUSE,
        sampler: DDIMSampler,
        batch: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        digest: str | None = None,
        opset: int = 18,
    ) -> None:
        self.model, self.sampler, self.batch, self.opset = model, sampler, batch, opset
        key = {
            "export_version": EXPORT_VERSION,
            "torch": torch.__version__,
            "model": digest or model_digest(model),
            "batch": batch,
            "opset": opset,
            "clip_rgb_x0": sampler.clip_rgb,
            "clip_action_x0": sampler.clip_action,
        }
        self.key = key
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        self.dir = cache_root(cache_dir) / "onnx" / name
        self._verified: dict[str, str] = {}

    # ------------------------------------------------------------------ graphs
    def step(self) -> Path:
        """The fused step graph (exported on first use)."""
        with _lock:
            if self._digest_of(STEP_GRAPH) is None:
                self._export_step()
        return self.dir / STEP_GRAPH

    def unrolled(self, k: int) -> Path:
        """``k`` steps in one graph (built from the step graph on first use)."""
        name = f"steps{k}.onnx"
        self.step()
        with _lock:
            if self._digest_of(name) is None:
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".onnx", dir=self.dir)
                os.close(fd)
                try:
                    unroll_onnx(self.dir / STEP_GRAPH, k, tmp)
                    os.replace(tmp, self.dir / name)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                self._record(name)
        return self.dir / name

    def graph(self, k: int | None) -> Path:
        """The step graph (``k`` None) or the ``k``-step one."""
        return self.step() if k is None else self.unrolled(k)

    def sha256(self, path: Path) -> str:
        """SHA-256 of a graph together with its external weights (verified on first use)."""
        digest = self._digest_of(path.name)
        if digest is None:
            raise FileNotFoundError(f"{path}: not a graph of {self.dir}")
        return digest

    # ------------------------------------------------------------------ internals
    def _export_step(self) -> None:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        log.warning("exporting the sampler step to ONNX in %s (once per model)", self.dir)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=self.dir.parent))
        try:
            with _quiet_exporter():
                export_sampler_onnx(
                    self.model, self.sampler, tmp / STEP_GRAPH, self.batch, opset=self.opset
                )
            self.dir.mkdir(exist_ok=True)
            for f in sorted(tmp.iterdir()):  # weights data first, the graph last
                if f.name != STEP_GRAPH:
                    os.replace(f, self.dir / f.name)
            os.replace(tmp / STEP_GRAPH, self.dir / STEP_GRAPH)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._meta_reset()
        self._record(STEP_GRAPH)

    def _files(self, name: str) -> list[Path]:
        """The graph and the step graph's external-data files (the exporter names them
        after it; unrolled graphs point to the same ones)."""
        data = sorted(p for p in self.dir.glob(f"{STEP_GRAPH}.*") if not p.name.startswith("."))
        return [self.dir / name, *data]

    def _hash(self, name: str) -> str:
        h = hashlib.sha256()
        for f in self._files(name):
            h.update(f"{f.name}:{sha256_file(f)}".encode())
        return h.hexdigest()

    def _meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.dir / KEY_FILE).read_text())
        except (OSError, ValueError):
            return {"key": self.key, "graphs": {}}
        if meta.get("key") != self.key:
            return {"key": self.key, "graphs": {}}
        return meta

    def _meta_reset(self) -> None:
        atomic_write(self.dir / KEY_FILE, json.dumps({"key": self.key, "graphs": {}}).encode())

    def _record(self, name: str) -> None:
        meta = self._meta()
        digest = self._hash(name)
        meta["graphs"][name] = digest
        atomic_write(self.dir / KEY_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        self._verified[name] = digest

    def _digest_of(self, name: str) -> str | None:
        """The recorded digest if the files match it, else None (and the entry is dropped)."""
        if name in self._verified:
            return self._verified[name]
        recorded = self._meta()["graphs"].get(name)
        if recorded is None or not (self.dir / name).exists():
            return None
        if self._hash(name) != recorded:
            log.warning("%s: differs from its recorded SHA-256 (corrupt); re-creating", name)
            if name == STEP_GRAPH:  # everything else derives from it
                shutil.rmtree(self.dir, ignore_errors=True)
            return None
        self._verified[name] = recorded
        return recorded
