"""PyTorch backends: eager (the reference) and compiled (``torch.compile``, CUDA graphs).

* :class:`TorchDenoiser` is :class:`~demuse_ros.model.diffusion.DDIMSampler` itself
  (with its per-step caches and, for the noise router, MoDE's fused experts): the
  numbers every other backend is checked against.
* :class:`CompiledTorchDenoiser` compiles the fused sampler step
  (:class:`~demuse_ros.model.sampler_export.SamplerStep`: denoiser + DDIM update, fed the
  precomputed per-step tables) with ``torch.compile``; on a GPU it adds CUDA graphs
  (``mode="reduce-overhead"``) and optional fp16/bf16 autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from demuse_ros.model.config import DiffusionConfig
from demuse_ros.model.diffusion import Conditions
from demuse_ros.model.dit import DeMUSE
from demuse_ros.model.sampler_export import SamplerStep

from .base import BackendUnavailable, Denoiser, DenoiseState
from .tables import StepTables, cond_inputs

#: precision name -> autocast dtype (None: float32, no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def conditions_to(cond: Conditions, device: torch.device) -> Conditions:
    return Conditions(*(None if x is None else x.to(device) for x in cond))


class TorchDenoiser(Denoiser):
    """Eager PyTorch: the model's own DDIM sampler (float32)."""

    name = "torch"

    def __init__(
        self,
        model: DeMUSE,
        diffusion: DiffusionConfig,
        steps: int | None = None,
        dust_q: int | None = None,
        batch: int = 1,
        device: str | torch.device = "cpu",
        cache_experts: bool | None = None,
    ) -> None:
        super().__init__(model, diffusion, steps, dust_q, batch, device, cache_experts)

    @torch.no_grad()
    def _run(self, cond: Conditions, state: DenoiseState, start: int, stop: int) -> DenoiseState:
        cond = conditions_to(cond, self.device)
        x_v, x_a = self.sampler.run_steps(cond, state.x_v, state.x_a, start, stop)
        return DenoiseState(x_v, x_a, stop)

    @torch.no_grad()
    def _noise(
        self, cond: Conditions, state: DenoiseState
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        cond = conditions_to(cond, self.device)
        s, j = self.sampler, state.step
        B = cond.state.shape[0]
        rgb_in = None if state.x_v is None else torch.cat([cond.rgb_latent, state.x_v], dim=1)
        out = self.model(
            rgb_in,
            cond.depth,
            cond.wrench,
            torch.cat([cond.state, state.x_a.flatten(1)], dim=1),
            torch.full((B,), s.t_vision[j], device=self.device),
            torch.full((B,), s.t_action[j // s.q], device=self.device),
            cond.task,
            s.step_caches(cond.task)[j] if s.cache_steps else None,
        )
        return out.eps_rgb, out.eps_action

    def describe(self) -> str:
        return f"torch eager fp32 on {self.device}"


class CompiledTorchDenoiser(Denoiser):
    """The fused sampler step through ``torch.compile`` (+ CUDA graphs and autocast on GPU).

    Args:
        precision: ``fp32``, or ``fp16`` / ``bf16`` autocast (GPU only): matmuls in low
            precision, normalizations, softmax and the DDIM update in float32.
        cuda_graphs: Replay each step as a CUDA graph (``mode="reduce-overhead"``);
            default: on a GPU. Needs one.
        mode: ``torch.compile`` mode to use instead (overrides ``cuda_graphs``).
        compiler: ``torch.compile`` backend (``inductor``; ``eager`` only traces, which
            checks the step compiles as one graph in seconds instead of a minute).
    """

    name = "torch-compile"

    def __init__(
        self,
        model: DeMUSE,
        diffusion: DiffusionConfig,
        steps: int | None = None,
        dust_q: int | None = None,
        batch: int = 1,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cuda_graphs: bool | None = None,
        mode: str | None = None,
        compiler: str = "inductor",
    ) -> None:
        super().__init__(model, diffusion, steps, dust_q, batch, device, cache_experts=False)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        on_gpu = self.device.type == "cuda"
        if precision != "fp32" and not on_gpu:
            raise BackendUnavailable(
                f"precision {precision!r} needs a CUDA device (device is {self.device}); "
                "use precision='fp32' on the CPU"
            )
        self.cuda_graphs = on_gpu if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_gpu:
            raise BackendUnavailable(
                f"CUDA graphs need a CUDA device (device is {self.device}); pass cuda_graphs=False"
            )
        self.precision = precision
        self.mode = mode or ("reduce-overhead" if self.cuda_graphs else "default")
        self.step_module = SamplerStep(self.model, self.sampler.clip_rgb, self.sampler.clip_action)
        self.tables = StepTables(self.model, self.sampler, self.device)
        self.compiler = compiler
        options = {"mode": self.mode} if compiler == "inductor" else {}
        self._fn = torch.compile(
            self.step_module, fullgraph=True, dynamic=False, backend=compiler, **options
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _call(
        self, inputs: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], j: int
    ) -> tuple[torch.Tensor, ...]:
        feed = inputs | {n: t[j] for n, t in rows.items()}
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            out = self._fn(*(feed[n] for n in self.step_module.names))
        # CUDA-graph outputs live in memory the next replay overwrites: take copies.
        return tuple(t.clone() for t in out) if self.cuda_graphs else out

    def _inputs(self, cond: Conditions, state: DenoiseState) -> dict[str, torch.Tensor]:
        inputs = {n: t.to(self.device) for n, t in cond_inputs(cond).items()}
        inputs["x_a"] = state.x_a.to(self.device)
        if state.x_v is not None:
            inputs["x_v"] = state.x_v.to(self.device)
        return inputs

    @torch.no_grad()
    def _run(self, cond: Conditions, state: DenoiseState, start: int, stop: int) -> DenoiseState:
        inputs = self._inputs(cond, state)
        rows = self.tables.rows(cond.task, 0, self.n_steps)
        has_rgb = "x_v" in inputs
        for j in range(start, stop):
            out = self._call(inputs, rows, j)
            if has_rgb:
                inputs["x_v"], inputs["x_a"] = out[0], out[1]
            else:
                inputs["x_a"] = out[0]
        return DenoiseState(inputs.get("x_v"), inputs["x_a"], stop)

    @torch.no_grad()
    def _noise(
        self, cond: Conditions, state: DenoiseState
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        inputs = self._inputs(cond, state)
        out = self._call(inputs, self.tables.rows(cond.task, 0, self.n_steps), state.step)
        return (out[2], out[3]) if "x_v" in inputs else (None, out[1])

    def prepare(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """Compiles (and captures) with a dummy observation: the first call takes seconds."""
        cond = self.dummy_conditions()
        for _ in range(2):  # CUDA graph trees record on the second call
            self.sample(cond)

    def describe(self) -> str:
        graphs = " + CUDA graphs" if self.cuda_graphs else ""
        how = self.mode if self.compiler == "inductor" else f"backend {self.compiler}"
        return f"torch.compile ({how}){graphs} {self.precision} on {self.device}"
