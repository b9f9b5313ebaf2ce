"""DDPM schedule, the joint loss, DDIM and DUST sampling."""

from __future__ import annotations

import dataclasses

import pytest

from demuse_ros.model.config import DIFFUSION_PRESETS, PRESETS

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from _model_helpers import randomize  # noqa: E402

from demuse_ros.model.diffusion import (  # noqa: E402
    Conditions,
    DDIMSampler,
    ModelBatch,
    NoiseSchedule,
    diffusion_loss,
)
from demuse_ros.model.dit import DeMUSE, DenoiserOutput  # noqa: E402

CFG = PRESETS["tiny"]
DIFF = DIFFUSION_PRESETS["tiny"]


def _conditions(batch: int = 2, seed: int = 0) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    h = CFG.latent_size
    return Conditions(
        torch.randn(batch, CFG.latent_channels, h, h, generator=g),
        torch.randn(batch, 1, h, h, generator=g),
        torch.randn(batch, 6, generator=g),
        torch.randn(batch, CFG.state_dim, generator=g),
        torch.arange(batch) % CFG.n_tasks,
    )


def _batch(batch: int = 4, seed: int = 0) -> ModelBatch:
    g = torch.Generator().manual_seed(seed)
    h = CFG.latent_size
    return ModelBatch(
        torch.randn(batch, CFG.rgb_in_channels, h, h, generator=g),
        torch.randn(batch, 1, h, h, generator=g),
        torch.randn(batch, 6, generator=g),
        torch.randn(batch, CFG.state_dim, generator=g),
        torch.randn(batch, CFG.action_horizon, CFG.action_dim, generator=g),
        torch.arange(batch) % CFG.n_tasks,
    )


class Oracle(torch.nn.Module):
    """A denoiser that knows the clean targets: returns the exact ε of its input."""

    def __init__(self, x0_rgb: torch.Tensor, x0_action: torch.Tensor) -> None:
        super().__init__()
        self.cfg, self.x0_rgb, self.x0_action = CFG, x0_rgb, x0_action
        self.abar = NoiseSchedule(DIFF).alphas_cumprod
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[int, int]] = []

    def _eps(self, x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t.long()].reshape(-1, *([1] * (x.ndim - 1)))
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    def forward(self, rgb, depth, wrench, action, t_vision, t_action, task, cache=None):
        self.calls.append((int(t_vision[0]), int(t_action[0])))
        eps_rgb = self._eps(rgb[:, CFG.latent_channels :], self.x0_rgb, t_vision)
        eps_a = self._eps(action[:, CFG.state_dim :], self.x0_action.flatten(1), t_action)
        return DenoiserOutput(eps_rgb, eps_a, torch.zeros(()))


