"""Checkpoints: safetensors weights + a versioned JSON manifest + normalization statistics.

A policy checkpoint is a directory (``models/README.md``)::

    config.json              format, format_version, the PolicyConfig, the autoencoder,
                             and the SHA-256 of every weights file
    model.safetensors        denoiser weights (EMA weights for deployment)
    autoencoder.safetensors  built-in autoencoder weights (absent for a diffusers VAE,
                             whose local folder config.json names)
    normalization.json       Z-score statistics of state, actions, wrench and depth

Nothing is pickled: weights are safetensors, everything else JSON. Loading checks
the format and version, the hashes (a corrupted or truncated file is named, not
half-loaded), and every tensor name and shape against the model the config builds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from demuse_ros import __version__
from demuse_ros.config import ConfigError, from_dict, to_dict

from .config import PolicyConfig
from .data import NormalizationStats

FORMAT_VERSION = 1
POLICY_FORMAT = "demuse-policy"
AUTOENCODER_FORMAT = "demuse-autoencoder"
MANIFEST = "config.json"
MODEL_WEIGHTS = "model.safetensors"
AE_WEIGHTS = "autoencoder.safetensors"
NORMALIZATION = "normalization.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is; the message says what to do."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> str:
    """Writes ``tensors`` as safetensors (contiguous CPU copies); returns the file's SHA-256."""
    path = Path(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    return _sha256(path)


def load_weights(
    path: str | os.PathLike[str], sha256: str | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Reads a safetensors file, first checking its SHA-256 when one is given.

    Raises:
        CheckpointError: Missing, corrupted (hash mismatch) or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file is missing")
    if sha256 is not None and _sha256(path) != sha256:
        raise CheckpointError(
            f"{path}: SHA-256 does not match the one recorded in {MANIFEST}; the file is "
            "corrupted or was replaced; copy the checkpoint again"
        )
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``module`` after checking every name and shape.

    Raises:
        CheckpointError: Listing missing, unexpected and mis-shaped tensors.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{what}: {', '.join(items[:5])}{more}")
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not fit the model its config builds ({'; '.join(problems)})"
            "; the weights and config.json come from different runs or code versions"
        )
    module.load_state_dict(state)


def write_manifest(folder: Path, fmt: str, body: dict[str, Any]) -> None:
    manifest = {"format": fmt, "format_version": FORMAT_VERSION, "demuse_ros": __version__}
    (folder / MANIFEST).write_text(json.dumps({**manifest, **body}, indent=1))


def read_manifest(folder: str | os.PathLike[str], fmt: str) -> dict[str, Any]:
    """Reads and checks ``config.json`` of a checkpoint of format ``fmt``.

    Raises:
        CheckpointError: Missing folder or file, invalid JSON, another format, or a version
            this code does not read.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}; point at a checkpoint directory")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else None
        raise CheckpointError(f"{path}: format is {got!r}, expected {fmt!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade demuse_ros" if isinstance(version, int) and version > 1 else "re-export it"
        raise CheckpointError(
            f"{path}: format_version {version!r}; this demuse_ros reads version "
            f"{FORMAT_VERSION}; {hint}"
        )
    return data


# ------------------------------------------------------------ policy checkpoints
@dataclass
class PolicyCheckpoint:
    config: PolicyConfig
    model: nn.Module  # DeMUSE in eval mode
    normalization: NormalizationStats
    autoencoder: nn.Module | None  # None when the model has no RGB
    manifest: dict[str, Any]


def save_policy(
    folder: str | os.PathLike[str],
    model_state: Mapping[str, torch.Tensor],
    config: PolicyConfig,
    normalization: NormalizationStats,
    autoencoder: nn.Module | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes a policy checkpoint directory (created if needed) and returns it."""
    from .autoencoder import autoencoder_spec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {MODEL_WEIGHTS: save_weights(folder / MODEL_WEIGHTS, model_state)}
    ae_spec = None
    if autoencoder is not None:
        ae_spec = autoencoder_spec(autoencoder)
        if ae_spec["kind"] == "conv":
            hashes[AE_WEIGHTS] = save_weights(folder / AE_WEIGHTS, autoencoder.state_dict())
    normalization.save(folder / NORMALIZATION)
    body = {
        "policy": to_dict(config),
        "autoencoder": ae_spec,
        "weights_sha256": hashes,
        **(extra or {}),
    }
    write_manifest(folder, POLICY_FORMAT, body)
    return folder


def load_policy(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> PolicyCheckpoint:
    """Loads a policy checkpoint; the model comes back in eval mode on ``device``.

    Raises:
        CheckpointError: Any inconsistency, with the file and what to do.
    """
    from .autoencoder import build_autoencoder
    from .dit import DeMUSE

    folder = Path(folder)
    manifest = read_manifest(folder, POLICY_FORMAT)
    try:
        config = from_dict(PolicyConfig, manifest.get("policy", {}), source=str(folder / MANIFEST))
    except ConfigError as err:
        raise CheckpointError(f"invalid policy config: {err}") from err
    hashes = manifest.get("weights_sha256") or {}
    model = DeMUSE(config.model)
    load_state_strict(
        model, load_weights(folder / MODEL_WEIGHTS, hashes.get(MODEL_WEIGHTS)), str(folder)
    )
    try:
        normalization = NormalizationStats.load(folder / NORMALIZATION)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / NORMALIZATION}: {err}") from err
    autoencoder = None
    spec = manifest.get("autoencoder")
    if "rgb" in config.model.modalities:
        if not spec:
            raise CheckpointError(f"{folder}: the model uses RGB but names no autoencoder")
        autoencoder = build_autoencoder(spec)
        if spec["kind"] == "conv":
            state = load_weights(folder / AE_WEIGHTS, hashes.get(AE_WEIGHTS))
            load_state_strict(autoencoder, state, str(folder / AE_WEIGHTS))
        check_autoencoder_fits(autoencoder, config, str(folder))
        autoencoder.to(device).eval()
    return PolicyCheckpoint(config, model.to(device).eval(), normalization, autoencoder, manifest)


def check_autoencoder_fits(autoencoder: Any, config: PolicyConfig, source: str) -> None:
    """Raises CheckpointError unless the autoencoder's latent matches the model's."""
    want = config.model.latent_channels
    if autoencoder.latent_channels != want or autoencoder.downsample != 8:
        raise CheckpointError(
            f"{source}: the autoencoder gives {autoencoder.latent_channels} latent channels at "
            f"{autoencoder.downsample}× downsampling; the model needs {want} at 8×; set "
            "model.latent_channels or use another autoencoder"
        )


# ------------------------------------------------------------ autoencoder checkpoints
def save_autoencoder(folder: str | os.PathLike[str], autoencoder: nn.Module) -> Path:
    """Writes a built-in autoencoder as its own checkpoint directory."""
    from .autoencoder import autoencoder_spec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sha = save_weights(folder / AE_WEIGHTS, autoencoder.state_dict())
    body = {"autoencoder": autoencoder_spec(autoencoder), "weights_sha256": {AE_WEIGHTS: sha}}
    write_manifest(folder, AUTOENCODER_FORMAT, body)
    return folder


def load_autoencoder_checkpoint(folder: str | os.PathLike[str]) -> nn.Module:
    """Loads a built-in autoencoder checkpoint (eval mode, CPU)."""
    from .autoencoder import build_autoencoder

    folder = Path(folder)
    manifest = read_manifest(folder, AUTOENCODER_FORMAT)
    model = build_autoencoder(manifest["autoencoder"])
    state = load_weights(folder / AE_WEIGHTS, manifest["weights_sha256"].get(AE_WEIGHTS))
    load_state_strict(model, state, str(folder / AE_WEIGHTS))
    return model.eval()


def load_autoencoder(path: str | os.PathLike[str]) -> nn.Module:
    """Any autoencoder a user may point at, in eval mode on the CPU:

    * a diffusers ``AutoencoderKL`` folder (``diffusion_pytorch_model.safetensors``);
    * a built-in autoencoder checkpoint (``demuse train-autoencoder``);
    * a policy checkpoint, whose autoencoder is reused.

    Raises:
        CheckpointError: None of these, with what was found.
    """
    from .autoencoder import DiffusersAutoencoder, build_autoencoder

    folder = Path(path)
    if (folder / "diffusion_pytorch_model.safetensors").is_file():
        return DiffusersAutoencoder.from_pretrained(folder)
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(
            f"{folder}: not an autoencoder: expected a diffusers AutoencoderKL folder, a "
            "'demuse train-autoencoder' output or a policy checkpoint"
        )
    fmt = json.loads((folder / MANIFEST).read_text()).get("format")
    if fmt != POLICY_FORMAT:
        return load_autoencoder_checkpoint(folder)
    manifest = read_manifest(folder, POLICY_FORMAT)
    if not manifest.get("autoencoder"):
        raise CheckpointError(f"{folder}: this policy checkpoint has no autoencoder")
    model = build_autoencoder(manifest["autoencoder"])
    if manifest["autoencoder"]["kind"] == "conv":
        state = load_weights(folder / AE_WEIGHTS, manifest["weights_sha256"].get(AE_WEIGHTS))
        load_state_strict(model, state, str(folder / AE_WEIGHTS))
    return model.eval()
