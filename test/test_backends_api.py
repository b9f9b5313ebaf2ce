"""The factory's errors, the policy on any backend, and the ONNX export cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from demuse_ros.model.config import DIFFUSION_PRESETS, PRESETS, preset

torch = pytest.importorskip("torch", reason="the backends need the 'model' extra (torch)")
pytest.importorskip("onnxruntime", reason="the 'model' extra (onnxruntime)")
pytest.importorskip("onnxscript", reason="the 'model' extra (onnxscript, for the exporter)")

from _model_helpers import randomize  # noqa: E402

from demuse_ros.backends import available_backends, make_denoiser  # noqa: E402
from demuse_ros.backends.artifacts import STEP_GRAPH, SamplerGraphs  # noqa: E402
from demuse_ros.backends.base import BackendUnavailable  # noqa: E402
from demuse_ros.backends.policy import BackendPolicy  # noqa: E402
from demuse_ros.model.autoencoder import ConvAutoencoder, ConvAutoencoderConfig  # noqa: E402
from demuse_ros.model.checkpoint import save_policy  # noqa: E402
from demuse_ros.model.data import (  # noqa: E402
    EpisodeWindows,
    NormalizationStats,
    synthetic_episodes,
)
from demuse_ros.model.diffusion import DDIMSampler  # noqa: E402
from demuse_ros.model.dit import DeMUSE  # noqa: E402
from demuse_ros.model.policy import DeMUSEPolicy  # noqa: E402

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demuse-cache")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    episodes = synthetic_episodes(2, 64, ticks=6)
    stats = NormalizationStats.compute(EpisodeWindows(episodes, 4, 1))
    torch.manual_seed(0)
    model = randomize(DeMUSE(PRESETS["tiny"]))
    ae = randomize(ConvAutoencoder(ConvAutoencoderConfig(base_channels=4)))
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    return save_policy(folder, model.state_dict(), preset("tiny"), stats, ae)


def observation(seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 255, (1, 80, 96, 3), dtype=np.uint8),
        rng.uniform(0.3, 1.2, (1, 80, 96)).astype(np.float32),
        rng.normal(0, 5, (1, 6)),
        rng.uniform(-0.5, 0.5, (1, 7)),
        [2],
    )


# ---------------------------------------------------------------------------- errors
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: its absence cannot be tested")
def test_missing_tensorrt_names_the_alternatives() -> None:
    assert "not installed" in available_backends()["tensorrt"]
    model = DeMUSE(PRESETS["tiny"])
    with pytest.raises(BackendUnavailable) as err:
        make_denoiser("tensorrt", model)
    msg = str(err.value)
    assert "TensorRT" in msg and "not installed" in msg
    assert "'torch'" in msg and "'onnxruntime'" in msg


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_tensorrt_module_error_without_the_factory() -> None:
    """The backend class itself (used directly) fails as clearly as the factory."""
    from demuse_ros.backends.trt_backend import TensorRTDenoiser

    with pytest.raises(BackendUnavailable, match="use the 'torch' or 'onnxruntime' backend"):
        TensorRTDenoiser(DeMUSE(PRESETS["tiny"]), DIFFUSION_PRESETS["tiny"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_options_without_a_gpu_are_clear_errors(cache_dir: Path) -> None:
    model = DeMUSE(PRESETS["tiny"])
    with pytest.raises(BackendUnavailable, match="provider='cpu'"):
        make_denoiser("onnxruntime", model, provider="cuda", cache_dir=cache_dir)
    with pytest.raises(BackendUnavailable, match="CUDA"):
        make_denoiser("torch", model, compile=True, cuda_graphs=True)
    with pytest.raises(BackendUnavailable, match="CUDA"):
        make_denoiser("torch", model, compile=True, precision="bf16")


def test_unknown_backends_and_options_are_named() -> None:
    model = DeMUSE(PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"unknown backend 'tvm'.*torch, torch-compile"):
        make_denoiser("tvm", model)
    with pytest.raises(ValueError, match=r"unknown option.*warp_speed.*provider"):
        make_denoiser("onnxruntime", model, warp_speed=True)
    with pytest.raises(ValueError, match="graph 'fused'"):
        make_denoiser("onnxruntime", model, graph="fused")
    with pytest.raises(ValueError, match="does not match provider"):
        make_denoiser("onnxruntime", model, device="cuda")
    with pytest.raises(TypeError, match="checkpoint folder"):
        make_denoiser("torch", 42)


def test_fixed_batch_and_step_ranges_are_checked(cache_dir: Path) -> None:
    model = randomize(DeMUSE(PRESETS["tiny"]))
    d = make_denoiser("torch", model, diffusion=DIFFUSION_PRESETS["tiny"])
    cond = d.dummy_conditions()
    x = d.initial_noise(cond)
    with pytest.raises(ValueError, match=r"within \[0, 8\]"):
        d.run_steps(cond, x, 0, 9)
    with pytest.raises(ValueError, match="batch 2"):
        d.run_steps(cond._replace(state=cond.state.repeat(2, 1)), x, 0, 8)
    assert d.run_steps(cond, x, 0, 0) is x
    with pytest.raises(ValueError, match=r"evaluations are 0 \.\. 7"):
        d.noise(cond, x._replace(step=8))


# ---------------------------------------------------------------------------- the policy
def test_torch_backend_policy_is_demuse_policy(checkpoint: Path) -> None:
    reference = DeMUSEPolicy.load(checkpoint)
    policy = BackendPolicy.load(checkpoint, backend="torch")
    obs = observation(1)
    a = reference.predict(*obs, generator=torch.Generator().manual_seed(7))
    b = policy.predict(*obs, generator=torch.Generator().manual_seed(7))
    assert a.shape == (1, 4, 7) and np.array_equal(a, b)


def test_onnxruntime_policy_predicts_like_torch_and_splits(
    checkpoint: Path, cache_dir: Path
) -> None:
    reference = BackendPolicy.load(checkpoint, backend="torch")
    policy = BackendPolicy.load(checkpoint, backend="onnxruntime", cache_dir=cache_dir)
    assert policy.backend == "onnxruntime" and policy.n_steps == 8
    # The checkpoint's verified weights hash names the export (no re-hashing of tensors).
    assert (
        policy.denoiser.graphs.key["model"]
        != SamplerGraphs(policy.denoiser.model, policy.denoiser.sampler, 1, cache_dir).key["model"]
    )
    for seed in (1, 2):
        obs = observation(seed)
        a = reference.predict(*obs, generator=torch.Generator().manual_seed(seed))
        b = policy.predict(*obs, generator=torch.Generator().manual_seed(seed))
        # 1e-4 normalized (see test_backends_parity) times the action range.
        span = policy.checkpoint.normalization.actions.scale
        np.testing.assert_allclose(b, a, rtol=0, atol=float(np.max(span)) * 2e-4)
    # Speculative inference through the policy: predicted observation, then the real one.
    policy.prepare([(0, 6), (6, 8)])
    real = policy.conditions(*observation(3))
    guess = policy.conditions(*observation(4))
    x = policy.run_steps(guess, policy.initial_noise(guess), 0, 6)
    assert policy.denoiser.predicted_latents(x).shape == (1, 4, 8, 8)
    chunk = policy.unnormalize(policy.run_steps(real, x, 6, 8), real)
    assert chunk.shape == (1, 4, 7) and np.isfinite(chunk).all()


def test_onnxruntime_keeps_every_bound_input_alive_through_the_run(
    checkpoint: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IOBinding takes addresses: a strided input made contiguous for the binding must
    live until ``run_with_iobinding`` returns (a freed temporary let the outputs reuse its
    memory and the chunk came back NaN, now and then)."""
    import weakref

    from demuse_ros.backends.ort_backend import OnnxRuntimeDenoiser

    policy = BackendPolicy.load(checkpoint, backend="onnxruntime", cache_dir=cache_dir)
    denoiser = policy.denoiser
    bound: list[weakref.ref] = []
    real_bind = OnnxRuntimeDenoiser._bind

    def recording_bind(self, io, name, t, output=False):
        bound.append(weakref.ref(t))
        return real_bind(self, io, name, t, output)

    class CheckedSession:
        def __init__(self, session) -> None:
            self.session = session

        def __getattr__(self, name: str):
            return getattr(self.session, name)

        def run_with_iobinding(self, io) -> None:
            dead = sum(ref() is None for ref in bound)
            assert bound and dead == 0, f"{dead} of {len(bound)} bound tensors were freed"
            self.session.run_with_iobinding(io)
            bound.clear()

    monkeypatch.setattr(OnnxRuntimeDenoiser, "_bind", recording_bind)
    denoiser._sessions = {k: CheckedSession(s) for k, s in denoiser._sessions.items()}
    cond = policy.conditions(*observation(5))
    strided = cond._replace(rgb_latent=cond.rgb_latent.transpose(2, 3))
    assert not strided.rgb_latent.is_contiguous()
    out = policy.run_steps(strided, policy.initial_noise(strided), 0, policy.n_steps)
    assert np.isfinite(policy.unnormalize(out, strided)).all()