@pytest.mark.parametrize("q", [1, 2, 4])
def test_ddim_with_exact_noise_recovers_the_target(q: int) -> None:
    """The sampler is right: given the true ε it lands on x0, for DUST's q too."""
    g = torch.Generator().manual_seed(3)
    x0_rgb = torch.randn(2, CFG.rgb_out_channels, 8, 8, generator=g)
    # min-max normalized actions lie in [-1, 1], inside DDIM's action x0 clip
    x0_action = torch.rand(2, CFG.action_horizon, CFG.action_dim, generator=g) * 2 - 1
    oracle = Oracle(x0_rgb, x0_action)
    sampler = DDIMSampler(oracle, DIFF, dust_q=q, cache_steps=False)
    rgb, actions = sampler.sample(_conditions(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(actions, x0_action, rtol=0, atol=1e-5)
    torch.testing.assert_close(rgb, x0_rgb, rtol=0, atol=1e-5)
    # DUST: vision steps every call, actions hold their timestep for q calls.
    assert len(oracle.calls) == DIFF.ddim_steps * q
    assert [ta for _, ta in oracle.calls] == [t for t in sampler.t_action for _ in range(q)]
    assert [tv for tv, _ in oracle.calls] == sampler.t_vision


def test_ddim_timesteps_nest_and_start_at_pure_noise() -> None:
    sch = NoiseSchedule(DIFF)
    coarse, fine = sch.ddim_timesteps(16), sch.ddim_timesteps(64)
    assert coarse[0] == 999 and fine[0] == 999 and len(set(fine)) == 64
    assert fine[::4] == coarse  # DUST's streams meet at every action step
    assert sch.alphas_cumprod[0] > 0.999 and sch.alphas_cumprod[-1] < 1e-4


def test_ddim_is_deterministic_given_the_noise() -> None:
    model = randomize(DeMUSE(CFG)).eval()
    sampler = DDIMSampler(model, DIFF)
    cond = _conditions()
    a = sampler.sample(cond, generator=torch.Generator().manual_seed(7))
    b = sampler.sample(cond, generator=torch.Generator().manual_seed(7))
    c = sampler.sample(cond, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.allclose(a[1], c[1])
    noise = torch.randn(2, CFG.action_horizon, CFG.action_dim)
    d = sampler.sample(cond, noise_rgb=a[0] * 0 + 1, noise_action=noise)
    e = sampler.sample(cond, noise_rgb=a[0] * 0 + 1, noise_action=noise.clone())
    assert torch.equal(d[1], e[1])


@pytest.mark.parametrize("q", [1, 2])
def test_step_caches_give_the_uncached_result(q: int) -> None:
    """Precomputed contexts and AdaMN modulations per step change nothing but the cost."""
    model = randomize(DeMUSE(CFG)).eval()
    cond = _conditions(batch=3)
    cached = DDIMSampler(model, DIFF, dust_q=q)
    plain = DDIMSampler(model, DIFF, dust_q=q, cache_steps=False)
    for seed in (1, 2):  # the second chunk reuses the caches of the first
        a = cached.sample(cond, generator=torch.Generator().manual_seed(seed))
        b = plain.sample(cond, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert len(cached._memo) == 1


def test_dust_with_q_1_is_plain_ddim() -> None:
    model = randomize(DeMUSE(CFG)).eval()
    cond = _conditions()
    plain = DDIMSampler(model, DIFF).sample(cond, generator=torch.Generator().manual_seed(1))
    dust = DDIMSampler(model, dataclasses.replace(DIFF, dust=True), dust_q=1).sample(
        cond, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(plain[1], dust[1])


class Spy(torch.nn.Module):
    """Wraps the model and records what the loss feeds it."""

    def __init__(self, model: DeMUSE) -> None:
        super().__init__()
        self.model, self.cfg, self.seen = model, model.cfg, {}

    def forward(self, rgb, depth, wrench, action, t_vision, t_action, task, cache=None):
        self.seen = dict(
            rgb=rgb, depth=depth, wrench=wrench, action=action, tv=t_vision, ta=t_action
        )
        out = self.model(rgb, depth, wrench, action, t_vision, t_action, task)
        self.seen["out"] = out
        return out


@pytest.mark.parametrize("dust", [False, True])
def test_loss_noises_only_the_targets(dust: bool) -> None:
    """Current frame, depth, force and state go in clean; only the future is noised and
    scored; DUST draws the two timesteps independently."""
    spy = Spy(randomize(DeMUSE(CFG)))
    batch = _batch(batch=32)
    cfg = dataclasses.replace(DIFF, dust=dust)
    terms = diffusion_loss(spy, batch, NoiseSchedule(cfg), cfg, torch.Generator().manual_seed(0))
    seen, c = spy.seen, CFG.latent_channels
    assert torch.equal(seen["rgb"][:, :c], batch.rgb_latents[:, :c])  # current frame clean
    assert not torch.allclose(seen["rgb"][:, c:], batch.rgb_latents[:, c:])  # future noised
    assert torch.equal(seen["depth"], batch.depth) and torch.equal(seen["wrench"], batch.wrench)
    assert torch.equal(seen["action"][:, : CFG.state_dim], batch.state)  # proprio clean
    assert seen["out"].eps_rgb.shape[1] == CFG.rgb_out_channels  # no output for the current frame
    assert torch.equal(seen["tv"], seen["ta"]) != dust
    expected = (
        cfg.action_loss_weight * terms.action
        + cfg.rgb_loss_weight * terms.rgb
        + cfg.aux_loss_weight * terms.aux
    )
    torch.testing.assert_close(terms.total.detach(), expected)
    assert cfg.action_loss_weight > 1  # B.3


def test_loss_backpropagates_into_every_parameter_used() -> None:
    model = randomize(DeMUSE(CFG))
    model.train()
    terms = diffusion_loss(model, _batch(batch=16), NoiseSchedule(DIFF), DIFF)
    terms.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_split_step_range_equals_one_pass_and_checks_bounds() -> None:
    """SAI's two phases with unchanged conditions reproduce plain sampling exactly."""
    model = randomize(DeMUSE(CFG)).eval()
    sampler = DDIMSampler(model, DIFF)
    cond = _conditions()
    x0 = sampler.initial_noise(cond, generator=torch.Generator().manual_seed(1))
    full = sampler.run_steps(cond, *x0, 0, sampler.n_evaluations)
    assert torch.equal(full[1], sampler.sample(cond, *x0)[1])
    mid = sampler.run_steps(cond, *x0, 0, 3)
    split = sampler.run_steps(cond, *mid, 3, sampler.n_evaluations)
    assert torch.equal(full[1], split[1]) and torch.equal(full[0], split[0])
    other = _conditions(seed=5)  # a different observation for the second phase changes it
    swapped = sampler.run_steps(other, *mid, 3, sampler.n_evaluations)
    assert not torch.allclose(full[1], swapped[1])
    with pytest.raises(ValueError, match="step range"):
        sampler.run_steps(cond, *x0, 2, sampler.n_evaluations + 1)
