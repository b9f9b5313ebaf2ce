"""GPU backends: TensorRT engines (``tensorrt`` marker) and CUDA torch / onnxruntime (``gpu``).

Both skip with the reason where TensorRT or a GPU is missing (``conftest.py``). Tolerances
against CPU torch eager: float32 on the GPU (cuDNN may use TF32 for the patch
convolutions) ``|Δa| ≤ 1e-3``; fp16/bf16 engines ``|Δa| ≤ 5e-2`` normalized (actions
span [−1, 1]) with ``|Δε| ≤ 2e-2 + 2e-2·|ε|`` per step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demuse_ros.model.config import DIFFUSION_PRESETS

torch = pytest.importorskip("torch", reason="the backends need the 'model' extra (torch)")
pytest.importorskip("onnxruntime", reason="the 'model' extra (onnxruntime)")

from _backend_helpers import (  # noqa: E402
    Tolerance,
    check_parity,
    check_split,
    conditions,
    make_model,
)

from demuse_ros.backends import make_denoiser  # noqa: E402
from demuse_ros.backends.engine_cache import ENGINE_FILE  # noqa: E402

GPU_FP32 = Tolerance(eps_atol=1e-3, eps_rtol=1e-3, action_atol=1e-3, latent_rtol=1e-4)
LOW_PRECISION = Tolerance(eps_atol=2e-2, eps_rtol=2e-2, action_atol=5e-2, latent_rtol=2e-2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demuse-gpu-cache")


def reference(model):  # torch eager on the CPU: the numbers every backend is held to
    return make_denoiser("torch", model, diffusion=DIFFUSION_PRESETS["tiny"])


# ---------------------------------------------------------------------------- TensorRT
@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("graph", ["loop", "step"])
def test_tensorrt_fp32_matches_torch(cache_dir: Path, graph: str) -> None:
    model = make_model("tiny")
    trt = make_denoiser(
        "tensorrt",
        model,
        diffusion=DIFFUSION_PRESETS["tiny"],
        precision="fp32",
        graph=graph,
        cache_dir=cache_dir,
    )
    cpu = make_model("tiny")
    check_parity(reference(cpu), trt, cpu, seeds=(1, 2), tol=GPU_FP32)
    check_split(trt, reference(cpu), cpu, 3, exact=graph == "step", tol=GPU_FP32)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_tensorrt_low_precision_is_close(cache_dir: Path, precision: str) -> None:
    model = make_model("tiny")
    trt = make_denoiser(
        "tensorrt",
        model,
        diffusion=DIFFUSION_PRESETS["tiny"],
        precision=precision,
        cache_dir=cache_dir,
    )
    cpu = make_model("tiny")
    check_parity(reference(cpu), trt, cpu, seeds=(1,), tol=LOW_PRECISION)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engines_are_cached_and_corrupt_ones_rebuilt(cache_dir: Path) -> None:
    model = make_model("tiny", seed=5)
    opts = {"diffusion": DIFFUSION_PRESETS["tiny"], "precision": "fp16", "cache_dir": cache_dir}
    first = make_denoiser("tensorrt", model, **opts)
    assert first.built == {8: True}
    cond = conditions(model, 1)
    x0 = first.initial_noise(cond, torch.Generator().manual_seed(0))
    expected = first.run_steps(cond, x0, 0, 8).x_a
    second = make_denoiser("tensorrt", model, **opts)  # same key: loaded, not built
    assert second.built == {8: False}
    assert torch.equal(second.run_steps(cond, x0, 0, 8).x_a, expected)
    engine_file = next(Path(cache_dir, "engines", "tensorrt").glob(f"*/{ENGINE_FILE}"))
    for entry in Path(cache_dir, "engines", "tensorrt").glob(f"*/{ENGINE_FILE}"):
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    third = make_denoiser("tensorrt", model, **opts)  # corrupt: rebuilt, not loaded
    assert third.built == {8: True}
    assert engine_file.exists()
    other = make_denoiser("tensorrt", model, **(opts | {"precision": "bf16"}))
    assert other.built == {8: True}  # another key


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_cuda_graphs_change_nothing(cache_dir: Path) -> None:
    model = make_model("tiny")
    opts = {"diffusion": DIFFUSION_PRESETS["tiny"], "precision": "fp16", "cache_dir": cache_dir}
    graphs = make_denoiser("tensorrt", model, cuda_graphs=True, **opts)
    plain = make_denoiser("tensorrt", model, cuda_graphs=False, **opts)
    graphs.prepare([(0, 5), (5, 8)])
    for seed in (1, 2):  # the captured graphs read the new observation every time
        cond = conditions(model, seed, task=seed)
        x0 = graphs.initial_noise(cond, torch.Generator().manual_seed(seed))
        a = graphs.run_steps(cond, graphs.run_steps(cond, x0, 0, 5), 5, 8)
        b = plain.run_steps(cond, plain.run_steps(cond, x0, 0, 5), 5, 8)
        assert torch.equal(a.x_a, b.x_a)


# ---------------------------------------------------------------------------- CUDA torch / ORT
@pytest.mark.gpu
def test_torch_on_cuda_matches_cpu() -> None:
    cpu = make_model("tiny")
    cuda = make_denoiser(
        "torch", make_model("tiny"), diffusion=DIFFUSION_PRESETS["tiny"], device="cuda"
    )
    check_parity(reference(cpu), cuda, cpu, seeds=(1,), tol=GPU_FP32)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_compile_with_cuda_graphs(precision: str) -> None:
    cpu = make_model("tiny")
    compiled = make_denoiser(
        "torch",
        make_model("tiny"),
        diffusion=DIFFUSION_PRESETS["tiny"],
        device="cuda",
        compile=True,
        precision=precision,
    )
    assert compiled.cuda_graphs
    tol = GPU_FP32 if precision == "fp32" else LOW_PRECISION
    check_parity(reference(cpu), compiled, cpu, seeds=(1,), tol=tol)
    check_split(compiled, reference(cpu), cpu, 3, exact=True, tol=tol)


@pytest.mark.gpu
def test_onnxruntime_cuda_provider(cache_dir: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (pip install '.[gpu]')")
    cpu = make_model("tiny")
    ort = make_denoiser(
        "onnxruntime",
        make_model("tiny"),
        diffusion=DIFFUSION_PRESETS["tiny"],
        provider="cuda",
        cache_dir=cache_dir,
    )
    check_parity(reference(cpu), ort, cpu, seeds=(1,), tol=GPU_FP32)
    check_split(ort, reference(cpu), cpu, 3, exact=False, tol=GPU_FP32)
