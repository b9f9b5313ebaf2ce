"""``demuse train``: AdamW, warm-up + cosine LR, EMA, gradient clipping, validation, resume.

The run directory is itself a policy checkpoint (EMA weights, see
:mod:`.checkpoint`), rewritten every ``checkpoint_every`` steps and at the end,
plus what resuming needs: ``training_state.safetensors`` (raw weights, EMA,
optimizer moments, RNG state), ``trainer.json`` (step, train config, best
validation loss) and ``metrics.jsonl`` (one JSON line per logged step: the
training curve, drawn into ``training_curve.png`` at the end). ``best/`` is a
complete policy checkpoint of the EMA weights at the lowest validation loss so
far (the validation batches and their noise are the same every time, so the
losses compare).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from demuse_ros.config import ConfigError, from_dict, param, to_dict, validate_fields

from .autoencoder import (
    ConvAutoencoder,
    ConvAutoencoderConfig,
    train_autoencoder,
)
from .checkpoint import (
    CheckpointError,
    check_autoencoder_fits,
    load_autoencoder,
    load_policy,
    load_state_strict,
    load_weights,
    save_policy,
    save_weights,
)
from .config import DIFFUSION_PRESETS, PRESETS, DiffusionConfig, ModelConfig, PolicyConfig
from .data import (
    ACTION_ENCODINGS,
    DATASETS,
    Episode,
    EpisodeWindows,
    NormalizationStats,
    PolicyDataset,
    Stat,
    latent_stat,
)
from .diffusion import ModelBatch, NoiseSchedule, diffusion_loss
from .dit import DeMUSE
from .policy import BatchEncoder

log = logging.getLogger(__name__)
TRAINING_STATE = "training_state.safetensors"
TRAINER_JSON = "trainer.json"
METRICS = "metrics.jsonl"
BEST = "best"
CURVE_PNG = "training_curve.png"


@dataclass(frozen=True)
class TrainConfig:
    """One training run (``config/train.yaml``, node ``demuse_train``)."""

    preset: str = param("cpu", doc="model preset", choices=tuple(PRESETS))
    model: dict[str, Any] = param({}, doc="overrides of the preset's ModelConfig fields")
    diffusion: dict[str, Any] = param({}, doc="overrides of the preset's DiffusionConfig fields")
    data: str = param("synthetic", doc="data source", choices=tuple(DATASETS))
    episodes: int = param(64, doc="synthetic episodes to generate", range=(1, None))
    episode_ticks: int = param(24, doc="control ticks per synthetic episode", range=(1, None))
    frame_stride: int = param(4, doc="ticks between the predicted frames (B.3 skip_step)")
    val_fraction: float = param(
        0.1, doc="share of episodes held out for validation", range=(0, 0.5)
    )
    steps: int = param(4000, doc="optimizer steps in total (resume continues up to this)")
    batch_size: int = param(32, doc="samples per step", range=(1, None))
    lr: float = param(
        1e-3,
        doc="peak learning rate (Table 7's value was lost; 1e-3 fits the cpu preset, 3e-4 "
        "learned half as fast there; DiT-size models want ~1e-4)",
        range=(0, 1),
    )
    weight_decay: float = param(0.0, doc="AdamW weight decay (DiT uses 0)", range=(0, 1))
    warmup_steps: int = param(200, doc="linear warm-up steps", range=(0, None))
    min_lr_ratio: float = param(0.1, doc="cosine floor / peak lr", range=(0, 1))
    ema_decay: float = param(
        0.999, doc="EMA decay (Table 7: 0.9999 for 100k steps), warmed up", range=(0, 1)
    )
    grad_clip_norm: float = param(1.0, doc="gradient-norm clip (0: off)", range=(0, None))
    val_every: int = param(500, doc="steps between validation losses (0: never)", range=(0, None))
    val_batches: int = param(4, doc="batches per validation", range=(1, None))
    checkpoint_every: int = param(500, doc="steps between checkpoints", range=(1, None))
    log_every: int = param(20, doc="steps between metrics lines", range=(1, None))
    autoencoder: str = param(
        "",
        doc="a diffusers AutoencoderKL folder, a 'demuse train-autoencoder' output or a policy "
        "checkpoint whose autoencoder to reuse; empty: train one on the training frames first",
    )
    autoencoder_steps: int = param(
        600, doc="steps when the autoencoder is trained here (~0.3 s each on 2 cores)"
    )
    autoencoder_foreground_weight: float = param(
        0.0,
        doc="when the autoencoder is trained here: extra loss weight of pixels unlike the "
        "median frame, so small objects survive in the latents (0: plain loss)",
        range=(0, None),
    )
    state_noise: float = param(
        0.0,
        doc="std of Gaussian noise added to the normalized proprio state of training "
        "samples (0.2 = 1.6 cm on a 16 cm workspace): a policy that cannot read the exact "
        "pose from the state cannot just extrapolate the demonstrated path from it and has "
        "to look where the target is (the copycat shortcut)",
        range=(0, None),
    )
    state_noise_dims: tuple[int, ...] = param(
        (),
        doc="state dimensions the noise applies to (empty: all), e.g. [0, 1] for x and y: "
        "the approach direction, while z stays exact for pressing",
    )
    action_encoding: str = param(
        "absolute",
        doc="TCP positions of the action targets: absolute, or delta (steps from the "
        "observed pose; millimetre precision for pressing, see NormalizationStats)",
        choices=ACTION_ENCODINGS,
    )
    standardize_latents: bool = param(
        False,
        doc="Z-score every RGB latent element over the training frames (stored with the "
        "normalization): small moving objects stand out from the static scene",
    )
    seed: int = param(0, doc="seed of data generation, init, batches and noise")
    device: str = param("cpu", doc="torch device, e.g. cpu or cuda")
    threads: int = param(
        0,
        doc="torch CPU threads (0: torch's default, one per core; 1 lets two runs share a "
        "2-core machine)",
        range=(0, None),
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if any(d < 0 for d in self.state_noise_dims):
            raise ConfigError("state dimensions are indices from 0", key="state_noise_dims")
        try:  # check the overrides now; from_dict then names the file and the full key
            self.policy_config()
        except ConfigError as err:
            raise ConfigError(err.detail, key=err.key) from None

    def policy_config(self) -> PolicyConfig:
        model = from_dict(
            ModelConfig, {**to_dict(PRESETS[self.preset]), **self.model}, prefix="model"
        )
        diffusion = from_dict(
            DiffusionConfig,
            {**to_dict(DIFFUSION_PRESETS[self.preset]), **self.diffusion},
            prefix="diffusion",
        )
        return PolicyConfig(model=model, diffusion=diffusion)


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine down to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_model(model: torch.nn.Module, decay: float) -> AveragedModel:
    """EMA of the weights with a warm-up (decay ≤ (1 + n) / (10 + n)), so short runs track."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(ema, current, 1.0 - d)

    return AveragedModel(model, multi_avg_fn=update)  # buffers are constants