# ---------------------------------------------------------------------------- ONNX cache
def synthetic_step_graph(path: Path) -> None:
    """A stand-in for the exported step with its interface: ``x_a_next = x_a · coef[0] +
    Σ modulation + W`` (W an initializer), ``eps_action = x_a``."""
    from onnx import TensorProto, helper, numpy_helper, save

    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", 7, [], [0])),
        helper.make_node("Gather", ["coef", "zero"], ["c0"], axis=0),
        helper.make_node("Mul", ["x_a", "c0"], ["scaled"]),
        helper.make_node("ReduceSum", ["modulation"], ["m"], keepdims=0),
        helper.make_node("Add", ["scaled", "m"], ["shifted"]),
        helper.make_node("Add", ["shifted", "W"], ["x_a_next"]),
        helper.make_node("Identity", ["x_a"], ["eps_action"]),
    ]
    w = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 2, 4), "W")
    graph = helper.make_graph(
        nodes,
        "step",
        [
            helper.make_tensor_value_info("state", f32, [1, 3]),
            helper.make_tensor_value_info("x_a", f32, [1, 2, 4]),
            helper.make_tensor_value_info("modulation", f32, [1, 2, 3]),
            helper.make_tensor_value_info("coef", f32, [9]),
        ],
        [
            helper.make_tensor_value_info("x_a_next", f32, [1, 2, 4]),
            helper.make_tensor_value_info("eps_action", f32, [1, 2, 4]),
        ],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    save(model, str(path))


def test_unroll_onnx_chains_the_steps_and_shares_the_weights(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from demuse_ros.model.sampler_export import unroll_onnx

    synthetic_step_graph(tmp_path / "step.onnx")
    unroll_onnx(tmp_path / "step.onnx", 3, tmp_path / "steps3.onnx")
    graph = onnx.load(str(tmp_path / "steps3.onnx")).graph
    assert [i.name for i in graph.initializer] == ["W"]  # shared, not copied per step
    assert [o.name for o in graph.output] == ["x_a_next"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 4)).astype(np.float32)
    mod = rng.normal(size=(3, 1, 2, 3)).astype(np.float32)
    coef = rng.normal(size=(3, 9)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "steps3.onnx"))
    state = np.zeros((1, 3), np.float32)
    (got,) = session.run(None, {"state": state, "x_a": x, "modulation": mod, "coef": coef})
    w = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 2, 4)
    for j in range(3):
        x = x * coef[j, 0] + mod[j].sum() + w
    np.testing.assert_allclose(got, x, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="next to the step graph"):
        unroll_onnx(tmp_path / "step.onnx", 2, tmp_path / "elsewhere" / "s.onnx")


