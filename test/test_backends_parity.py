"""torch vs onnxruntime: noise predictions per step and the final chunk, for ``tiny`` and ``cpu``.

Stated tolerances (float32 on the CPU; measured differences are ~10× smaller):

* noise prediction of every step, at the same state: ``|Δε| ≤ 1e-5 + 1e-4·|ε|``
  (measured ≤ 1e-6 with |ε| ~ 1);
* final normalized actions after all steps: ``|Δa| ≤ 1e-4`` (measured ≤ 1.2e-5; the
  early DDIM steps divide by √ᾱ_T ≈ 0.006, which amplifies rounding);
* final future latents: ``|Δx_v| ≤ 1e-5 · max|x_v|`` (measured ≤ 3e-7 relative).

The weights are random and non-zero everywhere (adaLN-Zero and the heads start at zero),
so every parameter matters. Step-range splits (speculative inference) are checked on
every backend.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from demuse_ros.model.config import DIFFUSION_PRESETS, PRESETS

torch = pytest.importorskip("torch", reason="the backends need the 'model' extra (torch)")
pytest.importorskip("onnxruntime", reason="the 'model' extra (onnxruntime)")
pytest.importorskip("onnxscript", reason="the 'model' extra (onnxscript, for the exporter)")

from _model_helpers import randomize  # noqa: E402

from demuse_ros.backends import make_denoiser  # noqa: E402
from demuse_ros.backends.base import Denoiser, DenoiseState  # noqa: E402
from demuse_ros.model.diffusion import Conditions, DDIMSampler  # noqa: E402
from demuse_ros.model.dit import DeMUSE  # noqa: E402
from demuse_ros.model.export import (  # noqa: E402
    SamplerStep,
    SamplerSteps,
    ddim_coefficients,
    sampler_input_names,
    slot_tables,
)

EPS_ATOL, EPS_RTOL = 1e-5, 1e-4
ACTION_ATOL = 1e-4
LATENT_RTOL = 1e-5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demuse-cache")


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


def assert_chunks_close(a: DenoiseState, b: DenoiseState) -> None:
    assert a.step == b.step
    torch.testing.assert_close(b.x_a, a.x_a, rtol=0, atol=ACTION_ATOL)
    scale = float(a.x_v.abs().max())
    torch.testing.assert_close(b.x_v, a.x_v, rtol=0, atol=LATENT_RTOL * scale)


def check_parity(ref: Denoiser, other: Denoiser, model: DeMUSE, seeds: tuple[int, ...]) -> None:
    q = ref.q
    for seed in seeds:
        cond = conditions(model, seed, task=seed % model.cfg.n_tasks)
        state = ref.initial_noise(cond, torch.Generator().manual_seed(seed))
        for j in range(0, ref.n_steps, q):  # every evaluation, along torch's trajectory
            for i in range(j, j + q):
                at = DenoiseState(state.x_v, state.x_a, i)
                (ev, ea), (ov, oa) = ref.noise(cond, at), other.noise(cond, at)
                torch.testing.assert_close(oa, ea, rtol=EPS_RTOL, atol=EPS_ATOL)
                torch.testing.assert_close(ov, ev, rtol=EPS_RTOL, atol=EPS_ATOL)
            state = ref.run_steps(cond, state, j, j + q)
        final_ref = ref.sample(cond, torch.Generator().manual_seed(seed))
        final = other.sample(cond, torch.Generator().manual_seed(seed))
        assert_chunks_close(final_ref, final)
        assert other.actions(final).shape == (1, model.cfg.action_horizon, model.cfg.action_dim)


def check_split(denoiser: Denoiser, ref: Denoiser, model: DeMUSE, split: int, exact: bool) -> None:
    """[0, s) then [s, n) equals one pass; with a new observation for [s, n) the chunk
    changes (the swap is speculative inference's point) exactly as torch's does."""
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
    r = ref.run_steps(cond, x0, 0, split)
    assert_chunks_close(ref.run_steps(real, r, split, ref.n_steps), swapped)
    with pytest.raises(ValueError, match="state is at step"):
        denoiser.run_steps(cond, first, 0, denoiser.n_steps)


def test_sampler_step_graph_equals_the_ddim_sampler() -> None:
    """The exported module (fused step, per-slot modulations, in-graph DDIM update) is the
    sampler's arithmetic exactly, for the token router and for MoDE + DUST."""
    for overrides, q in (({}, 1), ({"router": "noise"}, 2)):
        model = make_model("tiny", **overrides)
        diffusion = dataclasses.replace(DIFFUSION_PRESETS["tiny"], ddim_steps=4, dust_q=q)
        sampler = DDIMSampler(model, diffusion, cache_steps=True)
        cond = conditions(model, 5)
        x_v, x_a = sampler.initial_noise(cond, generator=torch.Generator().manual_seed(0))
        ref = sampler.run_steps(cond, x_v, x_a, 0, sampler.n_evaluations)
        mod, route = slot_tables(model, sampler, cond.task)
        inputs = {
            "rgb_latent": cond.rgb_latent,
            "depth": cond.depth,
            "wrench": cond.wrench,
            "state": cond.state,
            "x_v": x_v,
            "x_a": x_a,
            "modulation": mod,
            "route": route,
            "coef": ddim_coefficients(sampler),
        }
        step = SamplerStep(model, sampler.clip_rgb, sampler.clip_action)
        loop = SamplerSteps(step, sampler.n_evaluations)
        with torch.no_grad():
            got = loop(*(inputs[n] for n in sampler_input_names(model.cfg)))
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("graph", ["loop", "step"])
def test_onnxruntime_matches_torch_tiny(cache_dir: Path, graph: str) -> None:
    model = make_model("tiny")
    diffusion = DIFFUSION_PRESETS["tiny"]
    ref = make_denoiser("torch", model, diffusion=diffusion)
    ort = make_denoiser("onnxruntime", model, diffusion=diffusion, graph=graph, cache_dir=cache_dir)
    check_parity(ref, ort, model, seeds=(1, 2))
    check_split(ort, ref, model, split=3, exact=graph == "step")


def test_onnxruntime_matches_torch_with_mode_routing_and_dust(cache_dir: Path) -> None:
    """Noise router (torch eager uses MoDE's fused expert cache; the graph computes every
    expert and masks) and DUST q = 2 (vision stepped twice per action step)."""
    model = make_model("tiny", router="noise")
    diffusion = dataclasses.replace(DIFFUSION_PRESETS["tiny"], ddim_steps=4, dust_q=2)
    ref = make_denoiser("torch", model, diffusion=diffusion)
    assert ref.sampler.experts[0] is not None  # the reference really uses the fused experts
    ort = make_denoiser("onnxruntime", model, diffusion=diffusion, cache_dir=cache_dir)
    assert ort.n_steps == 8
    check_parity(ref, ort, model, seeds=(3,))
    check_split(ort, ref, model, split=4, exact=False)
    with pytest.raises(ValueError, match="multiples of q"):
        ort.run_steps(conditions(model, 1), ort.initial_noise(conditions(model, 1)), 0, 3)


@pytest.mark.slow
def test_onnxruntime_matches_torch_cpu_preset(cache_dir: Path) -> None:
    model = make_model("cpu")
    diffusion = DIFFUSION_PRESETS["cpu"]
    ref = make_denoiser("torch", model, diffusion=diffusion)
    ort = make_denoiser("onnxruntime", model, diffusion=diffusion, cache_dir=cache_dir)
    check_parity(ref, ort, model, seeds=(1, 2))
    check_split(ort, ref, model, split=4, exact=False)


def test_torch_backends_split() -> None:
    model = make_model("tiny")
    diffusion = DIFFUSION_PRESETS["tiny"]
    eager = make_denoiser("torch", model, diffusion=diffusion)
    check_split(eager, eager, model, 5, exact=True)
    # torch.compile's tracer only (fullgraph: the step is one graph, no breaks); the
    # inductor build of the same module takes ~1 min here (the slow test below).
    traced = make_denoiser("torch", model, diffusion=diffusion, compile=True, compiler="eager")
    check_split(traced, eager, model, 5, exact=True)
    check_parity(eager, traced, model, seeds=(4,))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager() -> None:
    model = make_model("tiny")
    diffusion = DIFFUSION_PRESETS["tiny"]
    eager = make_denoiser("torch", model, diffusion=diffusion)
    compiled = make_denoiser("torch", model, diffusion=diffusion, compile=True)
    check_parity(eager, compiled, model, seeds=(4,))
    check_split(compiled, eager, model, 5, exact=True)
