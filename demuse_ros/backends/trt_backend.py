"""Native TensorRT 10 backend: engines from the exported sampler graphs, FP16/BF16, CUDA graphs.

The TensorRT 10 Python API, as documented: ``OnnxParser.parse_from_file`` (external
weights resolved next to the graph), a builder config with the precision flag and a
workspace limit, ``build_serialized_network`` with an ``IProgressMonitor`` driving
progress bars, ``Runtime.deserialize_cuda_engine``, and per call
``IExecutionContext.set_tensor_address`` + ``execute_async_v3`` on a torch CUDA
stream. Device memory is torch tensors (no pycuda / cuda-python needed).

Engines are cached (:mod:`.engine_cache`) per ONNX SHA-256, TensorRT version, GPU name
and precision (plus graph, batch, workspace, compute capability): built once, loaded
afterwards, rebuilt when any of these changes or the cached file does not verify or
deserialize.

Fixed device buffers hold the conditions, two state sets (ping-pong: a step reads one
and writes the other) and the current task's per-step tables, so every engine call
has fixed addresses and can be replayed as a CUDA graph: one graph per step (``graph=
"step"``) or per step range (``graph="loop"``: the unrolled k-step engine).

TensorRT cannot be installed on the development and CI machines; the tests marked
``tensorrt`` run this where it is.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from demuse_ros.model.config import DiffusionConfig
from demuse_ros.model.diffusion import Conditions
from demuse_ros.model.dit import DeMUSE

from .artifacts import SamplerGraphs
from .base import BackendUnavailable, Denoiser, DenoiseState
from .engine_cache import EngineCache, EngineKey
from .tables import StepTables, cond_inputs

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "bf16", "tf32", "fp32")
GRAPHS = ("loop", "step")
#: ONNX opset of the graphs TensorRT parses (18: supported by every TensorRT 10 parser).
TRT_OPSET = 18
ALTERNATIVES = "use the 'torch' or 'onnxruntime' backend"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (10.x) with a CUDA GPU, or a clear BackendUnavailable."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable(
            "the 'tensorrt' backend needs the TensorRT 10 Python package, which is not "
            f"installed (pip install '.[tensorrt]' on a machine with an NVIDIA GPU); {ALTERNATIVES}"
        ) from err
    if not trt.__version__.startswith("10."):
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} is installed; this backend uses the TensorRT 10 API "
            f"(pip install 'tensorrt>=10,<11'); {ALTERNATIVES}"
        )
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            "TensorRT needs a CUDA GPU and torch.cuda.is_available() is False (no GPU, or a "
            f"CPU-only torch build); {ALTERNATIVES} (provider 'cpu')"
        )
    return trt


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise TypeError(f"TensorRT tensor type {dtype} has no torch equivalent here")
    return table[dtype]


def progress_monitor(trt: Any) -> Any:
    """An ``IProgressMonitor`` that shows one tqdm bar per (nested) build phase."""
    from tqdm.auto import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}
            self._lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = len(self._bars)
                self._bars[phase_name] = tqdm(
                    total=num_steps, desc=phase_name, position=depth, leave=depth == 0
                )

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgressMonitor()


def build_engine(
    trt: Any,
    logger: Any,
    onnx_path: Path,
    precision: str,
    workspace_bytes: int,
    progress: bool = True,
) -> bytes:
    """Parses ``onnx_path`` and builds a serialized engine (minutes for ``xl``).

    With fp16/bf16 the normalization layers are asked to stay in float32 (LayerNorm over
    1152 channels overflows in fp16; TensorRT warns about exactly this), the rest runs in
    the low precision where TensorRT finds it faster.
    """
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision == "fp32":  # strict: TensorRT would otherwise pick TF32 matmuls
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision in ("fp16", "bf16"):
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    monitor = progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    log.warning(
        "building a TensorRT %s engine from %s: this takes a while (minutes for xl) and "
        "happens once; the engine is cached",
        precision,
        onnx_path.name,
    )
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    return bytes(blob)


class _Engine:
    """A deserialized engine, its execution context and its I/O tensors."""

    def __init__(self, trt: Any, engine: Any) -> None:
        self.engine = engine
        self.context = engine.create_execution_context()
        self.inputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.outputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = (
                tuple(engine.get_tensor_shape(name)),
                _torch_dtype(trt, engine.get_tensor_dtype(name)),
            )
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = spec

    def bind(self, tensors: dict[str, torch.Tensor]) -> None:
        """Points every I/O tensor at ``tensors[name]`` (checked against the engine)."""
        for name, (shape, dtype) in (self.inputs | self.outputs).items():
            t = tensors[name]
            if tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous():
                raise ValueError(
                    f"engine tensor {name}: {shape} {dtype}, got {tuple(t.shape)} {t.dtype}"
                )
            self.context.set_tensor_address(name, t.data_ptr())

    def execute(self, stream: torch.cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")


class TensorRTDenoiser(Denoiser):
    """The sampler graphs as native TensorRT engines.

    Args:
        precision: ``fp16`` (default), ``bf16``, ``tf32`` (float32 I/O, TF32 matmuls where
            TensorRT picks them) or ``fp32`` (strict float32, for parity checks).
        graph: ``loop`` (one engine call per step range; an engine per range length) or
            ``step`` (one engine, one call per evaluation).
        cuda_graphs: Capture each call as a CUDA graph and replay it.
        workspace_gb: Builder workspace limit.
        cache_dir: Engine and ONNX cache (default ``$DEMUSE_CACHE_DIR`` or
            ``~/.cache/demuse_ros``).
        progress: Progress bars while building.
    """

    name = "tensorrt"

    def __init__(
        self,
        model: DeMUSE,
        diffusion: DiffusionConfig,
        steps: int | None = None,
        dust_q: int | None = None,
        batch: int = 1,
        device: str | torch.device = "cuda",
        precision: str = "fp16",
        graph: str = "loop",
        cuda_graphs: bool = True,
        workspace_gb: float = 4.0,
        cache_dir: str | os.PathLike[str] | None = None,
        model_digest: str | None = None,
        progress: bool = True,
    ) -> None:
        trt = import_tensorrt()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if graph not in GRAPHS:
            raise ValueError(f"graph {graph!r}: choose one of {', '.join(GRAPHS)}")
        if torch.device(device).type != "cuda":
            raise ValueError(f"device {device!r}: TensorRT runs on a CUDA device")
        super().__init__(model, diffusion, steps, dust_q, batch, device, cache_experts=False)
        self.trt, self.precision, self.graph_kind = trt, precision, graph
        self.cuda_graphs, self.progress = cuda_graphs, progress
        self.workspace_bytes = int(workspace_gb * 2**30)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.cache = EngineCache(cache_dir)
        self.graphs = SamplerGraphs(
            self.model, self.sampler, batch, cache_dir, model_digest, opset=TRT_OPSET
        )
        self.tables = StepTables(self.model, self.sampler, self.device)
        self.stream = torch.cuda.Stream(self.device)
        self.built: dict[int | None, bool] = {}  # per engine: built now (True) or loaded
        self._engines: dict[int | None, _Engine] = {}
        self._cuda_graphs: dict[tuple[int | None, int], torch.cuda.CUDAGraph] = {}
        self._allocate()
        self.prepare()

    # ------------------------------------------------------------------ buffers
    def _allocate(self) -> None:
        cfg, B, dev = self.cfg, self.batch, self.device
        cond = self.dummy_conditions()
        self._cond = {n: t.float().contiguous() for n, t in cond_inputs(cond).items()}
        h = cfg.latent_size
        state = {"x_a": (B, cfg.action_horizon, cfg.action_dim)}
        if "rgb" in cfg.modalities:
            state["x_v"] = (B, cfg.rgb_out_channels, h, h)
        # Ping-pong state: evaluation j reads set j % 2 and writes set (j + 1) % 2.
        self._state = [{n: torch.zeros(s, device=dev) for n, s in state.items()} for _ in range(2)]
        self._eps = {"eps_action": torch.zeros(B, cfg.action_horizon * cfg.action_dim, device=dev)}
        if "x_v" in state:
            self._eps["eps_rgb"] = torch.zeros(state["x_v"], device=dev)
        tables = self.tables.for_task(cond.task)
        self._tables = {n: torch.empty_like(t) for n, t in tables.items()}
        self._tables["coef"] = self.tables.coef
        self._task: tuple[int, ...] | None = None

    def _load_task(self, task: torch.Tensor) -> None:
        key = tuple(int(t) for t in task.tolist())
        if key != self._task:  # copy into the fixed buffers the captured graphs read
            for n, t in self.tables.for_task(task).items():
                self._tables[n].copy_(t, non_blocking=True)
            self._task = key

    # ------------------------------------------------------------------ engines
    def engine(self, k: int | None) -> _Engine:
        """The engine of the step graph (``k`` None) or of the ``k``-step graph."""
        if k not in self._engines:
            path = self.graphs.graph(k)
            props = torch.cuda.get_device_properties(self.device)
            key = EngineKey(
                kind="tensorrt",
                onnx_sha256=self.graphs.sha256(path),
                trt_version=self.trt.__version__,
                gpu_name=props.name,
                precision=self.precision,
                extra=(
                    ("graph", path.name),
                    ("batch", str(self.batch)),
                    ("workspace_bytes", str(self.workspace_bytes)),
                    ("compute_capability", f"{props.major}.{props.minor}"),
                ),
            )
            engine, built = self.cache.get_or_build(
                key,
                lambda: build_engine(
                    self.trt, self.logger, path, self.precision, self.workspace_bytes, self.progress
                ),
                self.runtime.deserialize_cuda_engine,
            )
            self._engines[k] = _Engine(self.trt, engine)
            self.built[k] = built
        return self._engines[k]

    def prepare(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """Builds or loads the engines the full chunk and ``ranges`` use and captures
        their CUDA graphs (with dummy conditions)."""
        ranges = [(0, self.n_steps), *ranges]
        for start, stop in ranges:
            self.check_range(start, stop)
        cond = self.dummy_conditions()
        for start, stop in ranges:
            if stop > start:
                self.run_steps(cond, self._state_at(cond, start), start, stop)

    def _state_at(self, cond: Conditions, step: int) -> DenoiseState:
        state = self.initial_noise(cond)
        return DenoiseState(state.x_v, state.x_a, step)

    # ------------------------------------------------------------------ running
    def _launch(self, k: int | None, j: int, tensors: dict[str, torch.Tensor]) -> None:
        """One engine call (replayed from a CUDA graph after the first), on self.stream."""
        engine = self.engine(k)
        graph = self._cuda_graphs.get((k, j))
        if graph is not None:
            graph.replay()
            return
        engine.bind(tensors)
        engine.execute(self.stream)  # the first call also does TensorRT's lazy setup
        if self.cuda_graphs:
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work on other threads (the control loop) may go on meanwhile.
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                engine.execute(self.stream)
            self._cuda_graphs[(k, j)] = graph

    def _call_tensors(self, rows: slice | int, reads: int) -> dict[str, torch.Tensor]:
        """Every tensor an engine call may bind: the conditions, table rows (a slice for
        the unrolled graphs, one row for the step graph), the state set it reads and the
        one it writes, and the noise outputs (an engine binds the names it has)."""
        t = dict(self._cond)
        t |= {n: x[rows] for n, x in self._tables.items()}
        t |= self._state[reads]
        t |= {f"{n}_next": x for n, x in self._state[1 - reads].items()}
        return t | self._eps

    def _enter(self, cond: Conditions, state: DenoiseState, reads: int) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for n, t in cond_inputs(cond).items():
                self._cond[n].copy_(t, non_blocking=True)
            self._load_task(cond.task)
            self._state[reads]["x_a"].copy_(state.x_a, non_blocking=True)
            if state.x_v is not None:
                self._state[reads]["x_v"].copy_(state.x_v, non_blocking=True)

    def _run(self, cond: Conditions, state: DenoiseState, start: int, stop: int) -> DenoiseState:
        reads = start % 2 if self.graph_kind == "step" else 0
        self._enter(cond, state, reads)
        with torch.cuda.stream(self.stream):
            if self.graph_kind == "loop":
                k = stop - start
                self._launch(k, start, self._call_tensors(slice(start, stop), 0))
                out = self._state[1]
            else:
                for j in range(start, stop):
                    self._launch(None, j, self._call_tensors(j, j % 2))
                out = self._state[stop % 2]
            result = {n: t.clone() for n, t in out.items()}
        self.stream.synchronize()
        return DenoiseState(result.get("x_v"), result["x_a"], stop)

    def _noise(
        self, cond: Conditions, state: DenoiseState
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        j = state.step
        self._enter(cond, state, j % 2)
        with torch.cuda.stream(self.stream):
            self._launch(None, j, self._call_tensors(j, j % 2))
            eps = {n: t.clone() for n, t in self._eps.items()}
        self.stream.synchronize()
        return eps.get("eps_rgb"), eps["eps_action"]

    def describe(self) -> str:
        graphs = " + CUDA graphs" if self.cuda_graphs else ""
        return f"TensorRT {self.trt.__version__} {self.precision} ({self.graph_kind} graph{graphs})"
