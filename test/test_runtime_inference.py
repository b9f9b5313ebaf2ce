"""Synchronous vs speculative inference on a real (briefly trained) tiny checkpoint."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the model extra: pip install -e '.[model]'")

from demuse_ros.runtime.inference import InferenceConfig, InferenceWorker, ModelPolicy  # noqa: E402
from demuse_ros.sync.observation import InvalidReason, Observation  # noqa: E402


def _policies(checkpoint: str, *configs: InferenceConfig) -> list[ModelPolicy]:
    return [ModelPolicy(checkpoint, replace(cfg, backend="torch"), stride=2) for cfg in configs]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A briefly trained tiny checkpoint, its weights randomized so the conditions matter
    (2 training steps leave the adaLN-Zero blocks near the identity) and x0 clipping off
    (random weights would pin every x0 to the clip)."""
    from _model_helpers import randomize

    from demuse_ros.model.checkpoint import load_policy, save_policy
    from demuse_ros.model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_ckpt")
    cfg = TrainConfig(
        preset="tiny",
        episodes=2,
        episode_ticks=3,
        val_fraction=0.5,
        batch_size=4,
        autoencoder_steps=1,
        val_every=0,
        steps=2,
        checkpoint_every=2,
    )
    train(cfg, out / "trained", progress=False)
    ck = load_policy(out / "trained")
    randomize(ck.model, seed=3)
    diffusion = replace(ck.config.diffusion, clip_action_x0=0.0, clip_rgb_x0=0.0)
    save_policy(
        out / "random",
        ck.model.state_dict(),
        replace(ck.config, diffusion=diffusion),
        ck.normalization,
        ck.autoencoder,
    )
    return str(out / "random")


def _obs(seed: int, size: int = 48) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        valid=True,
        reason=InvalidReason.OK,
        t_tick_ns=0,
        rgb=rng.integers(0, 255, (size, size + 16, 3), dtype=np.uint8),
        depth_m=rng.uniform(0.3, 1.0, (size, size + 16)).astype(np.float32),
        wrench=rng.normal(0, 1, 6),
        gripper_width_m=0.05,
        tcp_pose=np.r_[rng.uniform(-0.1, 0.1, 3), np.pi, 0.0, 0.0],
    )


def test_worker_returns_results_and_errors() -> None:
    worker = InferenceWorker()
    try:
        assert worker.submit(lambda: 41 + 1).result(1.0) == 42
        with pytest.raises(ZeroDivisionError):
            worker.submit(lambda: 1 / 0).result(1.0)
    finally:
        worker.close()


@pytest.mark.slow
def test_sai_with_no_speculative_steps_is_synchronous(checkpoint: str) -> None:
    sync, sai0 = _policies(
        checkpoint, InferenceConfig(mode="sync"), InferenceConfig(mode="sai", sai_steps=0)
    )
    try:
        for k in range(3):
            obs = _obs(k)
            assert np.array_equal(sync.predict(obs), sai0.predict(obs))
    finally:
        sync.close()
        sai0.close()


@pytest.mark.slow
def test_sai_equals_sync_when_the_prediction_is_the_real_observation(checkpoint: str) -> None:
    sync, sai = _policies(
        checkpoint, InferenceConfig(mode="sync"), InferenceConfig(mode="sai", sai_steps=4)
    )
    try:
        first = _obs(0)
        a_sync, a_sai = sync.predict(first), sai.predict(first)
        assert np.array_equal(a_sync, a_sai)  # the first chunk has nothing to speculate from
        # Feed SAI's own prediction back as the "real" observation: its conditions equal
        # the speculative ones, so the split run must equal one synchronous pass.
        spec_cond = sai.predicted_conditions(sai._conditions(first), None, a_sai)
        real = _obs(0)
        real.tcp_pose, real.gripper_width_m = a_sai[1, :6].copy(), float(a_sai[1, 6])
        cond_real = sai._conditions(real)
        assert torch.allclose(cond_real.state, spec_cond.state, atol=1e-6)
        # The model's predicted RGB latent is not the real frame's, so this test runs the
        # speculative half on the real conditions (a perfect prediction) by hand.
        sai._speculation = (
            1,
            sai.worker.submit(
                lambda: sai.policy.run_steps(cond_real, sai._noise(cond_real, 1), 0, sai.s_mid)
            ),
        )
        b_sai = sai.predict(real)
        b_sync = sync.predict(real)
        assert np.allclose(b_sai, b_sync, atol=1e-5)
        # and a speculative half on a different observation does change the chunk
        sai._speculation = (
            2,
            sai.worker.submit(
                lambda: sai.policy.run_steps(
                    sai._conditions(_obs(9)), sai._noise(cond_real, 2), 0, sai.s_mid
                )
            ),
        )
        c_sai, c_sync = sai.predict(real), sync.predict(real)
        assert not np.allclose(c_sai, c_sync, atol=1e-5)
    finally:
        sync.close()
        sai.close()


