"""Helpers shared by the model tests (``test/`` is not a package: imported by name)."""

from __future__ import annotations

import torch

from demuse_ros.model.dit import DeMUSE


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gives the zero-initialised parameters (adaLN-Zero, heads) values, so outputs vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def run(model: DeMUSE, inputs: tuple) -> object:
    """Calls the model with ``export.example_inputs`` (which has only the present modalities)."""
    it = iter(inputs)
    present = {"rgb": "rgb", "depth": "depth", "wrench": "force"}
    kw = {n: (next(it) if m in model.cfg.modalities else None) for n, m in present.items()}
    return model(kw["rgb"], kw["depth"], kw["wrench"], *it)
