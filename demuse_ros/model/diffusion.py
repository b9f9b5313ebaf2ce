"""DDPM training objective and deterministic DDIM / DUST sampling (paper §3.5, B.3).

* Forward process: DDPM with a linear beta schedule over ``train_timesteps`` (1000).
* Loss (Eq. 3): ε-prediction MSE on the future RGB latents and the future
  actions, weighted per modality (action weight > 1); the current frame, depth,
  force and proprio state are clean conditions and carry no loss; plus the MoE
  load-balancing term (Eq. 4). Eq. 3's variational-bound term trains a learned
  variance in DiT/IDDPM; deterministic DDIM sampling with ε-prediction has no
  variance to learn, so it is left out.
* DUST (seeds 001/003): vision and action timesteps drawn independently in
  training; at inference vision is stepped ``q``× as often as the actions
  (asynchronous joint sampling). ``q = 1`` is plain synchronous DDIM.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import DiffusionConfig
from .dit import DeMUSE, ExpertCache, StepCache


class ModelBatch(NamedTuple):
    """One normalized training batch, clean targets included (see :mod:`.data`)."""

    rgb_latents: torch.Tensor | None  # (B, C·(1+F), h, w): current frame, then future frames
    depth: torch.Tensor | None  # (B, 1, h, w) at the latent resolution
    wrench: torch.Tensor | None  # (B, 6)
    state: torch.Tensor  # (B, state_dim)
    actions: torch.Tensor  # (B, H, action_dim) future actions
    task: torch.Tensor  # (B,) int64


class Conditions(NamedTuple):
    """What sampling is conditioned on: the observation at the current tick, normalized."""

    rgb_latent: torch.Tensor | None  # (B, C, h, w) current frame
    depth: torch.Tensor | None  # (B, 1, h, w)
    wrench: torch.Tensor | None  # (B, 6)
    state: torch.Tensor  # (B, state_dim)
    task: torch.Tensor  # (B,)


class LossTerms(NamedTuple):
    total: torch.Tensor
    rgb: torch.Tensor  # ε-MSE of the future latents (0 without RGB)
    action: torch.Tensor  # ε-MSE of the future actions
    aux: torch.Tensor  # MoE load balancing (sum over MoE layers)


class NoiseSchedule:
    """Linear-beta DDPM schedule; ``alphas_cumprod[t]`` = ᾱ_t for t in [0, T)."""

    def __init__(self, cfg: DiffusionConfig, device: torch.device | str = "cpu") -> None:
        self.train_timesteps = cfg.train_timesteps
        betas = torch.linspace(
            cfg.beta_start, cfg.beta_end, cfg.train_timesteps, dtype=torch.float64
        )
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0).to(device=device, dtype=torch.float32)

    def _abar(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return self.alphas_cumprod[t].reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): ``sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε`` with ``t (B,)``."""
        abar = self._abar(t, x0.ndim)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def ddim_timesteps(self, n_steps: int) -> list[int]:
        """``n_steps`` timesteps from T−1 down, evenly spaced ("trailing" spacing).

        Integer arithmetic, so the grid of ``n·q`` steps contains the grid of ``n``
        steps exactly (DUST needs the two streams to meet at the action steps).
        """
        T = self.train_timesteps
        return [T * (n_steps - k) // n_steps - 1 for k in range(n_steps)]

    def ddim_step(
        self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, clip: float = 0.0
    ) -> torch.Tensor:
        """Deterministic DDIM (η = 0) from ``t`` to ``t_prev`` (−1: ᾱ = 1, the clean end).

        With ``clip > 0`` the x0 estimate is clipped to ±clip and ε recomputed from it (as
        diffusers' DDIMScheduler does), which keeps the first, noisiest steps bounded.
        """
        abar = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else abar.new_ones(())
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        if clip > 0:
            x0 = x0.clamp(-clip, clip)
            eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps


def diffusion_loss(
    model: DeMUSE,
    batch: ModelBatch,
    schedule: NoiseSchedule,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """The joint denoising loss (paper Eq. 3 + Eq. 4) on one batch.

    ``generator`` fixes timesteps and noise (validation uses a fixed one).
    """
    B, dev = batch.state.shape[0], batch.state.device
    T = schedule.train_timesteps
    t_v = torch.randint(0, T, (B,), device=dev, generator=generator)
    t_a = torch.randint(0, T, (B,), device=dev, generator=generator) if cfg.dust else t_v
    noise_a = torch.randn(batch.actions.shape, device=dev, generator=generator)
    noisy_a = schedule.add_noise(batch.actions, noise_a, t_a)  # (B, H, A)
    action_in = torch.cat([batch.state, noisy_a.flatten(1)], dim=1)  # (B, S + H·A)
    rgb_in = noise_v = None
    if batch.rgb_latents is not None:
        c = model.cfg.latent_channels
        current, future = batch.rgb_latents[:, :c], batch.rgb_latents[:, c:]
        noise_v = torch.randn(future.shape, device=dev, generator=generator)
        rgb_in = torch.cat([current, schedule.add_noise(future, noise_v, t_v)], dim=1)
    out = model(rgb_in, batch.depth, batch.wrench, action_in, t_v, t_a, batch.task)
    loss_a = F.mse_loss(out.eps_action, noise_a.flatten(1))
    loss_v = F.mse_loss(out.eps_rgb, noise_v) if noise_v is not None else loss_a.new_zeros(())
    total = (
        cfg.action_loss_weight * loss_a + cfg.rgb_loss_weight * loss_v
    ) + cfg.aux_loss_weight * out.aux_loss
    return LossTerms(total, loss_v.detach(), loss_a.detach(), out.aux_loss.detach())


class DDIMSampler:
    """Deterministic DDIM over the joint (future RGB latents, future actions) target.

    With ``dust_q = q > 1`` this is DUST's asynchronous joint sampling (seed 001
    §4.3, Algorithm 2): the vision stream takes ``q·n`` DDIM steps, the action
    stream ``n``; the actions hold their timestep for ``q`` vision steps and then
    take one step with the noise predicted at the last of them, so each action
    update sees the most refined future frames. ``q = 1`` is plain DDIM.

    Caching (inference; the model's weights must not change afterwards):
    ``cache_steps`` precomputes, per task batch, everything a step derives from its
    timesteps and the task (contexts, AdaMN modulations; :class:`~.dit.StepCache`),
    kept for the last ``_MEMO`` task batches; ``cache_experts`` (MoDE, noise router
    only) adds the fused experts of every step. Results equal the uncached ones.
    """

    _MEMO = 8

    def __init__(
        self,
        model: DeMUSE,
        cfg: DiffusionConfig,
        steps: int | None = None,
        dust_q: int | None = None,
        cache_experts: bool = False,
        cache_steps: bool = True,
    ) -> None:
        self.model = model
        dev = next(model.parameters()).device
        self.schedule = NoiseSchedule(cfg, dev)
        self.steps = steps or cfg.ddim_steps
        self.q = dust_q or cfg.dust_q
        if self.steps * self.q > cfg.train_timesteps:
            raise ValueError(
                f"steps × dust_q = {self.steps * self.q} exceeds the {cfg.train_timesteps} "
                "training timesteps; use fewer steps"
            )
        self.clip_action, self.clip_rgb = cfg.clip_action_x0, cfg.clip_rgb_x0
        self.t_action = self.schedule.ddim_timesteps(self.steps)
        self.t_vision = self.schedule.ddim_timesteps(self.steps * self.q)
        self.cache_steps = cache_steps or cache_experts
        self.experts: list[ExpertCache | None] = [None] * len(self.t_vision)
        if cache_experts:
            combos: dict[int, dict] = {}
            self.experts = [
                model.build_expert_cache(tv, self.t_action[j // self.q], combos)
                for j, tv in enumerate(self.t_vision)
            ]
        self._memo: dict[tuple, list[StepCache]] = {}

    def step_caches(self, task: torch.Tensor) -> list[StepCache]:
        """The per-step caches for this task batch (built on first use)."""
        key = (tuple(task.tolist()), str(task.device))
        if key not in self._memo:
            if len(self._memo) >= self._MEMO:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = [
                self.model.build_step_cache(tv, self.t_action[j // self.q], task, self.experts[j])
                for j, tv in enumerate(self.t_vision)
            ]
        return self._memo[key]

    @property
    def n_evaluations(self) -> int:
        """Denoiser forwards per chunk."""
        return len(self.t_vision)

    @torch.no_grad()
    def sample(
        self,
        cond: Conditions,
        noise_rgb: torch.Tensor | None = None,
        noise_action: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Denoises one chunk: ``(future latents (B, F·C, h, w) | None, actions (B, H, A))``.

        Given the same noise (passed in, or from a seeded ``generator``) the result
        is deterministic (η = 0).
        """
        x_v, x_a = self.initial_noise(cond, noise_rgb, noise_action, generator)
        return self.run_steps(cond, x_v, x_a, 0, self.n_evaluations)

    def initial_noise(
        self,
        cond: Conditions,
        noise_rgb: torch.Tensor | None = None,
        noise_action: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The starting point ``(x_v | None, x_a)`` at t = T (given, or drawn)."""
        cfg = self.model.cfg
        B, dev = cond.state.shape[0], cond.state.device
        x_a = noise_action
        if x_a is None:
            shape = (B, cfg.action_horizon, cfg.action_dim)
            x_a = torch.randn(shape, device=dev, generator=generator)
        x_v = None  # the future RGB latents, when the model sees RGB
        if cond.rgb_latent is not None:
            h = cfg.latent_size
            x_v = noise_rgb
            if x_v is None:
                x_v = torch.randn((B, cfg.rgb_out_channels, h, h), device=dev, generator=generator)
        return x_v, x_a

    @torch.no_grad()
    def run_steps(
        self,
        cond: Conditions,
        x_v: torch.Tensor | None,
        x_a: torch.Tensor,
        start: int,
        stop: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Denoiser evaluations ``start .. stop - 1`` of the schedule from ``(x_v, x_a)``.

        ``run_steps(c, *initial_noise(c), 0, n_evaluations)`` is :meth:`sample`.
        Splitting the range and changing ``cond`` between the parts is speculative
        asynchronous inference (seed 004 §4.5): the first part on a predicted
        observation, the rest on the real one. With DUST (``q > 1``) the split must
        fall on an action step (a multiple of ``q``).
        """
        n_v, n_a = len(self.t_vision), len(self.t_action)
        if not 0 <= start <= stop <= n_v:
            raise ValueError(f"step range [{start}, {stop}) must lie within [0, {n_v}]")
        if start % self.q or (stop % self.q and stop != n_v):
            raise ValueError(
                f"with DUST q={self.q} a step range must start and stop on multiples of q"
            )
        model, sch = self.model, self.schedule
        B, dev = cond.state.shape[0], cond.state.device
        caches = self.step_caches(cond.task) if self.cache_steps else None
        for j in range(start, stop):
            tv = self.t_vision[j]
            i = j // self.q
            ta = self.t_action[i]
            rgb_in = None if x_v is None else torch.cat([cond.rgb_latent, x_v], dim=1)
            out = model(
                rgb_in,
                cond.depth,
                cond.wrench,
                torch.cat([cond.state, x_a.flatten(1)], dim=1),
                torch.full((B,), tv, device=dev),
                torch.full((B,), ta, device=dev),
                cond.task,
                caches[j] if caches is not None else None,
            )
            if x_v is not None:
                tv_next = self.t_vision[j + 1] if j + 1 < n_v else -1
                x_v = sch.ddim_step(x_v, out.eps_rgb, tv, tv_next, self.clip_rgb)
            if (j + 1) % self.q == 0:
                eps_a = out.eps_action.reshape(x_a.shape)
                ta_next = self.t_action[i + 1] if i + 1 < n_a else -1
                x_a = sch.ddim_step(x_a, eps_a, ta, ta_next, self.clip_action)
        return x_v, x_a
