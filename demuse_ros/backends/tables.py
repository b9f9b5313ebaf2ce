"""Host-side inputs of the sampler graphs (:class:`~demuse_ros.model.sampler_export.SamplerStep`).

The graph backends (compiled torch, onnxruntime, TensorRT) run one fixed-shape graph
per step (or per unrolled step range) and feed it, besides the observation and the
state, three per-step tables: every block's AdaMN modulation per modality slot, the
noise router's input (MoDE only) and the DDIM coefficients. The first two depend only
on the timesteps and the task, so they are computed once per task batch and reused in
every chunk — the AdaMN MLPs then cost nothing per step.
"""

from __future__ import annotations

import torch

from demuse_ros.model.diffusion import Conditions, DDIMSampler
from demuse_ros.model.dit import DeMUSE
from demuse_ros.model.sampler_export import ddim_coefficients, slot_tables

#: Conditions field -> graph input name.
COND_INPUTS = {"rgb_latent": "rgb_latent", "depth": "depth", "wrench": "wrench", "state": "state"}


def cond_inputs(cond: Conditions) -> dict[str, torch.Tensor]:
    """The graph inputs a :class:`Conditions` provides (absent modalities left out)."""
    out = {}
    for field, name in COND_INPUTS.items():
        value = getattr(cond, field)
        if value is not None:
            out[name] = value
    return out


class StepTables:
    """Per-step tables on ``device``: ``coef (n, 9)`` and, per task batch (memoized),
    ``modulation (n, B, S, M)`` and ``route (n, B, S, d)`` (noise router only)."""

    MEMO = 8

    def __init__(self, model: DeMUSE, sampler: DDIMSampler, device: torch.device | str) -> None:
        self.model, self.sampler = model, sampler
        self.device = torch.device(device)
        self.coef = ddim_coefficients(sampler).to(self.device).contiguous()
        self._memo: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}

    def for_task(self, task: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"modulation": …, ["route": …]}`` for a task batch ``(B,)`` (built on first use)."""
        key = tuple(int(t) for t in task.tolist())
        tables = self._memo.get(key)
        if tables is None:
            if len(self._memo) >= self.MEMO:
                self._memo.pop(next(iter(self._memo)))
            dev = self.model.token_slot.device
            mod, route = slot_tables(self.model, self.sampler, task.to(dev))
            tables = {"modulation": mod.to(self.device).contiguous()}
            if route is not None:
                tables["route"] = route.to(self.device).contiguous()
            self._memo[key] = tables
        return tables

    def rows(self, task: torch.Tensor, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Rows ``start .. stop - 1`` of every table (views, contiguous: leading axis)."""
        rows = {n: t[start:stop] for n, t in self.for_task(task).items()}
        rows["coef"] = self.coef[start:stop]
        return rows
