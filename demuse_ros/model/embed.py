"""Heterogeneous embedding layer (paper §3.2, A.1) and the timestep embedder (DiT)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ACTION, FORCE, TIMESTEP_FREQ_DIM, ModelConfig, TokenLayout


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """Transformer sinusoids ``(len(positions), dim)``: sin in the first half, cos in the second."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(np.asarray(positions, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """2-D sinusoids on a ``grid × grid`` lattice, ``(grid², dim)``, row-major (as DiT)."""
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, ys), sincos_1d(dim // 2, xs)], axis=1)


class TimestepEmbedder(nn.Module):
    """Scalar diffusion timestep → ``(B, d)``: sinusoidal features then a 2-layer MLP (DiT)."""

    def __init__(self, hidden_dim: int, freq_dim: int = TIMESTEP_FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        half = freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None]  # (B, freq_dim / 2)
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))  # (B, d)


class HeterogeneousEmbedding(nn.Module):
    """Maps each modality to tokens of width d and concatenates them (paper A.1).

    * RGB: the stacked latent (current frame clean, future frames noised, along
      channels) → patch-``rgb_patch`` projection + learnable 2-D positions
      (initialised with sinusoids, as DiT's fixed ones).
    * Depth (at the latent resolution): patch-``depth_patch`` projection; its
      positions are the RGB position grid average-pooled by depth_patch / rgb_patch,
      so a depth token sits where the RGB tokens it covers sit (A.1: "downsampling
      the RGB positional embeddings by a factor of 4").
    * Force: ``Linear(6, d)`` + a fixed sinusoid at its sequence index.
    * Proprio + future actions: one ``Linear(state + H·A, d)`` token + a fixed
      sinusoid at its sequence index (A.1: "a single conditional token"); with
      ``rgb_summary`` plus ``Linear(C·h·w, d)`` of the current frame's whole latent.
    """

    def __init__(self, cfg: ModelConfig, layout: TokenLayout) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.has_rgb = "rgb" in cfg.modalities
        self.has_depth = "depth" in cfg.modalities
        self.has_force = "force" in cfg.modalities
        if self.has_rgb or self.has_depth:
            grid = torch.tensor(sincos_2d(d, layout.rgb_grid), dtype=torch.float32)  # (G², d)
            self.grid_pos = nn.Parameter(grid.T.reshape(1, d, layout.rgb_grid, layout.rgb_grid))
        if self.has_rgb:
            self.rgb_proj = nn.Conv2d(
                cfg.rgb_in_channels, d, kernel_size=cfg.rgb_patch, stride=cfg.rgb_patch
            )
        if self.has_depth:
            self.depth_pool = cfg.depth_patch // cfg.rgb_patch
            self.depth_proj = nn.Conv2d(1, d, kernel_size=cfg.depth_patch, stride=cfg.depth_patch)
        if self.has_force:
            self.force_proj = nn.Linear(cfg.wrench_in_dim, d)
            pos = sincos_1d(d, np.array([layout.segment(FORCE).start]))
            self.register_buffer(
                "force_pos", torch.tensor(pos, dtype=torch.float32), persistent=False
            )
        self.action_proj = nn.Linear(cfg.action_in_dim, d)
        self.summary_channels = 0
        if self.has_rgb and cfg.rgb_summary:
            self.summary_channels = cfg.latent_channels
            self.rgb_summary = nn.Linear(cfg.latent_channels * cfg.latent_size**2, d)
            nn.init.zeros_(self.rgb_summary.weight)  # starts as the plain model
            nn.init.zeros_(self.rgb_summary.bias)
        pos = sincos_1d(d, np.array([layout.segment(ACTION).start]))
        self.register_buffer("action_pos", torch.tensor(pos, dtype=torch.float32), persistent=False)

    def forward(
        self,
        rgb: torch.Tensor | None,
        depth: torch.Tensor | None,
        wrench: torch.Tensor | None,
        action: torch.Tensor,
    ) -> torch.Tensor:
        """Returns the token sequence ``(B, N, d)`` in canonical order (RGB, depth, force, action).

        Args:
            rgb: ``(B, C·(1+F), h, w)`` stacked latents, or None without RGB.
            depth: ``(B, 1, h, w)`` normalized depth at the latent resolution, or None.
            wrench: ``(B, 6·K)`` normalized force/torque of the last K ticks, or None.
            action: ``(B, state_dim + H·action_dim)``: state, then the (noised) future actions.
        """
        tokens = []
        if self.has_rgb:
            x = self.rgb_proj(rgb) + self.grid_pos  # (B, d, g, g)
            tokens.append(x.flatten(2).transpose(1, 2))  # (B, g², d)
        if self.has_depth:
            pos = F.avg_pool2d(self.grid_pos, self.depth_pool)  # (1, d, g/k, g/k)
            x = self.depth_proj(depth) + pos  # (B, d, g_d, g_d)
            tokens.append(x.flatten(2).transpose(1, 2))  # (B, g_d², d)
        if self.has_force:
            tokens.append((self.force_proj(wrench) + self.force_pos)[:, None])  # (B, 1, d)
        act = self.action_proj(action) + self.action_pos  # (B, d)
        if self.summary_channels:  # the current (clean) frame's latent, read out whole
            act = act + self.rgb_summary(rgb[:, : self.summary_channels].flatten(1))
        tokens.append(act[:, None])  # (B, 1, d)
        return torch.cat(tokens, dim=1)  # (B, N, d)
