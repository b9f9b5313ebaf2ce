"""Image autoencoders: RGB (B, 3, H, W) in [−1, 1] ↔ scaled latents (B, C, H/8, W/8).

Two kinds behind one interface (``encode``, ``decode``, ``latent_channels``,
``downsample``), chosen by name (``AUTOENCODERS``):

* ``conv``: a small convolutional autoencoder this project trains itself
  (``demuse train-autoencoder``), for the ``cpu`` preset and the twin;
* ``diffusers``: a Stable-Diffusion-format ``AutoencoderKL`` loaded from a local
  folder (paper A.1: "a pre-trained VAE encoder"). Users bring the weights; only
  safetensors files are accepted (``pip install '.[vae]'``).

Latents are multiplied by ``scaling_factor`` so they have roughly unit variance
(SD-VAE ships 0.18215; the built-in one measures it after training).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from demuse_ros.config import from_dict, param, to_dict, validate_fields

from .config import AE_DOWNSAMPLE

log = logging.getLogger(__name__)


def images_to_tensor(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 → ``(..., 3, H, W)`` float32 in [−1, 1]."""
    x = torch.as_tensor(rgb)
    return x.movedim(-1, -3).float() / 127.5 - 1.0


@dataclass(frozen=True)
class ConvAutoencoderConfig:
    latent_channels: int = param(4, doc="latent channels", range=(1, 64))
    base_channels: int = param(
        16, doc="channels after the first conv; doubled at each of the 3 downsamplings (max 4×)"
    )

    def __post_init__(self) -> None:
        validate_fields(self)


class ConvAutoencoder(nn.Module):
    """Three stride-2 stages down (8×), three nearest-upsample stages back; SiLU, no norm."""

    downsample = AE_DOWNSAMPLE

    def __init__(self, cfg: ConvAutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent_channels = cfg.latent_channels
        c = [cfg.base_channels * m for m in (1, 2, 4, 4)]
        enc: list[nn.Module] = [nn.Conv2d(3, c[0], 3, padding=1), nn.SiLU()]
        for i in range(3):
            enc += [nn.Conv2d(c[i], c[i + 1], 4, stride=2, padding=1), nn.SiLU()]
            enc += [nn.Conv2d(c[i + 1], c[i + 1], 3, padding=1), nn.SiLU()]
        enc.append(nn.Conv2d(c[3], cfg.latent_channels, 1))
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c[3], 3, padding=1), nn.SiLU()]
        for i in range(3, 0, -1):
            dec += [nn.Upsample(scale_factor=2, mode="nearest")]
            dec += [nn.Conv2d(c[i], c[i - 1], 3, padding=1), nn.SiLU()]
            dec += [nn.Conv2d(c[i - 1], c[i - 1], 3, padding=1), nn.SiLU()]
        dec.append(nn.Conv2d(c[0], 3, 3, padding=1))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.register_buffer("scaling_factor", torch.ones(()))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images) * self.scaling_factor  # (B, C, H/8, W/8)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents / self.scaling_factor)  # (B, 3, H, W)


class DiffusersAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL``; encodes to the posterior mode (deterministic)."""

    def __init__(self, vae: nn.Module, path: str) -> None:
        super().__init__()
        self.vae, self.path = vae, path
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scale = float(cfg.scaling_factor)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> DiffusersAutoencoder:
        """Loads ``AutoencoderKL.save_pretrained`` output (e.g. the ``vae`` folder of SD).

        Raises:
            ImportError: diffusers is not installed.
            FileNotFoundError / ValueError: The folder is not a safetensors AutoencoderKL.
        """
        try:
            from diffusers import AutoencoderKL
        except ImportError as err:
            raise ImportError(
                "loading a diffusers AutoencoderKL needs diffusers: pip install 'demuse_ros[vae]'"
            ) from err
        folder = Path(path).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder}: no config.json; point at a folder written by "
                "AutoencoderKL.save_pretrained (the 'vae' subfolder of a Stable Diffusion model)"
            )
        if not any(folder.glob("*.safetensors")):
            raise ValueError(
                f"{folder}: no .safetensors weights; pickled .bin weights are not loaded; "
                "convert them with diffusers (load, then save_pretrained(safe_serialization=True))"
            )
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        return cls(vae.eval(), str(folder))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(images).latent_dist.mode()
        return (z - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale + self.shift).sample


def _build_conv(spec: dict[str, Any]) -> ConvAutoencoder:
    return ConvAutoencoder(from_dict(ConvAutoencoderConfig, spec.get("config", {})))


def _build_diffusers(spec: dict[str, Any]) -> DiffusersAutoencoder:
    return DiffusersAutoencoder.from_pretrained(spec["path"])


#: autoencoder kind -> builder from its spec (the ``autoencoder`` entry of config.json).
AUTOENCODERS = {"conv": _build_conv, "diffusers": _build_diffusers}


def build_autoencoder(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("kind")
    if kind not in AUTOENCODERS:
        raise ValueError(f"autoencoder kind {kind!r}; known: {', '.join(AUTOENCODERS)}")
    return AUTOENCODERS[kind](spec)


def autoencoder_spec(autoencoder: nn.Module) -> dict[str, Any]:
    """The JSON description :func:`build_autoencoder` rebuilds it from (weights aside)."""
    if isinstance(autoencoder, ConvAutoencoder):
        return {"kind": "conv", "config": to_dict(autoencoder.cfg)}
    if isinstance(autoencoder, DiffusersAutoencoder):
        return {"kind": "diffusers", "path": autoencoder.path}
    raise TypeError(f"not a known autoencoder: {type(autoencoder).__name__}")


@torch.no_grad()
def latent_scaling_factor(encoder: ConvAutoencoder, images: torch.Tensor) -> float:
    """1 / std of the unscaled latents of ``images`` (SD's recipe for 0.18215)."""
    return float(1.0 / encoder.encoder(images).std().clamp_min(1e-6))


def foreground_weights(x: torch.Tensor, background: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + weight·|x − background|`` (summed over channels), scaled
    to mean 1 per image: pixels unlike the static background (the arm, the fixture) count
    more than the table they cover a few of."""
    w = 1.0 + weight * (x - background).abs().sum(-3, keepdim=True)
    return w / w.mean(dim=(-3, -2, -1), keepdim=True)


def train_autoencoder(
    model: ConvAutoencoder,
    images: np.ndarray,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    foreground_weight: float = 0.0,
) -> list[float]:
    """Fits ``model`` to ``images (N, H, W, 3) uint8`` with an L1 + MSE loss; returns losses.

    With ``foreground_weight`` > 0 each pixel's loss is weighted by
    :func:`foreground_weights` against the per-pixel median of the images (the static
    scene). A plain loss lets a small, moving object (a 3×4-pixel button in a 64×64
    frame) vanish from the latents, and with it what a policy must localize.
    Afterwards ``model.scaling_factor`` is set so the latents have unit variance.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    data = images_to_tensor(images)  # (N, 3, H, W)
    background = None
    if foreground_weight > 0:
        pick = torch.randperm(len(data), generator=gen)[:2000]
        background = data[pick].median(dim=0).values
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    losses = []
    bar = tqdm(range(steps), desc="autoencoder", disable=not progress)
    for _ in bar:
        x = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        recon = model.decoder(model.encoder(x))
        err = (recon - x) ** 2 + (recon - x).abs()
        if background is not None:
            err = err * foreground_weights(x, background, foreground_weight)
        loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    sample = data[torch.randperm(len(data), generator=gen)[:256]]
    model.scaling_factor.fill_(latent_scaling_factor(model, sample))
    log.info("autoencoder: final loss %.4f, latent scaling %.4f", losses[-1], model.scaling_factor)
    return losses