@pytest.mark.slow
def test_sai_blocks_for_fewer_steps(checkpoint: str) -> None:
    sync, sai = _policies(
        checkpoint, InferenceConfig(mode="sync"), InferenceConfig(mode="sai", sai_steps=6)
    )
    try:
        for k in range(12):
            obs = _obs(k)
            sync.predict(obs)
            sai.predict(obs)
            # the speculative half runs while the chunk "executes"
            sai._speculation[1].result(5.0)
        b_sync = float(np.median(sync.blocking_ms[2:]))
        b_sai = float(np.median(sai.blocking_ms[2:]))
        print(f"blocking p50: sync {b_sync:.2f} ms, sai {b_sai:.2f} ms")
        assert math.isfinite(b_sai) and b_sai < b_sync
        assert sai.speculations_late == 0
    finally:
        sync.close()
        sai.close()


def loopback_sim(host: str, modbus_port: int):
    """The default twin on its own loopback address, so tests do not share ports."""
    from demuse_ros.twin.runner import SimConfig
    from demuse_ros.twin.ur_servers import URServersConfig

    base = SimConfig()
    return replace(
        base,
        ur_servers=URServersConfig(host=host),
        modbus=replace(base.modbus, host=host, port=modbus_port),
    )


@pytest.mark.slow
def test_checkpoint_closed_loop_in_the_twin(checkpoint: str, tmp_path) -> None:
    pytest.importorskip("mujoco", reason="needs the sim extra")
    pytest.importorskip("rtde_control", reason="needs ur_rtde 1.6.5")
    from demuse_ros.runtime.runner import run_sim
    from demuse_ros.runtime.scheduler import RuntimeConfig

    sim = loopback_sim("127.0.0.85", 5085)
    runtime = replace(RuntimeConfig(), inference=InferenceConfig(mode="sai", sai_steps=4))
    result = run_sim(
        sim,
        policy=checkpoint,
        runtime_config=runtime,
        cycles=30,
        stop_when_done=False,
        report_dir=str(tmp_path / "run"),
        measure_sai_deviation=True,
    )
    print({k: result[k] for k in ("cycles", "tick_hz", "holds", "blocking_ms_p50")})
    assert result["cycles"] == 30 and result["inference"] == "sai"
    assert math.isfinite(result["blocking_ms_p50"])
    # every chunk that left the runtime went through the arm's safety filter
    arm = result["arm"]
    assert arm["chunks_accepted"] + arm["chunks_rejected"] == result["chunks_sent"]
    assert result["sai_action_dev"]["chunks"] >= 1
    assert (tmp_path / "run" / "run.json").is_file()


@pytest.mark.slow
def test_bench_loop_runs_the_shipped_policy_by_default() -> None:
    """`demuse bench loop --sim` without --policy times the checkpoint operators run."""
    pytest.importorskip("mujoco", reason="needs the sim extra")
    pytest.importorskip("rtde_control", reason="needs ur_rtde 1.6.5")
    from demuse_ros.bench import loop_bench

    result = loop_bench.run(20, loopback_sim("127.0.0.86", 5086))
    assert Path(result["checkpoint"]).name == "dispense-cpu"
    assert result["cycles"] == 20 and result["chunks_sent_sai"] >= 1
    assert math.isfinite(result["blocking_reduction"])


def test_the_force_token_sees_the_last_ticks_oldest_first(tmp_path: Path) -> None:
    """``model.wrench_history = 3``: every valid tick is observed, chunk or not; a chunk
    sees the last 3 wrenches up to its observation, padded with the oldest after reset."""
    from _model_helpers import randomize

    from demuse_ros.model.autoencoder import ConvAutoencoder, ConvAutoencoderConfig
    from demuse_ros.model.checkpoint import save_policy
    from demuse_ros.model.config import preset
    from demuse_ros.model.data import EpisodeWindows, NormalizationStats, synthetic_episodes
    from demuse_ros.model.dit import DeMUSE

    cfg = preset("tiny")
    cfg = replace(cfg, model=replace(cfg.model, wrench_history=3))
    stats = NormalizationStats.compute(
        EpisodeWindows(synthetic_episodes(2, 64, ticks=6), 4, 1, wrench_history=3)
    )
    ae = randomize(ConvAutoencoder(ConvAutoencoderConfig(base_channels=4)))
    folder = save_policy(tmp_path / "k3", randomize(DeMUSE(cfg.model)).state_dict(), cfg, stats, ae)
    (policy,) = _policies(str(folder), InferenceConfig(mode="sync"))
    try:
        obs = [replace(_obs(i), t_anchor_ns=(i + 1) * 100_000_000) for i in range(6)]
        w = [o.wrench for o in obs]

        def window(o: Observation) -> np.ndarray:
            return policy.wrench_window(o).reshape(3, 6)

        policy.reset(obs[0])
        np.testing.assert_array_equal(window(obs[0]), [w[0], w[0], w[0]])
        policy.observe(obs[1])
        policy.observe(obs[1])  # a repeated anchor is not a new tick
        np.testing.assert_array_equal(window(obs[2]), [w[0], w[1], w[2]])
        policy.observe(obs[3])
        np.testing.assert_array_equal(window(obs[4]), [w[2], w[3], w[4]])
        assert policy.predict(obs[5]).shape == (4, 7)  # the chunk takes (1, 18)
        policy.reset(obs[5])  # a new episode forgets the last one's contact
        np.testing.assert_array_equal(window(obs[5]), [w[5], w[5], w[5]])
    finally:
        policy.close()
