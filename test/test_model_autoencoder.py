"""Image autoencoders: a diffusers AutoencoderKL from a local folder, and the built-in one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from demuse_ros.model.autoencoder import (  # noqa: E402
    ConvAutoencoder,
    ConvAutoencoderConfig,
    DiffusersAutoencoder,
    autoencoder_spec,
    build_autoencoder,
    foreground_weights,
    images_to_tensor,
    train_autoencoder,
)
from demuse_ros.model.data import synthetic_episodes  # noqa: E402


def _tiny_vae():
    diffusers = pytest.importorskip(
        "diffusers", reason="loading an AutoencoderKL needs the 'vae' extra (diffusers)"
    )
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
    ).eval()


def test_diffusers_autoencoder_loads_from_a_local_folder(tmp_path: Path) -> None:
    """A small AutoencoderKL saved in the SD-VAE format loads through our code, offline."""
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    ae = DiffusersAutoencoder.from_pretrained(tmp_path / "vae")
    assert (ae.latent_channels, ae.downsample, ae.scale) == (4, 8, 0.5)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        direct = vae.encode(x).latent_dist.mode() * 0.5
        assert z.shape == (2, 4, 4, 4)
        torch.testing.assert_close(z, direct)
        assert ae.decode(z).shape == (2, 3, 32, 32)
    # The checkpoint manifest names the folder; the spec rebuilds the same autoencoder.
    spec = autoencoder_spec(ae)
    assert spec == {"kind": "diffusers", "path": str((tmp_path / "vae").resolve())}
    with torch.no_grad():
        torch.testing.assert_close(build_autoencoder(spec).encode(x), z)


def test_diffusers_folder_problems_are_explained(tmp_path: Path) -> None:
    pytest.importorskip("diffusers", reason="the 'vae' extra (diffusers)")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        DiffusersAutoencoder.from_pretrained(tmp_path)
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "bin", safe_serialization=False)  # pickled weights
    with pytest.raises(ValueError, match=r"pickled \.bin weights are not loaded"):
        DiffusersAutoencoder.from_pretrained(tmp_path / "bin")


def test_builtin_autoencoder_learns_and_scales_its_latents() -> None:
    frames = np.concatenate([ep.rgb for ep in synthetic_episodes(2, 32, ticks=8)])
    ae = ConvAutoencoder(ConvAutoencoderConfig(base_channels=8))
    losses = train_autoencoder(ae, frames, steps=25, batch_size=8, lr=3e-3, progress=False)
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    with torch.no_grad():
        z = ae.encode(images_to_tensor(frames))
    assert z.shape == (len(frames), 4, 4, 4)
    assert z.std().item() == pytest.approx(1.0, rel=0.2)  # SD's recipe: unit-variance latents


def _button_frames(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """32×32 frames of a fixed textured table with a 2×2 red button at a random place."""
    rng = np.random.default_rng(seed)
    table = np.full((32, 32, 3), (180, 140, 100), np.uint8)
    table[::4] = (170, 130, 95)  # a few stripes: a background worth reconstructing
    frames, masks = np.repeat(table[None], n, 0), np.zeros((n, 32, 32), bool)
    for i, (r, c) in enumerate(rng.integers(4, 26, size=(n, 2))):
        frames[i, r : r + 2, c : c + 2] = (230, 30, 30)
        masks[i, r : r + 2, c : c + 2] = True
    return frames, masks


def test_foreground_weights_favour_pixels_unlike_the_background() -> None:
    frames, masks = _button_frames(4)
    x = images_to_tensor(frames)
    w = foreground_weights(x, images_to_tensor(frames).median(0).values, 20.0)
    assert w.shape == (4, 1, 32, 32)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(4))
    m = torch.from_numpy(masks)[:, None]
    assert w[m].min() > 10 * w[~m].max()


def test_foreground_weighted_training_learns() -> None:
    frames, _ = _button_frames(64)
    ae = ConvAutoencoder(ConvAutoencoderConfig(base_channels=8))
    losses = train_autoencoder(
        ae, frames, steps=25, batch_size=8, lr=3e-3, progress=False, foreground_weight=20.0
    )
    assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
