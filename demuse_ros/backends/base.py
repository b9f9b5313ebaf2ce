"""The denoiser interface every inference backend implements (DESIGN §7, STYLE §8).

A :class:`Denoiser` runs the DDIM (or DUST) sampler of one model: from the initial
noise through ``n_steps`` denoiser evaluations to the normalized action chunk. The
step range API (:meth:`Denoiser.run_steps`) is what speculative asynchronous inference
needs: steps ``[0, s)`` on a predicted observation, ``[s, n)`` on the real one. Each
backend is its own class; none branches on another's kind.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import NamedTuple

import torch

from demuse_ros.model.config import DiffusionConfig
from demuse_ros.model.diffusion import Conditions, DDIMSampler
from demuse_ros.model.dit import DeMUSE


class BackendUnavailable(RuntimeError):
    """A backend (or one of its options) cannot run here; the message names the alternatives."""


class DenoiseState(NamedTuple):
    """Where a chunk's denoising stands: the noisy streams after ``step`` evaluations."""

    x_v: torch.Tensor | None  # (B, F·C, h, w) future RGB latents; None without RGB
    x_a: torch.Tensor  # (B, H, A) normalized future actions
    step: int  # denoiser evaluations done (0 = pure noise, n_steps = done)


class Denoiser(abc.ABC):
    """One model's sampler on one backend.

    Attributes:
        name: The backend's name as :func:`~demuse_ros.backends.make_denoiser` takes it.
        n_steps: Denoiser evaluations per chunk (DDIM steps × DUST q).
        batch: The batch size the backend was built for (graph backends have fixed shapes).
        device: Where the state tensors live.
    """

    name: str = ""

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
        if batch < 1:
            raise ValueError(f"batch = {batch}: must be >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        if cache_experts is None:
            cache_experts = self.cfg.router == "noise"
        self.sampler = DDIMSampler(self.model, diffusion, steps, dust_q, cache_experts)
        self.n_steps: int = self.sampler.n_evaluations
        self.q = self.sampler.q
        self.batch = batch

    # ------------------------------------------------------------ the interface
    def initial_noise(
        self, cond: Conditions, generator: torch.Generator | None = None
    ) -> DenoiseState:
        """The state at t = T: Gaussian noise drawn as :meth:`DDIMSampler.initial_noise`
        draws it (actions first, then the future latents), on the generator's device, so
        every backend starts a seeded chunk from the same numbers."""
        cfg = self.cfg
        B = cond.state.shape[0]
        dev = generator.device if generator is not None else cond.state.device
        x_a = torch.randn((B, cfg.action_horizon, cfg.action_dim), device=dev, generator=generator)
        x_v = None
        if "rgb" in cfg.modalities:
            h = cfg.latent_size
            x_v = torch.randn((B, cfg.rgb_out_channels, h, h), device=dev, generator=generator)
            x_v = x_v.to(self.device)
        return DenoiseState(x_v, x_a.to(self.device), 0)

    def run_steps(
        self, cond: Conditions, state: DenoiseState, start: int, stop: int
    ) -> DenoiseState:
        """Denoiser evaluations ``start .. stop - 1`` from ``state`` (which must be at ``start``).

        ``cond`` may change between calls (speculative inference); with DUST the range
        must start and stop on multiples of q.
        """
        self.check_range(start, stop)
        if state.step != start:
            raise ValueError(f"the state is at step {state.step}, the range starts at {start}")
        if cond.state.shape[0] != self.batch:
            raise ValueError(
                f"batch {cond.state.shape[0]}: this {self.name} denoiser was built for batch "
                f"{self.batch} (fixed shapes); pass batch= to make_denoiser"
            )
        if start == stop:
            return state
        return self._run(cond, state, start, stop)

    def sample(self, cond: Conditions, generator: torch.Generator | None = None) -> DenoiseState:
        """A whole chunk: ``run_steps`` over all ``n_steps`` from fresh noise."""
        return self.run_steps(cond, self.initial_noise(cond, generator), 0, self.n_steps)

    def actions(self, state: DenoiseState) -> torch.Tensor:
        """The normalized actions ``(B, H, A)`` (final once ``state.step == n_steps``)."""
        return state.x_a

    def predicted_latents(self, state: DenoiseState) -> torch.Tensor | None:
        """The model's future RGB latents ``(B, F·C, h, w)``, or None without RGB."""
        return state.x_v

    def noise(
        self, cond: Conditions, state: DenoiseState
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The noise predictions ``(eps_rgb | None, eps_action (B, H·A))`` of evaluation
        ``state.step`` (no update): for parity checks between backends."""
        if not 0 <= state.step < self.n_steps:
            raise ValueError(f"state at step {state.step}: evaluations are 0 .. {self.n_steps - 1}")
        return self._noise(cond, state)

    def prepare(self, ranges: Iterable[tuple[int, int]] = ()) -> None:  # noqa: B027
        """Builds whatever the step ranges need (graphs, sessions, CUDA graphs) before a
        real-time loop starts, so no call there pays for it. The full chunk is always
        prepared; pass the speculative split ranges too, e.g. ``[(0, s), (s, n)]``."""

    def dummy_conditions(self) -> Conditions:
        """Zero conditions of the built batch size (for warm-up and graph building)."""
        cfg, B, dev = self.cfg, self.batch, self.device
        h, mods = cfg.latent_size, cfg.modalities
        return Conditions(
            torch.zeros(B, cfg.latent_channels, h, h, device=dev) if "rgb" in mods else None,
            torch.zeros(B, 1, h, h, device=dev) if "depth" in mods else None,
            torch.zeros(B, 6, device=dev) if "force" in mods else None,
            torch.zeros(B, cfg.state_dim, device=dev),
            torch.zeros(B, dtype=torch.long, device=dev),
        )

    def check_range(self, start: int, stop: int) -> None:
        n = self.n_steps
        if not 0 <= start <= stop <= n:
            raise ValueError(f"step range [{start}, {stop}) must lie within [0, {n}]")
        if start % self.q or (stop % self.q and stop != n):
            raise ValueError(
                f"with DUST q={self.q} a step range must start and stop on multiples of q"
            )

    def describe(self) -> str:
        """One line: backend and options (for logs and the bench)."""
        return self.name

    # ------------------------------------------------------------ per backend
    @abc.abstractmethod
    def _run(self, cond: Conditions, state: DenoiseState, start: int, stop: int) -> DenoiseState:
        """``run_steps`` after validation (a non-empty range)."""

    @abc.abstractmethod
    def _noise(
        self, cond: Conditions, state: DenoiseState
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``noise`` after validation."""