def _encode_all(encoder: BatchEncoder, dataset: PolicyDataset, chunk: int = 256) -> ModelBatch:
    """The whole dataset encoded once (the autoencoder is frozen): per-step batches index it."""
    parts = [
        encoder.batch([dataset[i] for i in range(a, min(a + chunk, len(dataset)))])
        for a in range(0, len(dataset), chunk)
    ]
    return ModelBatch(*(None if p[0] is None else torch.cat(p) for p in zip(*parts, strict=True)))


def _take(batch: ModelBatch, idx: torch.Tensor) -> ModelBatch:
    return ModelBatch(*(None if t is None else t[idx] for t in batch))


class Trainer:
    """Builds data, autoencoder, model and optimizer from a :class:`TrainConfig`; runs them."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path,
        progress: bool = True,
        resume: bool = False,
        episodes: Sequence[Episode] | None = None,
    ) -> None:
        """With ``resume``, normalization and autoencoder come from the run directory's
        checkpoint (when it has one) instead of being computed and trained again.
        ``episodes`` (e.g. loaded recordings) replace the ``cfg.data`` source."""
        self.cfg, self.out, self.progress = cfg, Path(out_dir), progress
        self.policy_cfg = cfg.policy_config()
        mcfg = self.policy_cfg.model
        self.device = torch.device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        if episodes is None:
            episodes = DATASETS[cfg.data](
                cfg.episodes,
                mcfg.image_size_px,
                mcfg.n_tasks,
                ticks=cfg.episode_ticks,
                seed=cfg.seed,
            )
        n_val = round(cfg.val_fraction * len(episodes))  # whole episodes: no leakage
        split = {"train": episodes[n_val:], "val": episodes[:n_val]}
        windows = {
            name: EpisodeWindows(
                eps,
                mcfg.action_horizon,
                mcfg.n_future_frames,
                cfg.frame_stride,
                mcfg.wrench_history,
            )
            for name, eps in split.items()
            if eps
        }
        if resume and (self.out / TRAINER_JSON).is_file():
            saved = load_policy(self.out)
            self.normalization, self.autoencoder = saved.normalization, saved.autoencoder
        else:
            self.normalization = NormalizationStats.compute(
                windows["train"], action_encoding=cfg.action_encoding
            )
            self.autoencoder = (
                self._autoencoder(windows["train"]) if "rgb" in mcfg.modalities else None
            )
        if self.autoencoder is not None:
            self.autoencoder.to(self.device).requires_grad_(False)
            if cfg.standardize_latents and self.normalization.rgb_latent is None:
                self.normalization = dataclasses.replace(
                    self.normalization, rgb_latent=self._latent_stat(windows["train"])
                )
        encoder = BatchEncoder(mcfg, self.normalization, self.autoencoder, self.device)
        self.data = {name: _encode_all(encoder, ds) for name, ds in windows.items()}
        self.model = DeMUSE(mcfg).to(self.device)
        self.ema = ema_model(self.model, cfg.ema_decay)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.schedule = NoiseSchedule(self.policy_cfg.diffusion, self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.step = 0
        self.best_val_loss, self.best_step = math.inf, 0

    def _autoencoder(self, train: EpisodeWindows) -> torch.nn.Module:
        cfg, mcfg = self.cfg, self.policy_cfg.model
        if cfg.autoencoder:
            ae = load_autoencoder(cfg.autoencoder)
        else:
            frames = np.concatenate([ep.rgb for ep in train.episodes])
            ae = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=mcfg.latent_channels))
            log.info("training a conv autoencoder on %d frames", len(frames))
            train_autoencoder(
                ae,
                frames,
                cfg.autoencoder_steps,
                seed=cfg.seed,
                progress=self.progress,
                foreground_weight=cfg.autoencoder_foreground_weight,
            )
        check_autoencoder_fits(ae, self.policy_cfg, cfg.autoencoder or "trained autoencoder")
        return ae.eval()

    def _latent_stat(self, train: EpisodeWindows, max_frames: int = 4096) -> Stat:
        frames = np.concatenate([ep.rgb for ep in train.episodes])
        if len(frames) > max_frames:
            pick = np.random.default_rng(self.cfg.seed).choice(len(frames), max_frames, False)
            frames = frames[np.sort(pick)]
        plain = BatchEncoder(
            self.policy_cfg.model, self.normalization, self.autoencoder, self.device
        )
        batches = range(0, len(frames), 256)
        z = torch.cat([plain.latents(frames[i : i + 256, None]) for i in batches])
        return latent_stat(z.cpu().numpy())

    # ------------------------------------------------------------ state
    def _save_policy(self, folder: Path, **training: Any) -> None:
        save_policy(
            folder,
            self.ema.module.state_dict(),
            self.policy_cfg,
            self.normalization,
            self.autoencoder,
            extra={"training": {"step": self.step, "config": to_dict(self.cfg), **training}},
        )

    def _keep_if_best(self, val_loss: float | None) -> None:
        """Writes ``best/`` when ``val_loss`` is the lowest so far."""
        if val_loss is None or not math.isfinite(val_loss) or val_loss >= self.best_val_loss:
            return
        self.best_val_loss, self.best_step = val_loss, self.step
        self._save_policy(self.out / BEST, val_loss=val_loss)

    def save(self) -> None:
        self._save_policy(self.out)
        opt = self.opt.state_dict()
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        for idx, st in opt["state"].items():
            tensors |= {f"optim.{idx}.{k}": v for k, v in st.items()}
        tensors["rng.generator"] = self.gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        sha = save_weights(self.out / TRAINING_STATE, tensors)
        body = {
            "step": self.step,
            "train_config": to_dict(self.cfg),
            "param_groups": opt["param_groups"],
            "sha256": sha,
            "best": {"val_loss": self.best_val_loss, "step": self.best_step}
            if self.best_step
            else None,
        }
        (self.out / TRAINER_JSON).write_text(json.dumps(body, indent=1))

    def resume(self) -> bool:
        """Restores the state saved in the run directory; False when there is none."""
        path = self.out / TRAINER_JSON
        if not path.is_file():
            return False
        body = json.loads(path.read_text())
        saved = from_dict(TrainConfig, body["train_config"], source=str(path))
        if dataclasses.replace(saved, steps=self.cfg.steps) != self.cfg:
            raise CheckpointError(
                f"{path}: the run was started with another configuration; resume with the same "
                "one (only steps may grow) or pick a new output directory"
            )
        tensors = load_weights(self.out / TRAINING_STATE, body["sha256"], self.device)

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        load_state_strict(self.model, part("model."), str(self.out / TRAINING_STATE))
        load_state_strict(self.ema, part("ema."), str(self.out / TRAINING_STATE))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in part("optim.").items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        self.opt.load_state_dict({"state": state, "param_groups": body["param_groups"]})
        self.gen.set_state(tensors["rng.generator"].cpu())
        torch.set_rng_state(tensors["rng.torch"].cpu())
        self.step = int(body["step"])
        if body.get("best"):
            self.best_val_loss = float(body["best"]["val_loss"])
            self.best_step = int(body["best"]["step"])
        log.info("resumed %s at step %d", self.out, self.step)
        return True

    # ------------------------------------------------------------ loop
    @torch.no_grad()
    def validate(self) -> float | None:
        if "val" not in self.data:
            return None
        model, data = self.ema.module.eval(), self.data["val"]
        gen = torch.Generator(device=self.device).manual_seed(12345)  # same noise every time
        n, losses = len(data.state), []
        for b in range(self.cfg.val_batches):
            idx = torch.arange(b * self.cfg.batch_size, (b + 1) * self.cfg.batch_size) % n
            batch = _take(data, idx.to(self.device))
            terms = diffusion_loss(model, batch, self.schedule, self.policy_cfg.diffusion, gen)
            losses.append(
                float(terms.total - self.policy_cfg.diffusion.aux_loss_weight * terms.aux)
            )
        return float(np.mean(losses))

    def fit(self) -> dict[str, Any]:
        """Trains up to ``cfg.steps``; returns the last metrics."""
        from tqdm.auto import tqdm

        cfg, dcfg = self.cfg, self.policy_cfg.diffusion
        self.out.mkdir(parents=True, exist_ok=True)
        train, n = self.data["train"], len(self.data["train"].state)
        sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio),
            last_epoch=self.step - 1 if self.step else -1,
        )
        metrics: dict[str, Any] = {}
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress)
        with (self.out / METRICS).open("a") as mlog:
            while self.step < cfg.steps:
                self.model.train()
                idx = torch.randint(0, n, (cfg.batch_size,), device=self.device, generator=self.gen)
                batch = _take(train, idx)
                if cfg.state_noise:
                    noise = torch.randn(batch.state.shape, device=self.device, generator=self.gen)
                    if cfg.state_noise_dims:
                        keep = torch.zeros(batch.state.shape[-1], device=self.device)
                        keep[list(cfg.state_noise_dims)] = 1.0
                        noise = noise * keep
                    batch = batch._replace(state=batch.state + cfg.state_noise * noise)
                terms = diffusion_loss(self.model, batch, self.schedule, dcfg, self.gen)
                self.opt.zero_grad(set_to_none=True)
                terms.total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), cfg.grad_clip_norm or float("inf")
                )
                self.opt.step()
                sched.step()
                self.ema.update_parameters(self.model)
                self.step += 1
                bar.update(1)
                last = self.step == cfg.steps
                val_now = bool(cfg.val_every) and (self.step % cfg.val_every == 0 or last)
                if self.step % cfg.log_every == 0 or last or val_now:
                    metrics = {
                        "step": self.step,
                        "loss": terms.total.item(),
                        "loss_action": float(terms.action),
                        "loss_rgb": float(terms.rgb),
                        "aux": float(terms.aux),
                        "grad_norm": float(grad_norm),
                        "lr": sched.get_last_lr()[0],
                    }
                    if val_now:
                        metrics["val_loss"] = self.validate()
                        self._keep_if_best(metrics["val_loss"])
                    mlog.write(json.dumps(metrics) + "\n")
                    mlog.flush()
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", val=metrics.get("val_loss"))
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.save()
        bar.close()
        try:
            from .curve import plot_training_curves

            plot_training_curves([self.out], self.out / CURVE_PNG)
        except Exception as exc:  # a missing plot must not cost the run
            log.warning("training curve not drawn: %s", exc)
        if self.best_step:
            metrics["best"] = {"step": self.best_step, "val_loss": self.best_val_loss}
        return metrics


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    episodes: Sequence[Episode] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) one training run into ``out_dir``; returns the last metrics.

    ``episodes`` replace the ``cfg.data`` source (the recorder's loader passes them here).

    Raises:
        ConfigError: The output directory already holds a run and ``resume`` is False.
    """
    out = Path(out_dir)
    if not resume and (out / TRAINER_JSON).is_file():
        raise ConfigError(
            f"= {str(out)!r} already holds a training run; pass --resume or a new --out",
            key="out",
        )
    trainer = Trainer(cfg, out, progress=progress, resume=resume, episodes=episodes)
    if resume:
        trainer.resume()
    return trainer.fit()
