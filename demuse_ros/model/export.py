"""One denoising step as a fixed-signature module, for ``torch.export`` and ONNX (DESIGN §7).

The sampler graphs the inference backends run are in :mod:`.sampler_export`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .dit import DeMUSE

OUTPUT_NAMES = ("eps_rgb", "eps_action")


def input_names(cfg: ModelConfig) -> list[str]:
    """The step's inputs, in order, for the modalities ``cfg`` has."""
    names = [
        n
        for n, m in (("rgb", "rgb"), ("depth", "depth"), ("wrench", "force"))
        if m in cfg.modalities
    ]
    return [*names, "action", "t_vision", "t_action", "task"]


def example_inputs(cfg: ModelConfig, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the step's shapes (float32; timesteps as float, task as int64)."""
    g = torch.Generator().manual_seed(seed)
    h = cfg.latent_size
    shapes = {
        "rgb": (batch, cfg.rgb_in_channels, h, h),
        "depth": (batch, 1, h, h),
        "wrench": (batch, cfg.wrench_in_dim),
        "action": (batch, cfg.action_in_dim),
    }
    out = []
    for name in input_names(cfg):
        if name in shapes:
            out.append(torch.randn(shapes[name], generator=g))
        elif name == "task":
            out.append(torch.randint(0, cfg.n_tasks, (batch,), generator=g))
        else:
            out.append(torch.randint(0, 1000, (batch,), generator=g).float())
    return tuple(out)


class DenoiserStep(nn.Module):
    """``DeMUSE`` in eval mode with positional tensor inputs and a tuple of outputs."""

    def __init__(self, model: DeMUSE) -> None:
        super().__init__()
        self.model = model.eval()
        self.names = input_names(model.cfg)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = dict(zip(self.names, inputs, strict=True))
        out = self.model(
            x.get("rgb"),
            x.get("depth"),
            x.get("wrench"),
            x["action"],
            x["t_vision"],
            x["t_action"],
            x["task"],
        )
        return (out.eps_action,) if out.eps_rgb is None else (out.eps_rgb, out.eps_action)


def export_program(model: DeMUSE, batch: int = 1) -> torch.export.ExportedProgram:
    """``torch.export`` of one denoising step at a fixed batch size."""
    step = DenoiserStep(model)
    return torch.export.export(step, example_inputs(model.cfg, batch), strict=False)


def export_onnx(model: DeMUSE, path: str | os.PathLike[str], batch: int = 1) -> Path:
    """Writes one denoising step as ONNX (fixed shapes, dynamo exporter); returns the path."""
    path = Path(path)
    step = DenoiserStep(model)
    outputs = OUTPUT_NAMES if "rgb" in model.cfg.modalities else OUTPUT_NAMES[1:]
    torch.onnx.export(
        step,
        example_inputs(model.cfg, batch),
        str(path),
        input_names=step.names,
        output_names=list(outputs),
        dynamo=True,
        verbose=False,
        external_data=False,
    )
    return path
