"""The observation → action-chunk policy on any backend.

:class:`BackendPolicy` is :class:`~demuse_ros.model.policy.DeMUSEPolicy` with the
sampler replaced by a :class:`~.base.Denoiser`: the same :class:`BatchEncoder`, the same
``predict`` signature and output (``backend="torch"`` gives identical numbers), plus the
step-range API that speculative asynchronous inference uses::

    policy = BackendPolicy.load("runs/cpu", backend="onnxruntime")
    cond = policy.conditions(rgb, depth_m, wrench, state, [task])   # predicted observation
    x = policy.run_steps(cond, policy.initial_noise(cond), 0, s)
    cond = policy.conditions(...)                                    # the real one
    x = policy.run_steps(cond, x, s, policy.n_steps)
    chunk = policy.unnormalize(x, cond)                              # (B, H, A), SI units
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from demuse_ros.model.checkpoint import PolicyCheckpoint, load_policy
from demuse_ros.model.diffusion import Conditions
from demuse_ros.model.policy import BatchEncoder

from . import make_denoiser
from .base import Denoiser, DenoiseState


class BackendPolicy:
    """A loaded checkpoint + a denoiser of any backend: observation → chunk in SI units."""

    def __init__(
        self,
        checkpoint: PolicyCheckpoint,
        backend: str = "torch",
        device: str | torch.device | None = None,
        **options: Any,
    ) -> None:
        if device is not None:
            options["device"] = device
        self.checkpoint = checkpoint
        self.denoiser: Denoiser = make_denoiser(backend, checkpoint, **options)
        cfg = checkpoint.config
        ae = checkpoint.autoencoder
        enc_device = self.denoiser.device
        if ae is not None:
            ae.to(enc_device).eval()
        self.encoder = BatchEncoder(cfg.model, checkpoint.normalization, ae, enc_device)

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], backend: str = "torch", **options: Any
    ) -> BackendPolicy:
        return cls(load_policy(folder), backend, **options)

    @property
    def n_steps(self) -> int:
        return self.denoiser.n_steps

    @property
    def backend(self) -> str:
        return self.denoiser.name

    # ------------------------------------------------------------ step-range API
    @torch.inference_mode()
    def conditions(
        self,
        rgb: np.ndarray | None,
        depth_m: np.ndarray | None,
        wrench: np.ndarray | None,
        state: np.ndarray,
        task: Sequence[int],
    ) -> Conditions:
        """Normalized, encoded conditions (see :meth:`BatchEncoder.conditions`)."""
        return self.encoder.conditions(rgb, depth_m, wrench, state, task)

    def initial_noise(
        self, cond: Conditions, generator: torch.Generator | None = None
    ) -> DenoiseState:
        return self.denoiser.initial_noise(cond, generator)

    @torch.inference_mode()
    def run_steps(
        self, cond: Conditions, state: DenoiseState, start: int, stop: int
    ) -> DenoiseState:
        return self.denoiser.run_steps(cond, state, start, stop)

    def prepare(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """See :meth:`Denoiser.prepare`: call before the real-time loop."""
        self.denoiser.prepare(ranges)

    def unnormalize(self, state: DenoiseState, cond: Conditions) -> np.ndarray:
        """The state's actions ``(B, H, action_dim)`` in the dataset's units; ``cond``
        are the conditions it was finished on (:meth:`BatchEncoder.chunk`)."""
        return self.encoder.chunk(self.denoiser.actions(state), cond)

    # ------------------------------------------------------------ one call
    @torch.inference_mode()
    def predict(
        self,
        rgb: np.ndarray | None,
        depth_m: np.ndarray | None,
        wrench: np.ndarray | None,
        state: np.ndarray,
        task: Sequence[int],
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Denoises one chunk: actions ``(B, H, action_dim)`` in the dataset's units
        (as :meth:`DeMUSEPolicy.predict`)."""
        cond = self.encoder.conditions(rgb, depth_m, wrench, state, task)
        return self.unnormalize(self.denoiser.sample(cond, generator), cond)
