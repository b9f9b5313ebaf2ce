"""Helpers shared by the backend tests (``test/`` is not a package: imported by name).

``FP32`` holds the float32 tolerances that ``test_backends_parity`` states and explains.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch
from _model_helpers import randomize

from demuse_ros.backends.base import Denoiser, DenoiseState
from demuse_ros.model.config import PRESETS
from demuse_ros.model.diffusion import Conditions
from demuse_ros.model.dit import DeMUSE


class Tolerance(NamedTuple):
    eps_atol: float = 1e-5
    eps_rtol: float = 1e-4
    action_atol: float = 1e-4
    latent_rtol: float = 1e-5  # of max |x_v|


FP32 = Tolerance()


def make_model(name: str, seed: int = 0, **overrides: object) -> DeMUSE:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
    return randomize(DeMUSE(cfg), seed).eval()


def conditions(model: DeMUSE, seed: int, task: int = 1) -> Conditions:
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    h = cfg.latent_size
    return Conditions(
        torch.randn(1, cfg.latent_channels, h, h, generator=g),
        torch.randn(1, 1, h, h, generator=g),
        torch.randn(1, 6, generator=g),
        torch.rand(1, cfg.state_dim, generator=g) * 2 - 1,
        torch.tensor([task]),
    )


def assert_chunks_close(a: DenoiseState, b: DenoiseState, tol: Tolerance = FP32) -> None:
    assert a.step == b.step
    torch.testing.assert_close(b.x_a.cpu(), a.x_a.cpu(), rtol=0, atol=tol.action_atol)
    scale = float(a.x_v.abs().max())
    torch.testing.assert_close(b.x_v.cpu(), a.x_v.cpu(), rtol=0, atol=tol.latent_rtol * scale)


def check_parity(
    ref: Denoiser, other: Denoiser, model: DeMUSE, seeds: tuple[int, ...], tol: Tolerance = FP32
) -> None:
    """Every evaluation's noise (at the reference's states) and the final chunk agree."""
    q = ref.q
    for seed in seeds:
        cond = conditions(model, seed, task=seed % model.cfg.n_tasks)
        state = ref.initial_noise(cond, torch.Generator().manual_seed(seed))
        for j in range(0, ref.n_steps, q):  # every evaluation, along torch's trajectory
            for i in range(j, j + q):
                at = DenoiseState(state.x_v, state.x_a, i)
                (ev, ea), (ov, oa) = ref.noise(cond, at), other.noise(cond, at)
                rtol, atol = tol.eps_rtol, tol.eps_atol
                torch.testing.assert_close(oa.cpu(), ea.cpu(), rtol=rtol, atol=atol)
                torch.testing.assert_close(ov.cpu(), ev.cpu(), rtol=rtol, atol=atol)
            state = ref.run_steps(cond, state, j, j + q)
        final_ref = ref.sample(cond, torch.Generator().manual_seed(seed))
        final = other.sample(cond, torch.Generator().manual_seed(seed))
        assert_chunks_close(final_ref, final, tol)
        assert other.actions(final).shape == (1, model.cfg.action_horizon, model.cfg.action_dim)


def check_split(
    denoiser: Denoiser,
    ref: Denoiser,
    model: DeMUSE,
    split: int,
    exact: bool,
    tol: Tolerance = FP32,
) -> None:
    """[0, s) then [s, n) equals one pass; with a new observation for [s, n) the chunk
    changes (the swap is speculative inference's point) exactly as the reference's does."""
    cond, real = conditions(model, 11), conditions(model, 12)
    x0 = denoiser.initial_noise(cond, torch.Generator().manual_seed(3))
    whole = denoiser.run_steps(cond, x0, 0, denoiser.n_steps)
    first = denoiser.run_steps(cond, x0, 0, split)
    assert first.step == split
    rest = denoiser.run_steps(cond, first, split, denoiser.n_steps)
    if exact:
        assert torch.equal(rest.x_a, whole.x_a) and torch.equal(rest.x_v, whole.x_v)
    else:
        torch.testing.assert_close(rest.x_a, whole.x_a, rtol=0, atol=1e-6)
    swapped = denoiser.run_steps(real, first, split, denoiser.n_steps)
    assert not torch.allclose(swapped.x_a, whole.x_a, atol=1e-3)
    r = ref.run_steps(cond, ref.initial_noise(cond, torch.Generator().manual_seed(3)), 0, split)
    assert_chunks_close(ref.run_steps(real, r, split, ref.n_steps), swapped, tol)
    with pytest.raises(ValueError, match="state is at step"):
        denoiser.run_steps(cond, first, 0, denoiser.n_steps)
