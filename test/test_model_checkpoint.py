"""Checkpoints: round trip, and clear refusals of corrupted, mismatched or foreign files."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from demuse_ros.model.config import preset

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from _model_helpers import randomize  # noqa: E402

from demuse_ros.model.autoencoder import ConvAutoencoder, ConvAutoencoderConfig  # noqa: E402
from demuse_ros.model.checkpoint import (  # noqa: E402
    CheckpointError,
    load_autoencoder,
    load_autoencoder_checkpoint,
    load_policy,
    save_autoencoder,
    save_policy,
)
from demuse_ros.model.data import EpisodeWindows, NormalizationStats, synthetic_episodes  # noqa: E402
from demuse_ros.model.dit import DeMUSE  # noqa: E402
from demuse_ros.model.export import DenoiserStep, example_inputs  # noqa: E402

PKG = Path(__file__).resolve().parents[1] / "demuse_ros"


@pytest.fixture(scope="module")
def stats() -> NormalizationStats:
    return NormalizationStats.compute(EpisodeWindows(synthetic_episodes(2, 64, ticks=6), 4, 1))


@pytest.fixture
def saved(tmp_path: Path, stats: NormalizationStats) -> tuple[Path, DeMUSE, ConvAutoencoder]:
    cfg = preset("tiny")
    model = randomize(DeMUSE(cfg.model))
    ae = randomize(ConvAutoencoder(ConvAutoencoderConfig(base_channels=4)))
    ae.scaling_factor.fill_(0.7)
    folder = save_policy(tmp_path / "ckpt", model.state_dict(), cfg, stats, ae, {"note": "x"})
    return folder, model, ae


def test_round_trip(saved: tuple, stats: NormalizationStats) -> None:
    folder, model, ae = saved
    assert sorted(p.name for p in folder.iterdir()) == [
        "autoencoder.safetensors",
        "config.json",
        "model.safetensors",
        "normalization.json",
    ]
    ckpt = load_policy(folder)
    assert ckpt.config == preset("tiny") and ckpt.normalization == stats
    assert not ckpt.model.training and ckpt.manifest["note"] == "x"
    inputs = example_inputs(ckpt.config.model)
    for a, b in zip(DenoiserStep(model)(*inputs), DenoiserStep(ckpt.model)(*inputs), strict=True):
        assert torch.equal(a, b)
    frame = torch.rand(1, 3, 64, 64)
    assert torch.equal(ckpt.autoencoder.encode(frame), ae.eval().encode(frame))
    assert float(ckpt.autoencoder.scaling_factor) == pytest.approx(0.7)


def test_corrupted_weights_are_named(saved: tuple) -> None:
    folder = saved[0]
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped bit pattern inside a tensor: still parses as safetensors
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256 does not match"):
        load_policy(folder)


def test_truncated_weights_without_a_hash_are_refused(saved: tuple) -> None:
    folder = saved[0]
    manifest = json.loads((folder / "config.json").read_text())
    del manifest["weights_sha256"]["model.safetensors"]
    (folder / "config.json").write_text(json.dumps(manifest))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_policy(folder)


def test_weights_from_another_config_are_refused(saved: tuple) -> None:
    folder = saved[0]
    manifest = json.loads((folder / "config.json").read_text())
    manifest["policy"]["model"]["hidden_dim"] = 128  # a different model, same weight files
    (folder / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"do not fit the model.*shape: "):
        load_policy(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("format_version", 2, "format_version 2; this demuse_ros reads version 1; upgrade"),
        ("format", "something-else", "format is 'something-else'"),
    ],
)
def test_foreign_or_newer_manifests_are_refused(
    saved: tuple, key: str, value: object, message: str
) -> None:
    folder = saved[0]
    manifest = json.loads((folder / "config.json").read_text())
    manifest[key] = value
    (folder / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        load_policy(folder)


def test_invalid_config_values_are_refused(saved: tuple) -> None:
    folder = saved[0]
    manifest = json.loads((folder / "config.json").read_text())
    manifest["policy"]["model"]["n_layers"] = "two"
    (folder / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="n_layers = 'two' is a string"):
        load_policy(folder)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_policy(tmp_path / "nowhere")


def test_autoencoder_checkpoint_round_trip(tmp_path: Path, saved: tuple) -> None:
    ae = randomize(ConvAutoencoder(ConvAutoencoderConfig(base_channels=4, latent_channels=3)))
    back = load_autoencoder_checkpoint(save_autoencoder(tmp_path / "ae", ae))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(back.encode(x), ae.eval().encode(x))
    assert back.latent_channels == 3
    assert torch.equal(load_autoencoder(tmp_path / "ae").encode(x), back.encode(x))
    # a policy checkpoint's autoencoder can be reused for the next training run
    folder, _, policy_ae = saved
    assert torch.equal(load_autoencoder(folder).encode(x), policy_ae.eval().encode(x))
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        load_autoencoder(tmp_path)


def test_normalization_round_trip(tmp_path: Path, stats: NormalizationStats) -> None:
    stats.save(tmp_path / "n.json")
    assert NormalizationStats.load(tmp_path / "n.json") == stats
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_allclose(stats.actions.unnormalize(stats.actions.normalize(x)), x, atol=1e-5)


def test_actions_span_minus_one_to_one_and_wrench_is_z_scored() -> None:
    windows = EpisodeWindows(synthetic_episodes(4, 32, ticks=12), 4, 1)
    stats = NormalizationStats.compute(windows)
    actions = np.concatenate([windows[i].actions for i in range(len(windows))])
    normalized = stats.actions.normalize(actions)
    moving = np.asarray(stats.actions.scale) > 0  # constant dimensions normalize to 0
    assert np.allclose(normalized[:, moving].min(0), -1) and np.allclose(
        normalized.max(0)[moving], 1
    )
    assert (stats.actions.kind, stats.state.kind, stats.wrench.kind) == (
        "minmax",
        "minmax",
        "zscore",
    )
    wrench = stats.wrench.normalize(np.stack([windows[i].wrench for i in range(len(windows))]))
    assert abs(wrench[:, 2].mean()) < 1e-5 and abs(wrench[:, 2].std() - 1) < 1e-4


def test_delta_actions_are_steps_from_the_observed_pose_and_decode_exactly(
    tmp_path: Path,
) -> None:
    windows = EpisodeWindows(synthetic_episodes(4, 32, ticks=12), 4, 1)
    stats = NormalizationStats.compute(windows, action_encoding="delta")
    absolute = NormalizationStats.compute(windows)
    actions = np.stack([windows[i].actions for i in range(len(windows))])  # (N, H, A)
    state = np.stack([windows[i].state for i in range(len(windows))])
    encoded = stats.actions.unnormalize(stats.encode_actions(actions, state))
    # positions: the first step from the state, then from the previous target
    np.testing.assert_allclose(encoded[:, 0, :3], actions[:, 0, :3] - state[:, :3], atol=1e-12)
    np.testing.assert_allclose(encoded[:, 1:, :3], np.diff(actions[:, :, :3], axis=1), atol=1e-12)
    np.testing.assert_array_equal(encoded[..., 3:], actions[..., 3:])  # the rest as it was
    # steps span far less than the workspace, so a normalized error is fewer metres
    assert np.all(np.asarray(stats.actions.scale[:3]) < np.asarray(absolute.actions.scale[:3]))
    for to in (np.asarray, torch.as_tensor):  # numpy and torch, the same numbers
        x = stats.encode_actions(to(actions), to(state))
        back = stats.decode_actions(x, to(state))
        np.testing.assert_allclose(np.asarray(back), actions, rtol=0, atol=1e-6)  # float32: µm
    stats.save(tmp_path / "n.json")
    loaded = NormalizationStats.load(tmp_path / "n.json")
    assert loaded == stats and loaded.action_encoding == "delta"
    with pytest.raises(ValueError, match="action_encoding 'velocity'"):
        NormalizationStats.from_json({**stats.to_json(), "action_encoding": "velocity"})


def test_version_1_normalization_reads_as_absolute_actions(stats: NormalizationStats) -> None:
    old = {**stats.to_json(), "version": 1}
    del old["action_encoding"]
    assert NormalizationStats.from_json(old) == stats
    with pytest.raises(ValueError, match="normalization version 3; this code reads versions 1, 2"):
        NormalizationStats.from_json({**old, "version": 3})


def test_nothing_in_the_package_unpickles() -> None:
    """No pickle imports, and torch.load only with weights_only=True."""
    offenders = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                    offenders.append(f"{path}: imports pickle")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load":
                base = getattr(node.func, "value", None)
                if isinstance(base, ast.Name) and base.id == "torch":
                    safe = any(
                        k.arg == "weights_only" and getattr(k.value, "value", None) is True
                        for k in node.keywords
                    )
                    if not safe:
                        offenders.append(f"{path}:{node.lineno}: torch.load without weights_only")
    assert offenders == []


def test_latent_standardization_centres_the_scene_and_round_trips(
    tmp_path: Path, stats: NormalizationStats
) -> None:
    """Per-element Z-scores: a constant background element becomes 0 (its scale floored,
    not 0), a moving object's elements get unit spread; stored and reloaded with the rest;
    files without ``rgb_latent`` still load."""
    import dataclasses

    from demuse_ros.model.data import LATENT_STD_FLOOR, latent_stat

    rng = np.random.default_rng(0)
    z = np.full((200, 2, 2, 2), 3.0)
    z[:, 0, 0, 0] += rng.normal(0, 0.05, 200)  # a "button": small, moving
    z[:, 1] = rng.normal(0, 1.4, (200, 2, 2))  # large, varied elements
    stat = latent_stat(z)
    normalized = stat.normalize(z.reshape(200, -1))
    assert np.allclose(normalized.mean(0), 0, atol=1e-5)  # float32 arithmetic
    assert normalized[:, 7].std() == pytest.approx(1.0, rel=1e-4)
    assert stat.scale[1] == pytest.approx(LATENT_STD_FLOOR * z.std())  # constant: floored
    assert normalized[:, 0].std() > 5 * (z[:, 0, 0, 0] / z.std()).std()  # the button stands out
    with_latents = dataclasses.replace(stats, rgb_latent=stat)
    with_latents.save(tmp_path / "n.json")
    assert NormalizationStats.load(tmp_path / "n.json") == with_latents
    stats.save(tmp_path / "old.json")
    assert NormalizationStats.load(tmp_path / "old.json").rgb_latent is None


def test_the_shipped_default_policy_loads_and_acts() -> None:
    """models/dispense-cpu (the default of demuse run/eval and policy_node) passes every
    load check (format, SHA-256, shapes) and turns a frame into a finite chunk."""
    from demuse_ros.model.policy import DeMUSEPolicy
    from demuse_ros.paths import DEFAULT_POLICY, resolve_policy

    path = resolve_policy(DEFAULT_POLICY)
    policy = DeMUSEPolicy.load(path)
    cfg = policy.checkpoint.config.model
    assert cfg.rgb_summary and policy.checkpoint.normalization.rgb_latent is not None
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (1, 480, 640, 3), dtype=np.uint8)
    state = np.array([[-0.65, -0.15, 0.25, -2.2214, -2.2214, 0.0, 0.05]])
    actions = policy.predict(
        rgb, np.ones((1, 480, 640)), np.zeros((1, cfg.wrench_in_dim)), state, [0]
    )
    assert actions.shape == (1, cfg.action_horizon, 7) and np.isfinite(actions).all()
