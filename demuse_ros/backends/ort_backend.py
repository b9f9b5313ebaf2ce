"""ONNX Runtime backend: the exported sampler graphs on the CPU, CUDA or TensorRT provider.

The graphs (:mod:`.artifacts`) are the fused sampler step — denoiser and DDIM update,
fixed shapes, the MoE as compute-all-and-mask, AdaMN modulations fed per step from the
precomputed tables — and its unrolled k-step versions. ``graph="loop"`` runs a step
range as one ``run`` of the k-step graph (the whole chunk in one call); ``graph="step"``
calls the step graph once per evaluation. Inputs and outputs are bound by address
(``IOBinding``) to torch tensors on the provider's device, so nothing is copied.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demuse_ros.model.config import DiffusionConfig
from demuse_ros.model.diffusion import Conditions
from demuse_ros.model.dit import DeMUSE
from demuse_ros.model.sampler_export import sampler_output_names

from .artifacts import SamplerGraphs
from .base import BackendUnavailable, Denoiser, DenoiseState
from .engine_cache import EngineCache, EngineKey, build_progress
from .tables import StepTables, cond_inputs

log = logging.getLogger(__name__)

#: provider option -> onnxruntime execution providers, in priority order
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
#: provider option -> the method that creates its sessions
_SESSION_FACTORY = {
    "cpu": "_cpu_session",
    "cuda": "_cuda_session",
    "tensorrt": "_tensorrt_session",
}
GRAPHS = ("loop", "step")
#: ONNX opset of the graphs onnxruntime runs: 20 has ``Gelu(approximate="tanh")`` as one op
#: (one kernel instead of eight; ~10 % of a ``cpu`` step).
ORT_OPSET = 20
_NP = {torch.float32: np.float32, torch.int64: np.int64}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailable(
            "the 'onnxruntime' backend needs onnxruntime, which is not installed "
            "(pip install '.[model]'); use 'torch'"
        ) from err
    return onnxruntime


def _trt_version_for_ort(ort: Any) -> str:
    """The TensorRT that onnxruntime's EP will load: the installed wheel's version when
    there is one, else onnxruntime's own version (each release pins one TensorRT)."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"bundled-with-onnxruntime-{ort.__version__}"


