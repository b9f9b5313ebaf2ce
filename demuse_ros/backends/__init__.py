"""Inference backends for the DeMUSE sampler (DESIGN §7): one interface, separate classes.

* ``torch``: eager PyTorch, the reference (:class:`.torch_backend.TorchDenoiser`);
  ``compile=True`` (or ``torch-compile``) compiles the fused sampler step, with CUDA
  graphs and fp16/bf16 autocast on a GPU (:class:`.torch_backend.CompiledTorchDenoiser`);
* ``onnxruntime``: the exported sampler graphs on the CPU, CUDA or TensorRT execution
  provider (:class:`.ort_backend.OnnxRuntimeDenoiser`);
* ``tensorrt``: native TensorRT 10 engines, FP16/BF16, CUDA graphs, cached per
  (ONNX SHA-256, TensorRT version, GPU, precision) (:class:`.trt_backend.TensorRTDenoiser`).

:func:`make_denoiser` builds one from a checkpoint (folder or loaded) or a model;
:class:`.policy.BackendPolicy` is the observation → chunk policy on any backend.
Importing this package does not import torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Denoiser

#: backend name -> (one line of help, "module:class")
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("eager PyTorch (the reference)", "torch_backend:TorchDenoiser"),
    "torch-compile": (
        "torch.compile of the fused sampler step (+ CUDA graphs, fp16/bf16 on a GPU)",
        "torch_backend:CompiledTorchDenoiser",
    ),
    "onnxruntime": (
        "exported ONNX sampler graphs on onnxruntime (cpu, cuda or tensorrt provider)",
        "ort_backend:OnnxRuntimeDenoiser",
    ),
    "tensorrt": (
        "native TensorRT 10 engines (fp16/bf16, CUDA graphs, engine cache)",
        "trt_backend:TensorRTDenoiser",
    ),
}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (None when it can, at least on its default options)."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    if not _has("torch"):
        return "torch is not installed (pip install '.[model]')"
    compiler = shutil.which("c++") or shutil.which("g++")
    if backend == "torch-compile" and not compiler and not _cuda():
        return "torch.compile on the CPU needs a C++ compiler (none on PATH)"
    if backend == "onnxruntime":
        missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if not _has(m)]
        if missing:
            return f"{', '.join(missing)} not installed (pip install '.[model]')"
    if backend == "tensorrt":
        if not _has("tensorrt"):
            return (
                "the TensorRT 10 Python package is not installed (pip install '.[tensorrt]' "
                "on a machine with an NVIDIA GPU)"
            )
        if not _cuda():
            return "TensorRT needs a CUDA GPU and torch.cuda.is_available() is False"
    return None


def available_backends() -> dict[str, str | None]:
    """Every backend name -> None when it can run here, else the reason it cannot."""
    return {name: unavailable_reason(name) for name in BACKENDS}


def backend_class(backend: str) -> type[Denoiser]:
    module, cls = BACKENDS[backend][1].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def _alternatives(backend: str) -> str:
    others = [repr(n) for n, why in available_backends().items() if why is None and n != backend]
    if not others:
        return "none (install torch: pip install '.[model]')"
    return others[0] if len(others) == 1 else f"{', '.join(others[:-1])} or {others[-1]}"


def _resolve(checkpoint_or_model: Any, diffusion: Any) -> tuple[Any, Any, str | None]:
    """(model, diffusion config, weights digest or None) from a checkpoint folder, a loaded
    checkpoint or a model."""
    from demuse_ros.config import to_dict
    from demuse_ros.model.checkpoint import MODEL_WEIGHTS, PolicyCheckpoint, load_policy
    from demuse_ros.model.config import DiffusionConfig
    from demuse_ros.model.dit import DeMUSE

    if isinstance(checkpoint_or_model, str | os.PathLike):
        checkpoint_or_model = load_policy(checkpoint_or_model)
    if isinstance(checkpoint_or_model, PolicyCheckpoint):
        ckpt = checkpoint_or_model
        weights = (ckpt.manifest.get("weights_sha256") or {}).get(MODEL_WEIGHTS)
        digest = None
        if weights:  # the checkpoint's verified weights hash: no need to hash the tensors
            text = json.dumps({"weights": weights, "config": to_dict(ckpt.config.model)})
            digest = hashlib.sha256(text.encode()).hexdigest()
        return ckpt.model, diffusion or ckpt.config.diffusion, digest
    if isinstance(checkpoint_or_model, DeMUSE):
        return checkpoint_or_model, diffusion or DiffusionConfig(), None
    raise TypeError(
        "make_denoiser takes a checkpoint folder, a PolicyCheckpoint or a DeMUSE model, "
        f"not {type(checkpoint_or_model).__name__}"
    )


def make_denoiser(backend: str, checkpoint_or_model: Any, **options: Any) -> Denoiser:
    """A :class:`~.base.Denoiser` of ``backend`` for a checkpoint (folder or loaded) or model.

    Options are the backend class's keyword arguments (``steps``, ``dust_q``, ``batch``,
    ``device``, ``provider``, ``precision``, …) plus ``diffusion`` (a ``DiffusionConfig``,
    for a bare model; default: the default config). ``make_denoiser("torch", m,
    compile=True)`` is the ``torch-compile`` backend.

    Raises:
        BackendUnavailable: The backend cannot run here; the message says why and names
            the backends that can.
        ValueError: Unknown backend or option.
    """
    from .base import BackendUnavailable

    if backend == "torch" and options.pop("compile", False):
        backend = "torch-compile"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    why = unavailable_reason(backend)
    if why is not None:
        raise BackendUnavailable(f"{backend} cannot run here: {why}; use {_alternatives(backend)}")
    cls = backend_class(backend)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params) - {"diffusion"})
    if unknown:
        takes = [p for p in params if p not in ("model", "diffusion")]
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for backend {backend!r}; it takes "
            f"{', '.join(takes)}, diffusion"
        )
    model, diffusion, digest = _resolve(checkpoint_or_model, options.pop("diffusion", None))
    if digest is not None and "model_digest" in params:
        options.setdefault("model_digest", digest)
    try:
        return cls(model, diffusion, **options)
    except BackendUnavailable as err:
        raise BackendUnavailable(f"{err} (other backends here: {_alternatives(backend)})") from err


__all__ = [
    "BACKENDS",
    "available_backends",
    "backend_class",
    "make_denoiser",
    "unavailable_reason",
]
