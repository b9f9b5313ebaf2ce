"""Training: resume reproduces an uninterrupted run, the CLI trains, and a tiny model overfits."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from demuse_ros.config import ConfigError

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from safetensors.torch import load_file  # noqa: E402

from demuse_ros.cli import main  # noqa: E402
from demuse_ros.model import train as train_module  # noqa: E402
from demuse_ros.model.data import (  # noqa: E402
    EpisodeWindows,
    NormalizationStats,
    synthetic_episodes,
)
from demuse_ros.model.policy import DeMUSEPolicy  # noqa: E402
from demuse_ros.model.train import TrainConfig, lr_factor, train  # noqa: E402

QUICK = {
    "preset": "tiny",
    "episodes": 2,
    "episode_ticks": 3,
    "val_fraction": 0.5,
    "batch_size": 4,
    "autoencoder_steps": 1,
    "val_every": 2,
    "val_batches": 1,
    "log_every": 1,
    "warmup_steps": 2,
}


def test_shipped_train_yaml_documents_the_defaults() -> None:
    from demuse_ros.config import load_config

    path = Path(__file__).resolve().parents[1] / "config" / "train.yaml"
    assert load_config(path, TrainConfig, "demuse_train") == TrainConfig()  # change both


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    f = [lr_factor(s, warmup=10, total=110, floor=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))
    assert f[110] == pytest.approx(0.1)


def test_resume_after_a_crash_continues_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that dies at step 5 and is resumed from its step-4 checkpoint ends exactly like an
    uninterrupted run: weights, EMA, optimizer moments, LR schedule and RNG all restored."""
    cfg = TrainConfig(**QUICK, steps=6, checkpoint_every=2)
    real_loss, calls = train_module.diffusion_loss, []

    def crash_at_step_5(model, *args, **kwargs):
        calls.append(model.training)
        if calls.count(True) == 5:
            raise RuntimeError("simulated crash")
        return real_loss(model, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train_module, "diffusion_loss", crash_at_step_5)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(cfg, tmp_path / "a", progress=False)
    resumed = train(cfg, tmp_path / "a", resume=True, progress=False)
    straight = train(cfg, tmp_path / "b", progress=False)
    assert resumed == straight
    a = load_file(str(tmp_path / "a" / "training_state.safetensors"))
    b = load_file(str(tmp_path / "b" / "training_state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert "val_loss" in json.loads(lines[-1])


def test_an_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    train(TrainConfig(**QUICK, steps=1), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(TrainConfig(**QUICK, steps=1), tmp_path, progress=False)
    with pytest.raises(Exception, match="another configuration"):
        train(TrainConfig(**{**QUICK, "lr": 0.1}, steps=2), tmp_path, resume=True, progress=False)


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = [f"{k}={v}" for k, v in {**QUICK, "steps": 2}.items()]
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 2 and np.isfinite(result["loss"])
    policy = DeMUSEPolicy.load(tmp_path / "run")
    sample = EpisodeWindows(synthetic_episodes(1, 64, ticks=3), 4, 1)[0]
    actions = policy.predict(
        sample.rgb[None, 0], sample.depth_m[None], sample.wrench[None], sample.state[None], [0]
    )
    assert actions.shape == (1, 4, 7) and np.isfinite(actions).all()


def test_training_takes_episodes_from_a_loader(tmp_path: Path) -> None:
    """The recorder's episodes plug in through the Episode interface."""
    episodes = synthetic_episodes(3, 64, n_tasks=2, ticks=4, seed=7)
    metrics = train(TrainConfig(**QUICK, steps=2), tmp_path, progress=False, episodes=episodes)
    assert metrics["step"] == 2
    stats = DeMUSEPolicy.load(tmp_path).checkpoint.normalization
    train_states = episodes[2].state  # round(0.5 × 3) = 2 episodes are held out
    mid = (train_states.max(0) + train_states.min(0)) / 2
    np.testing.assert_allclose(stats.state.offset, mid, atol=1e-6)


def test_train_autoencoder_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train-autoencoder", "--out", str(tmp_path / "ae"), "--episodes", "1"]
    args += ["--image-size", "32", "--steps", "2", "--batch-size", "4", "--no-progress"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["frames"] == 24 and result["scaling_factor"] > 0
    assert (tmp_path / "ae" / "autoencoder.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["absolute", "delta"])
def test_tiny_model_overfits_a_handful_of_samples(tmp_path: Path, encoding: str) -> None:
    """Proof that objective, sampler and action encoding fit together: after training on
    two samples, DDIM from fresh noise returns their action chunks with a mean error under
    0.1 and a worst element under 0.5 in normalized units ([-1, 1] spans each dimension's
    range), and every TCP position within 2 mm (measured here, absolute: 0.03, 0.23 and
    0.6 mm)."""
    cfg = TrainConfig(
        action_encoding=encoding,
        preset="tiny",
        episodes=1,
        episode_ticks=2,
        val_fraction=0.0,
        steps=500,
        batch_size=32,
        lr=3e-3,
        warmup_steps=20,
        ema_decay=0.9,
        grad_clip_norm=0.0,
        autoencoder_steps=2,
        val_every=0,
        log_every=100,
        checkpoint_every=500,
    )
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["loss_action"] < 0.02
    policy = DeMUSEPolicy.load(tmp_path)
    stats = policy.checkpoint.normalization
    assert stats.action_encoding == encoding
    errors = []
    for i, s in enumerate(EpisodeWindows(synthetic_episodes(1, 64, ticks=2), 4, 1)):
        actions = policy.predict(
            s.rgb[None, 0],
            s.depth_m[None],
            s.wrench[None],
            s.state[None],
            [s.task],
            generator=torch.Generator().manual_seed(100 + i),
        )[0]
        encode = stats.encode_actions
        errors.append(np.abs(encode(actions, s.state) - encode(s.actions, s.state)))
        position_error_m = np.linalg.norm(actions[:, :3] - s.actions[:, :3], axis=-1)
        assert position_error_m.max() < 0.002, position_error_m
    errors = np.stack(errors)
    assert errors.mean() < 0.1, errors.mean()
    assert errors.max() < 0.5, errors.max()


@pytest.mark.gpu
def test_training_and_sampling_on_cuda(tmp_path: Path) -> None:
    """The same run on a GPU: trains, checkpoints, and its policy samples on GPU and CPU."""
    metrics = train(TrainConfig(**QUICK, steps=3, device="cuda"), tmp_path, progress=False)
    assert np.isfinite(metrics["loss"])
    sample = EpisodeWindows(synthetic_episodes(1, 64, ticks=3), 4, 1)[0]
    chunks = []
    for device in ("cuda", "cpu"):
        policy = DeMUSEPolicy.load(tmp_path, device=device)
        chunks.append(
            policy.predict(
                sample.rgb[None, 0],
                sample.depth_m[None],
                sample.wrench[None],
                sample.state[None],
                [0],
                generator=torch.Generator(device).manual_seed(0),
            )
        )
    assert chunks[0].shape == chunks[1].shape == (1, 4, 7)
    assert all(np.isfinite(c).all() for c in chunks)


def test_the_best_validation_checkpoint_is_kept_and_the_curve_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``best/`` holds the EMA weights of the lowest validation loss, survives a resume, and
    ``training_curve.png`` is drawn from metrics.jsonl."""
    losses = iter([0.9, 0.4, 0.6, 0.7, 0.5, 0.8])
    monkeypatch.setattr(train_module.Trainer, "validate", lambda self: next(losses))
    cfg = TrainConfig(**{**QUICK, "val_every": 1}, steps=4, checkpoint_every=1)
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["best"] == {"step": 2, "val_loss": 0.4}
    best = json.loads((tmp_path / "best" / "config.json").read_text())["training"]
    assert best["step"] == 2 and best["val_loss"] == 0.4
    assert (
        DeMUSEPolicy.load(tmp_path / "best").checkpoint.config
        == DeMUSEPolicy.load(tmp_path).checkpoint.config
    )
    assert (tmp_path / "training_curve.png").stat().st_size > 10_000
    # a resumed run keeps the best so far: 0.5 and 0.8 are worse than 0.4
    more = train(dataclasses.replace(cfg, steps=6), tmp_path, resume=True, progress=False)
    assert more["best"] == {"step": 2, "val_loss": 0.4}


def test_training_curves_of_two_runs_share_one_figure(tmp_path: Path) -> None:
    from demuse_ros.model.curve import plot_training_curves, read_metrics

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        lines = [json.dumps({"step": s, "loss": 1.0 / s, "loss_action": 0.1 / s}) for s in (1, 2)]
        lines.append(json.dumps({"step": 3, "loss": 0.3, "loss_action": 0.03, "val_loss": 0.4}))
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(tmp_path / "a")] == [1, 2, 3]  # torn line skipped
    out = plot_training_curves([tmp_path / "a", tmp_path / "b"], tmp_path / "c.png", ["A", "B"])
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="labels"):
        plot_training_curves([tmp_path / "a"], tmp_path / "d.png", ["A", "B"])


def test_state_noise_perturbs_only_the_training_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``state_noise`` jitters the normalized proprio state of training batches (the copycat
    fix); validation batches and the stored normalization are untouched."""
    seen: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
    real_loss = train_module.diffusion_loss

    def spy(model, batch, *args, **kwargs):
        seen["train" if model.training else "eval"].append(batch.state.clone())
        return real_loss(model, batch, *args, **kwargs)

    monkeypatch.setattr(train_module, "diffusion_loss", spy)
    episodes = synthetic_episodes(2, 64, ticks=3, seed=3)
    for noise in (0.0, 0.5):
        cfg = TrainConfig(**{**QUICK, "state_noise": noise, "batch_size": 64}, steps=1)
        train(cfg, tmp_path / str(noise), progress=False, episodes=episodes)
    clean, noisy = seen["train"]
    # same batch indices draw (the noise comes after them), different states
    assert clean.shape == noisy.shape
    assert 0.3 < float((noisy - clean).std()) < 0.7
    assert torch.equal(seen["eval"][0], seen["eval"][1])
    # only the listed dimensions
    cfg = TrainConfig(
        **{**QUICK, "state_noise": 0.5, "state_noise_dims": (0, 1), "batch_size": 64}, steps=1
    )
    train(cfg, tmp_path / "dims", progress=False, episodes=episodes)
    moved = (seen["train"][2] - clean).abs().amax(0)
    assert (moved[:2] > 0.1).all() and (moved[2:] == 0).all()
    with pytest.raises(ConfigError, match="indices"):
        TrainConfig(state_noise_dims=(-1,))


def test_wrench_history_windows_are_oldest_first_and_pad_the_episode_start() -> None:
    ep = synthetic_episodes(1, 64, ticks=5)[0]
    ep.wrench[:] = np.arange(5, dtype=np.float32)[:, None] * np.arange(1, 7, dtype=np.float32)
    windows = EpisodeWindows([ep], 4, 1, wrench_history=3)
    fx = [windows[k].wrench.reshape(3, 6)[:, 0].tolist() for k in range(5)]
    assert fx == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert windows[4].wrench.shape == (18,)
    assert np.array_equal(windows[4].wrench[-6:], ep.wrench[4])  # the current tick last
    stats = NormalizationStats.compute(windows)  # per axis, over every tick of the history
    assert len(stats.wrench.offset) == 6
    np.testing.assert_allclose(stats.wrench.offset, np.mean(fx) * np.arange(1, 7), rtol=1e-5)
    with pytest.raises(ValueError, match="wrench_history"):
        EpisodeWindows([ep], 4, 1, wrench_history=0)