class OnnxRuntimeDenoiser(Denoiser):
    """The sampler graphs in onnxruntime.

    Args:
        provider: ``cpu``, ``cuda`` (``onnxruntime-gpu``) or ``tensorrt`` (ORT's TensorRT
            execution provider; engines cached like the native backend's).
        graph: ``loop`` (one call per step range) or ``step`` (one call per evaluation).
        threads: Intra-op threads on the CPU (default 1: at the ``cpu`` preset's sizes a
            second thread saves nothing measurable, and the other core stays free for the
            control loop and the drivers).
        spin: Let idle intra-op threads spin (lower latency, but they burn the CPU the
            drivers and the control loop need; off by default).
        precision: ``fp32``; ``fp16`` / ``bf16`` only with the TensorRT provider.
        cache_dir: Cache directory (default ``$DEMUSE_CACHE_DIR`` or ``~/.cache/demuse_ros``).
        model_digest: Identifies the weights for the export cache (default: hashed).
        device: Where state and tables live; follows the provider (``cpu``, else ``cuda``;
            ``cuda:1`` picks a GPU).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: DeMUSE,
        diffusion: DiffusionConfig,
        steps: int | None = None,
        dust_q: int | None = None,
        batch: int = 1,
        provider: str = "cpu",
        graph: str = "loop",
        threads: int = 1,
        spin: bool = False,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        model_digest: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        ort = import_onnxruntime()
        if provider not in PROVIDERS:
            raise ValueError(f"provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
        if graph not in GRAPHS:
            raise ValueError(f"graph {graph!r}: choose one of {', '.join(GRAPHS)}")
        wanted = PROVIDERS[provider][0]
        available = ort.get_available_providers()
        if wanted not in available:
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} here has no {wanted} (it has "
                f"{', '.join(available)}); install onnxruntime-gpu (pip install '.[gpu]') on "
                "a CUDA machine, or use provider='cpu', or the 'torch' backend"
            )
        if provider != "cpu" and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"provider {provider!r} needs a CUDA GPU and torch.cuda.is_available() is "
                "False; use provider='cpu' or the 'torch' backend"
            )
        if precision != "fp32" and provider != "tensorrt":
            raise ValueError(
                f"precision {precision!r} needs provider='tensorrt' (the exported graphs are "
                "float32)"
            )
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision {precision!r}: choose fp32, fp16 or bf16")
        wanted_type = "cpu" if provider == "cpu" else "cuda"
        device = torch.device(device if device is not None else wanted_type)
        if device.type != wanted_type:
            raise ValueError(
                f"device {str(device)!r} does not match provider {provider!r} (state and "
                f"tables live on {wanted_type}); use "
                + ("provider='cuda' or 'tensorrt'" if device.type == "cuda" else "device='cpu'")
            )
        super().__init__(model, diffusion, steps, dust_q, batch, device, cache_experts=False)
        self.ort, self.provider, self.graph_kind = ort, provider, graph
        self.precision = precision
        if threads < 1:
            raise ValueError(f"threads = {threads}: must be >= 1")
        self.threads = threads
        self.spin = spin
        self.cache = EngineCache(cache_dir)
        self.graphs = SamplerGraphs(
            self.model, self.sampler, batch, cache_dir, model_digest, opset=ORT_OPSET
        )
        self.tables = StepTables(self.model, self.sampler, self.device)
        self._device_type = "cpu" if provider == "cpu" else "cuda"
        self._device_id = 0 if self.device.index is None else self.device.index
        self._sessions: dict[int | None, Any] = {}
        self.prepare()

    # ------------------------------------------------------------------ sessions
    def session(self, k: int | None) -> Any:
        """The session of the step graph (``k`` None) or of the ``k``-step graph."""
        if k not in self._sessions:
            self._sessions[k] = self._create(k)
        return self._sessions[k]

    def _options(self) -> Any:
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        so.log_severity_level = 3  # errors only
        return so

    def _create(self, k: int | None) -> Any:
        path = self.graphs.graph(k)
        return getattr(self, _SESSION_FACTORY[self.provider])(path, k)

    def _session(self, path: Path, providers: list[Any]) -> Any:
        return self.ort.InferenceSession(str(path), self._options(), providers=providers)

    def _cpu_session(self, path: Path, k: int | None) -> Any:
        return self._session(path, ["CPUExecutionProvider"])

    def _cuda_providers(self) -> list[Any]:
        return [("CUDAExecutionProvider", {"device_id": self._device_id}), "CPUExecutionProvider"]

    def _cuda_session(self, path: Path, k: int | None) -> Any:
        return self._session(path, self._cuda_providers())

    def _tensorrt_session(self, path: Path, k: int | None) -> Any:
        """TensorRT EP with its engine cache in an :class:`EngineCache` directory entry:
        verified before the session loads it, sealed after a build."""
        key = EngineKey(
            kind="ort-tensorrt",
            onnx_sha256=self.graphs.sha256(path),
            trt_version=_trt_version_for_ort(self.ort),
            gpu_name=torch.cuda.get_device_name(self.device),
            precision=self.precision,
            extra=(("graph", path.name), ("onnxruntime", self.ort.__version__)),
        )
        folder, cached = self.cache.prepare_dir(key)
        trt_opts = {
            "device_id": self._device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(folder),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(folder),
            "trt_fp16_enable": self.precision == "fp16",
            "trt_bf16_enable": self.precision == "bf16",
        }
        providers = [("TensorrtExecutionProvider", trt_opts), *self._cuda_providers()]
        if cached:
            log.info("onnxruntime TensorRT EP: cached engines for %s", key.describe())
            return self._session(path, providers)
        message = (
            f"onnxruntime's TensorRT EP is building engines for {path.name} "
            f"({key.describe()}); this takes minutes once, then loads from {folder}"
        )
        with build_progress(message):
            session = self._session(path, providers)
            self._warm(session, k)  # the EP may build on the first run
        self.cache.seal_dir(key)
        return session

    def _warm(self, session: Any, k: int | None) -> None:
        cond = self.dummy_conditions()
        state = self.initial_noise(cond)
        n = 1 if k is None else k
        self._execute(session, cond, state, 0, n, k is not None)

    def prepare(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """Creates the sessions the full chunk and ``ranges`` use."""
        if self.graph_kind == "step":
            self.session(None)
            return
        for start, stop in [(0, self.n_steps), *ranges]:
            self.check_range(start, stop)
            if stop > start:
                self.session(stop - start)

    # ------------------------------------------------------------------ running
    @staticmethod
    def input_names(session: Any) -> list[str]:
        return [i.name for i in session.get_inputs()]

    def _bind(self, io: Any, name: str, t: torch.Tensor, output: bool = False) -> None:
        args = (self._device_type, self._device_id, _NP[t.dtype], tuple(t.shape), t.data_ptr())
        (io.bind_output if output else io.bind_input)(name, *args)

    def _execute(
        self,
        session: Any,
        cond: Conditions,
        state: DenoiseState,
        start: int,
        stop: int,
        unrolled: bool,
    ) -> dict[str, torch.Tensor]:
        """One ``run`` over ``[start, stop)`` (``unrolled``) or of step ``start``."""
        feeds = {n: t.to(self.device, torch.float32) for n, t in cond_inputs(cond).items()}
        feeds["x_a"] = state.x_a
        if state.x_v is not None:
            feeds["x_v"] = state.x_v
        rows = self.tables.rows(cond.task, start, stop)
        feeds |= rows if unrolled else {n: t[0] for n, t in rows.items()}
        # Bound by address: every bound tensor must outlive the run. ``contiguous()`` of a
        # strided input (the encoder's latent) is a new tensor, so it is kept here; a
        # temporary would be freed at once and its memory reused by the outputs below.
        inputs = {name: feeds[name].contiguous() for name in self.input_names(session)}
        io = session.io_binding()
        for name, t in inputs.items():
            self._bind(io, name, t)
        like = {
            "x_v_next": state.x_v,
            "x_a_next": state.x_a,
            "eps_rgb": state.x_v,
            "eps_action": state.x_a.flatten(1),
        }
        outs = {}
        for name in sampler_output_names(self.cfg, unrolled):
            outs[name] = torch.empty_like(like[name])
            self._bind(io, name, outs[name], output=True)
        if self._device_type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written
        session.run_with_iobinding(io)
        if self._device_type == "cuda":
            io.synchronize_outputs()
        return outs

    def _run(self, cond: Conditions, state: DenoiseState, start: int, stop: int) -> DenoiseState:
        state = DenoiseState(
            None if state.x_v is None else state.x_v.to(self.device).contiguous(),
            state.x_a.to(self.device).contiguous(),
            state.step,
        )
        if self.graph_kind == "loop":
            out = self._execute(self.session(stop - start), cond, state, start, stop, True)
            return DenoiseState(out.get("x_v_next"), out["x_a_next"], stop)
        step = self.session(None)
        for j in range(start, stop):
            out = self._execute(step, cond, state, j, j + 1, False)
            state = DenoiseState(out.get("x_v_next"), out["x_a_next"], j + 1)
        return state

    def _noise(
        self, cond: Conditions, state: DenoiseState
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        state = DenoiseState(
            None if state.x_v is None else state.x_v.to(self.device).contiguous(),
            state.x_a.to(self.device).contiguous(),
            state.step,
        )
        j = state.step
        out = self._execute(self.session(None), cond, state, j, j + 1, False)
        return out.get("eps_rgb"), out["eps_action"]

    def describe(self) -> str:
        plural = "s" if self.threads > 1 else ""
        threads = f", {self.threads} thread{plural}" if self.provider == "cpu" else ""
        return (
            f"onnxruntime {self.ort.__version__} {self.provider} ({self.graph_kind} graph, "
            f"{self.precision}{threads})"
        )