def test_onnx_exports_are_cached_verified_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demuse_ros.backends import artifacts

    exports = []

    def fake_export(
        model: DeMUSE, sampler: DDIMSampler, path: Path, batch: int, opset: int
    ) -> Path:
        exports.append(path)
        if len(exports) == 3:
            raise RuntimeError("exporter crashed")
        synthetic_step_graph(path)
        return path

    monkeypatch.setattr(artifacts, "export_sampler_onnx", fake_export)
    model = randomize(DeMUSE(PRESETS["tiny"]), seed=3).eval()
    sampler = DDIMSampler(model, DIFFUSION_PRESETS["tiny"])
    graphs = SamplerGraphs(model, sampler, 1, tmp_path)
    step, unrolled = graphs.step(), graphs.unrolled(8)
    digest, mtime = graphs.sha256(unrolled), unrolled.stat().st_mtime_ns
    assert len(exports) == 1
    # Another process reuses both graphs (nothing exported or rewritten).
    again = SamplerGraphs(model, sampler, 1, tmp_path)
    assert again.step() == step and again.sha256(again.unrolled(8)) == digest
    assert len(exports) == 1 and unrolled.stat().st_mtime_ns == mtime
    # Other weights, batch or opset: another entry.
    with torch.no_grad():
        bias = model.final.action_head.bias
        saved = bias.detach().clone()
        bias.add_(1.0)
        assert SamplerGraphs(model, sampler, 1, tmp_path).dir != graphs.dir
        bias.copy_(saved)
    assert SamplerGraphs(model, sampler, 2, tmp_path).dir != graphs.dir
    assert SamplerGraphs(model, sampler, 1, tmp_path, opset=20).dir != graphs.dir
    # A corrupt unrolled graph is rebuilt from the step graph (no export).
    data = bytearray(unrolled.read_bytes())
    data[len(data) // 2] ^= 0xFF
    unrolled.write_bytes(bytes(data))
    fresh = SamplerGraphs(model, sampler, 1, tmp_path)
    assert fresh.sha256(fresh.unrolled(8)) == digest and len(exports) == 1
    # A corrupt step graph is exported again; a crashed export leaves nothing behind.
    with open(step, "r+b") as f:
        f.seek(40)
        f.write(b"\0\0\0\0")
    fresh = SamplerGraphs(model, sampler, 1, tmp_path)
    assert fresh.step() == step and len(exports) == 2
    assert fresh.sha256(fresh.unrolled(8)) == digest
    bias = model.final.action_head.bias
    with torch.no_grad():
        bias.add_(2.0)
    crashed = SamplerGraphs(model, sampler, 1, tmp_path)
    with pytest.raises(RuntimeError, match="crashed"):
        crashed.step()
    assert not crashed.dir.exists() or not (crashed.dir / STEP_GRAPH).exists()
    leftovers = [p for p in (tmp_path / "onnx").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert crashed.step().exists() and len(exports) == 4


def test_external_weights_are_shared_by_the_unrolled_graph(tmp_path: Path) -> None:
    """``xl`` keeps its weights next to the step graph (protobufs stop at 2 GB): the
    unrolled graph points at the same data file and computes the same chunk."""
    import onnxruntime as ort

    from demuse_ros.model.sampler_export import (
        SamplerStep,
        SamplerSteps,
        export_sampler_onnx,
        sampler_example_inputs,
        sampler_input_names,
        unroll_onnx,
    )

    model = randomize(DeMUSE(PRESETS["tiny"]), seed=4).eval()
    sampler = DDIMSampler(model, DIFFUSION_PRESETS["tiny"])
    export_sampler_onnx(model, sampler, tmp_path / "step.onnx", external_data=True)
    unroll_onnx(tmp_path / "step.onnx", 8, tmp_path / "steps8.onnx")
    data = tmp_path / "step.onnx.data"
    assert data.stat().st_size > (tmp_path / "step.onnx").stat().st_size  # weights live there
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step.onnx",
        "step.onnx.data",
        "steps8.onnx",
    ]
    inputs = sampler_example_inputs(model, sampler, steps=8)
    session = ort.InferenceSession(str(tmp_path / "steps8.onnx"))
    names = sampler_input_names(model.cfg)
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    with torch.no_grad():
        ref = SamplerSteps(SamplerStep(model, sampler.clip_rgb, sampler.clip_action), 8)(*inputs)
    np.testing.assert_allclose(got[1], ref[1].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        got[0], ref[0].numpy(), rtol=1e-5, atol=1e-5 * float(ref[0].abs().max())
    )


def test_wrench_history_model_runs_on_onnxruntime_like_torch(
    tmp_path: Path, cache_dir: Path
) -> None:
    """``model.wrench_history`` widens the force token's input (6·K) through the ONNX
    export; a wrench of one tick is refused with what the model takes."""
    from dataclasses import replace

    k = 3
    episodes = synthetic_episodes(2, 64, ticks=6)
    for i, ep in enumerate(episodes):  # every axis varies: sane Z-scores
        ep.wrench[:] = np.random.default_rng(i).normal(0, 5, ep.wrench.shape)
    stats = NormalizationStats.compute(EpisodeWindows(episodes, 4, 1, wrench_history=k))
    cfg = preset("tiny")
    cfg = replace(  # x0 clipping off: random weights would pin every action to the clip
        cfg,
        model=replace(cfg.model, wrench_history=k),
        diffusion=replace(cfg.diffusion, clip_action_x0=0.0),
    )
    torch.manual_seed(0)
    model = randomize(DeMUSE(cfg.model))
    ae = randomize(ConvAutoencoder(ConvAutoencoderConfig(base_channels=4)))
    folder = save_policy(tmp_path / "k3", model.state_dict(), cfg, stats, ae)
    reference = BackendPolicy.load(folder, backend="torch")
    policy = BackendPolicy.load(folder, backend="onnxruntime", cache_dir=cache_dir)
    rgb, depth, wrench, state, task = observation(5)
    history = np.concatenate([wrench * 0.0, wrench * 0.5, wrench], axis=1)  # (1, 18)
    a = reference.predict(rgb, depth, history, state, task, torch.Generator().manual_seed(1))
    b = policy.predict(rgb, depth, history, state, task, torch.Generator().manual_seed(1))
    span = float(np.max(policy.checkpoint.normalization.actions.scale))
    np.testing.assert_allclose(b, a, rtol=0, atol=span * 2e-4)
    # each tick is normalized alike, oldest first, the current one last
    cond = policy.conditions(rgb, depth, history, state, task).wrench
    assert cond.shape == (1, 18)
    w = torch.as_tensor(wrench, dtype=torch.float32)
    torch.testing.assert_close(cond[:, 12:], stats.wrench.normalize(w))
    torch.testing.assert_close(cond[:, 6:12], stats.wrench.normalize(0.5 * w))
    torch.testing.assert_close(cond[:, :6], stats.wrench.normalize(0.0 * w))
    with pytest.raises(ValueError, match=r"\(batch, 18\).*wrench_history"):
        policy.predict(rgb, depth, wrench, state, task)
