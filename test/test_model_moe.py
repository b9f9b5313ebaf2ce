"""Sparse MoE: routed == dense (export) path, load balancing without action tokens, MoDE
expert caching, and the FLOP counter against torch's."""

from __future__ import annotations

import dataclasses

import pytest

from demuse_ros.model.config import DIFFUSION_PRESETS, PRESETS

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from _model_helpers import randomize  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from demuse_ros.model.blocks import SparseMoE  # noqa: E402
from demuse_ros.model.diffusion import Conditions, DDIMSampler  # noqa: E402
from demuse_ros.model.dit import DeMUSE  # noqa: E402
from demuse_ros.model.export import DenoiserStep, example_inputs  # noqa: E402
from demuse_ros.model.flops import forward_macs  # noqa: E402


@pytest.mark.parametrize("top_k", [1, 2])
def test_routed_and_dense_paths_are_equal(top_k: int) -> None:
    torch.manual_seed(0)
    moe = SparseMoE(32, 128, 64, n_experts=4, top_k=top_k)
    x = torch.randn(3, 19, 32)
    _, w, idx = moe.gate(x)
    assert len(set(idx.flatten().tolist())) > 1  # the tokens really go to several experts
    sparse, dense = moe.routed_sparse(x, w, idx), moe.routed_dense(x, w, idx)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    mask = torch.ones(19, dtype=torch.bool)
    moe.train()
    y_train, aux_train = moe(x, x, mask)
    moe.eval()
    y_eval, aux_eval = moe(x, x, mask)
    torch.testing.assert_close(y_train, y_eval, rtol=1e-5, atol=1e-6)
    assert aux_train > 0 and aux_eval == 0  # balancing statistics only where they train


def test_whole_model_train_and_eval_forward_agree() -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], top_k=2)
    model = randomize(DeMUSE(cfg))
    inputs = example_inputs(cfg, batch=4)
    step = DenoiserStep(model)
    model.train()
    a = step(*inputs)
    model.eval()
    b = step(*inputs)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_balance_loss_ignores_action_tokens() -> None:
    """A.3: the load-balancing statistics leave the action token out."""
    torch.manual_seed(1)
    moe = SparseMoE(16, 32, 32, n_experts=4, top_k=1)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([True] * 5 + [False])  # last token = action
    _, aux = moe(x, x, mask)
    x2 = x.clone()
    x2[:, 5] = torch.randn(2, 16) * 10  # re-route the action token
    _, aux2 = moe(x2, x2, mask)
    assert torch.equal(aux, aux2)
    x3 = x.clone()
    x3[:, 0] = torch.randn(2, 16) * 10  # re-route an observation token
    _, aux3 = moe(x3, x3, mask)
    assert not torch.equal(aux, aux3)


def test_balance_loss_is_one_when_balanced() -> None:
    moe = SparseMoE(8, 8, 8, n_experts=4, top_k=1)
    probs = torch.full((1, 8, 4), 0.25)
    idx = torch.arange(8).remainder(4).reshape(1, 8, 1)
    assert moe.balance_loss(probs, idx, torch.ones(8, dtype=torch.bool)).item() == 1.0
    collapsed = torch.zeros(1, 8, 1, dtype=torch.long)
    peaked = torch.tensor([1.0, 0, 0, 0]).expand(1, 8, 4)
    assert moe.balance_loss(peaked, collapsed, torch.ones(8, dtype=torch.bool)).item() == 4.0


def test_mode_expert_cache_equals_uncached_sampling() -> None:
    """MoDE: fused per-step experts give the same chunk as routing every token."""
    cfg = dataclasses.replace(PRESETS["tiny"], router="noise", top_k=2)
    model = randomize(DeMUSE(cfg)).eval()
    g = torch.Generator().manual_seed(0)
    h = cfg.latent_size
    cond = Conditions(
        torch.randn(2, 4, h, h, generator=g),
        torch.randn(2, 1, h, h, generator=g),
        torch.randn(2, 6, generator=g),
        torch.randn(2, cfg.state_dim, generator=g),
        torch.tensor([0, 3]),
    )
    diffusion = dataclasses.replace(DIFFUSION_PRESETS["tiny"], dust_q=2)
    cached = DDIMSampler(model, diffusion, cache_experts=True)
    plain = DDIMSampler(model, diffusion, cache_experts=False, cache_steps=False)
    assert len(cached.experts) == cached.n_evaluations and cached.experts[0] is not None
    v1, a1 = cached.sample(cond, generator=torch.Generator().manual_seed(5))
    v2, a2 = plain.sample(cond, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a1, a2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v1, v2, rtol=1e-4, atol=1e-5)


def test_expert_cache_needs_the_noise_router() -> None:
    model = DeMUSE(PRESETS["tiny"])
    with pytest.raises(ValueError, match="router='noise'"):
        model.build_expert_cache(999, 999)


@pytest.mark.parametrize("moe", ["routed", "dense"])
def test_flop_count_matches_torch_flop_counter(moe: str) -> None:
    """The analytic count equals torch's matmul/conv count (2 FLOPs per multiply-add)."""
    cfg = PRESETS["tiny"]
    model = DeMUSE(cfg).train(moe == "routed")  # training takes the routed path
    step = DenoiserStep(model).train(moe == "routed")
    inputs = example_inputs(cfg)
    # The math backend runs attention as matmuls, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step(*inputs)
    assert counter.get_total_flops() == 2 * forward_macs(cfg, moe)
