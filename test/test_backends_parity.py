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

from demuse_ros.model.config import DIFFUSION_PRESETS

torch = pytest.importorskip("torch", reason="the backends need the 'model' extra (torch)")
pytest.importorskip("onnxruntime", reason="the 'model' extra (onnxruntime)")
pytest.importorskip("onnxscript", reason="the 'model' extra (onnxscript, for the exporter)")

from _backend_helpers import check_parity, check_split, conditions, make_model  # noqa: E402

from demuse_ros.backends import make_denoiser  # noqa: E402
from demuse_ros.model.diffusion import DDIMSampler  # noqa: E402
from demuse_ros.model.sampler_export import (  # noqa: E402
    SamplerStep,
    SamplerSteps,
    ddim_coefficients,
    sampler_input_names,
    slot_tables,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demuse-cache")


def test_sampler_step_graph_equals_the_ddim_sampler() -> None:
    """The exported module (fused step, per-slot modulations, in-graph DDIM update, MoE as
    two wide matmuls) is the sampler's arithmetic up to float rounding, for the token
    router and for MoDE + DUST."""
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
        torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-6 * float(ref[0].abs().max()))


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


def test_onnxruntime_matches_torch_with_the_rgb_summary(cache_dir: Path) -> None:
    """``rgb_summary`` (a linear read-out of the current latent into the action token) is
    part of the exported graph, and the current latent really reaches the actions."""
    model = make_model("tiny", rgb_summary=True)
    assert model.embed.rgb_summary.weight.abs().sum() > 0  # randomized, not the zero init
    diffusion = DIFFUSION_PRESETS["tiny"]
    ref = make_denoiser("torch", model, diffusion=diffusion)
    ort = make_denoiser("onnxruntime", model, diffusion=diffusion, cache_dir=cache_dir)
    check_parity(ref, ort, model, seeds=(4,))
    cond = conditions(model, 4)
    moved = cond._replace(rgb_latent=cond.rgb_latent + 1.0)
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    a = ref.actions(ref.run_steps(cond, ref.initial_noise(cond, g[0]), 0, ref.n_steps))
    b = ref.actions(ref.run_steps(moved, ref.initial_noise(moved, g[1]), 0, ref.n_steps))
    assert not torch.allclose(a, b)


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
