"""``demuse bench policy``: one action chunk's full denoising on every available backend.

All backends run in one process on the same model (fresh weights, every parameter
non-zero so the outputs are not trivially equal), the same observation and the same
initial noise. Per backend: setup time (export, build or load, compile), the latency of
a whole chunk (``n_steps`` evaluations from noise to the final actions on the host: GPU
work is synchronized before the clock stops) and of one step (p50, p99), the largest
action difference from torch eager, and the speedup over torch eager measured in the
same run. The backends are built first and then timed round robin (one chunk each in
turn), so load from other processes that comes and goes hits all of them alike. On the
``cpu`` preset the best backend is checked against the goals (≤ 60 ms p50 per chunk,
≥ 1.5× torch eager); on a GPU the chunk is compared with the memory-bandwidth floor
(weights read once per step at the measured copy bandwidth).

Importing this module does not import torch (the CLI builds its parser from it).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

import numpy as np

GOAL_CPU_CHUNK_MS = 60.0
GOAL_SPEEDUP = 1.5
_WARMUP = 3
_ROUNDS = 5  # timing blocks per backend, interleaved
_SETTLE_S = 0.25  # pause between blocks of different backends

log = logging.getLogger(__name__)

#: variant label -> (backend, options, needs)   needs: "cpu", "cuda" or "any"
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "torch": ("torch", {}, "any"),
    "torch-compile": ("torch-compile", {"cuda_graphs": False}, "cpu"),
    "onnxruntime": ("onnxruntime", {"graph": "loop"}, "cpu"),
    "onnxruntime-step": ("onnxruntime", {"graph": "step"}, "cpu"),
    "onnxruntime-2threads": ("onnxruntime", {"graph": "loop", "threads": 2, "spin": True}, "cpu"),
    "torch-compile-graphs": ("torch-compile", {"cuda_graphs": True}, "cuda"),
    "torch-compile-graphs-bf16": (
        "torch-compile",
        {"cuda_graphs": True, "precision": "bf16"},
        "cuda",
    ),
    "onnxruntime-cuda": ("onnxruntime", {"provider": "cuda", "graph": "loop"}, "cuda"),
    "onnxruntime-trt-fp16": (
        "onnxruntime",
        {"provider": "tensorrt", "graph": "loop", "precision": "fp16"},
        "cuda",
    ),
    "tensorrt-fp16": ("tensorrt", {"precision": "fp16", "graph": "loop"}, "cuda"),
    "tensorrt-bf16": ("tensorrt", {"precision": "bf16", "graph": "loop"}, "cuda"),
    "tensorrt-fp16-step": ("tensorrt", {"precision": "fp16", "graph": "step"}, "cuda"),
}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help="model preset: cpu (default), tiny or xl")
    p.add_argument(
        "--backends",
        default="",
        help="comma-separated variants (default: every one that can run here): "
        + ", ".join(VARIANTS),
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (default): cuda when a GPU is present, else cpu",
    )
    p.add_argument("--repeats", type=int, default=50, help="timed chunks per backend (default 50)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch's CPU threads (default: torch's choice)"
    )
    p.add_argument("--cache-dir", default=None, help="ONNX/engine cache (default: the user cache)")


def main(args: argparse.Namespace) -> int:
    from demuse_ros.model.config import PRESETS

    if args.preset not in PRESETS:
        raise SystemExit(f"demuse: unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"demuse: unknown backend(s) {unknown}; known: {', '.join(VARIANTS)}")
    result = run(
        args.preset,
        names or None,
        repeats=max(1, args.repeats),
        threads=args.threads or None,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    if args.json:
        from demuse_ros.cli_common import _dumps

        print(_dumps(result))
    else:
        print(table(result))
    return 0


# ---------------------------------------------------------------------------- measuring
def _percentiles(times_ms: list[float]) -> tuple[float, float]:
    a = np.asarray(times_ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _nonzero_weights(model: Any, seed: int = 0) -> Any:
    """Small random values for the zero-initialised parameters (adaLN-Zero, heads), so
    every backend's output depends on every weight and their differences mean something."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _conditions(cfg: Any, device: Any, seed: int = 1) -> Any:
    import torch

    from demuse_ros.model.diffusion import Conditions

    g = torch.Generator().manual_seed(seed)
    h, mods = cfg.latent_size, cfg.modalities
    cond = Conditions(
        torch.randn(1, cfg.latent_channels, h, h, generator=g) if "rgb" in mods else None,
        torch.randn(1, 1, h, h, generator=g) if "depth" in mods else None,
        torch.randn(1, cfg.wrench_in_dim, generator=g) if "force" in mods else None,
        torch.rand(1, cfg.state_dim, generator=g) * 2 - 1,
        torch.tensor([1]),
    )
    return Conditions(*(None if x is None else x.to(device) for x in cond))


def _variants(names: list[str] | None, device: str) -> list[str]:
    from demuse_ros.backends import unavailable_reason

    if names is not None:
        return ["torch", *[n for n in names if n != "torch"]]
    out = []
    for label, (backend, _, needs) in VARIANTS.items():
        if needs not in ("any", device) or unavailable_reason(backend) is not None:
            continue
        out.append(label)
    return out


def _weight_bytes_per_step(model: Any) -> int:
    """Parameters a step reads (the AdaMN, timestep and task MLPs are precomputed per task)."""
    skip = ("adamn", "t_embed", "task_embed")
    return sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))


def _copy_bandwidth_gb_s(device: Any) -> float:
    """Device memory bandwidth from timing a 1 GiB copy (read + write)."""
    import torch

    n = 2**28  # float32 elements: 1 GiB
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / reps
    return 2 * a.numel() * a.element_size() / dt / 1e9


class _Timed:
    """One backend under measurement: its chunk and single-step calls and their times."""

    def __init__(self, denoiser: Any, cond: Any, x0: Any) -> None:
        self.d, self.cond, self.x0 = denoiser, cond, x0
        n, q = denoiser.n_steps, denoiser.q
        # One step is a range of q evaluations (DUST allows no shorter one), per evaluation.
        denoiser.prepare([(j, j + q) for j in range(0, n, q)])
        self.states = [x0]
        for j in range(0, n - q, q):
            self.states.append(denoiser.run_steps(cond, self.states[-1], j, j + q))
        self.chunk_ms: list[float] = []
        self.step_ms: list[float] = []
        self.actions = self.chunk()  # warm-up
        for _ in range(_WARMUP - 1):
            self.chunk()

    def chunk(self) -> Any:
        state = self.d.run_steps(self.cond, self.x0, 0, self.d.n_steps)
        return self.d.actions(state).float().cpu()  # synchronizes GPU work

    def time_chunk(self) -> None:
        t0 = time.perf_counter()
        self.chunk()
        self.chunk_ms.append((time.perf_counter() - t0) * 1e3)

    def time_step(self, r: int) -> None:
        q = self.d.q
        i = r % len(self.states)
        t0 = time.perf_counter()
        out = self.d.run_steps(self.cond, self.states[i], i * q, i * q + q)
        self.d.actions(out).cpu()
        self.step_ms.append((time.perf_counter() - t0) * 1e3 / q)

    def summary(self, ref_actions: Any) -> dict[str, Any]:
        p50, p99 = _percentiles(self.chunk_ms)
        s50, s99 = _percentiles(self.step_ms)
        return {
            "chunk_ms_p50": p50,
            "chunk_ms_p99": p99,
            "step_ms_p50": s50,
            "step_ms_p99": s99,
            "max_abs_action_diff_vs_torch": float((self.actions - ref_actions).abs().max()),
        }


def run(
    preset: str,
    names: list[str] | None = None,
    repeats: int = 50,
    threads: int | None = None,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    import torch

    from demuse_ros.backends import make_denoiser
    from demuse_ros.backends.base import BackendUnavailable
    from demuse_ros.model.config import DIFFUSION_PRESETS, PRESETS
    from demuse_ros.model.dit import DeMUSE

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    model = _nonzero_weights(DeMUSE(cfg).eval(), seed)
    cond = _conditions(cfg, device)
    result: dict[str, Any] = {
        "preset": preset,
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
    }
    rows: list[dict[str, Any]] = []
    timed: list[tuple[dict[str, Any], _Timed]] = []
    x0 = None
    for label in _variants(names, device):
        backend, options, _ = VARIANTS[label]
        opts = dict(options)
        if backend in ("onnxruntime", "tensorrt"):
            opts["cache_dir"] = cache_dir
        if backend != "onnxruntime":  # onnxruntime's device follows its provider
            opts.setdefault("device", device)
        row: dict[str, Any] = {"backend": label}
        rows.append(row)
        try:
            t0 = time.perf_counter()
            d = make_denoiser(backend, model, diffusion=DIFFUSION_PRESETS[preset], **opts)
            d.prepare()
            row["setup_s"] = time.perf_counter() - t0
            row["description"] = d.describe()
            if x0 is None:
                x0 = d.initial_noise(cond, torch.Generator(device=device).manual_seed(seed))
            timed.append((row, _Timed(d, cond, x0)))
        except BackendUnavailable as err:
            log.warning("%s: %s", label, err)
            row["error"] = str(err)
        except Exception as err:  # a backend that fails is reported, the others still run
            log.exception("backend %s failed", label)
            row["error"] = f"{type(err).__name__}: {err}"
    # Round robin in blocks: background load that comes and goes hits every backend
    # alike, so the ratios hold when the absolute numbers drift (this machine is shared).
    # Before each block: a pause for the previous backend's thread pool to stop
    # spin-waiting (torch's OpenMP threads spin for a while after each parallel region and
    # would steal a core from the next backend) and one untimed chunk.
    block = max(1, repeats // _ROUNDS)
    n_step_calls = max(repeats, max((len(t.states) for _, t in timed), default=0))
    for first in range(0, repeats, block):
        for _, t in timed:
            time.sleep(_SETTLE_S)
            t.chunk()
            for _ in range(min(block, repeats - first)):
                t.time_chunk()
            for r in range(first, min(first + block, n_step_calls)):
                t.time_step(r)
    ref = next((t for row, t in timed if row["backend"] == "torch"), None)
    for row, t in timed:
        row.update(t.summary(ref.actions if ref is not None else t.actions))
    eager_p50 = next((r["chunk_ms_p50"] for r in rows if r["backend"] == "torch"), None)
    for row in rows:
        if "chunk_ms_p50" in row and eager_p50:
            row["torch_eager_chunk_ms_p50"] = eager_p50
            row["speedup_vs_torch_eager"] = eager_p50 / row["chunk_ms_p50"]
    result["n_steps"] = DIFFUSION_PRESETS[preset].ddim_steps * DIFFUSION_PRESETS[preset].dust_q
    result["rows"] = rows
    measured = [r for r in rows if "chunk_ms_p50" in r]
    if measured:
        best = min(measured, key=lambda r: r["chunk_ms_p50"])
        result["best"] = {k: best[k] for k in ("backend", "chunk_ms_p50", "speedup_vs_torch_eager")}
        if preset == "cpu" and device == "cpu":
            result["goals"] = {
                "best_chunk_ms_p50_max": GOAL_CPU_CHUNK_MS,
                "best_speedup_min": GOAL_SPEEDUP,
                "chunk_ms_met": best["chunk_ms_p50"] <= GOAL_CPU_CHUNK_MS,
                "speedup_met": best["speedup_vs_torch_eager"] >= GOAL_SPEEDUP,
            }
    if device == "cuda":
        result["floor"] = _floor(model, result["n_steps"], device, rows)
    return result


def _floor(model: Any, n_steps: int, device: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The memory-bandwidth floor of a chunk and each row's distance from it."""
    params = _weight_bytes_per_step(model)
    bw = _copy_bandwidth_gb_s(device)
    floor = {
        "weights_read_per_step_params": params,
        "copy_bandwidth_gb_s": bw,
        "floor_ms_fp16": 2 * params * n_steps / (bw * 1e9) * 1e3,
        "floor_ms_fp32": 4 * params * n_steps / (bw * 1e9) * 1e3,
    }
    for row in rows:
        if "chunk_ms_p50" in row:
            low = any(s in row.get("description", "") for s in ("fp16", "bf16"))
            ref = floor["floor_ms_fp16"] if low else floor["floor_ms_fp32"]
            row["chunk_vs_bandwidth_floor"] = row["chunk_ms_p50"] / ref
    return floor


def table(result: dict[str, Any]) -> str:
    """The result as a text table."""
    gpu = f", {result['gpu']}" if result.get("gpu") else ""
    lines = [
        f"preset {result['preset']} ({result['n_steps']} steps) on {result['device']}{gpu}; "
        f"torch {result['torch']}, {result['threads']} threads",
        f"{'backend':<27}{'setup s':>8}{'chunk p50':>10}{'p99':>8}{'step p50':>9}"
        f"{'× eager':>8}{'Δ vs torch':>11}",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['backend']:<27} failed: {r['error']}")
            continue
        lines.append(
            f"{r['backend']:<27}{r['setup_s']:>8.1f}{r['chunk_ms_p50']:>10.2f}"
            f"{r['chunk_ms_p99']:>8.2f}{r['step_ms_p50']:>9.3f}"
            f"{r.get('speedup_vs_torch_eager', float('nan')):>8.2f}"
            f"{r['max_abs_action_diff_vs_torch']:>11.2e}"
        )
    if "goals" in result:
        g, b = result["goals"], result["best"]
        met = {True: "met", False: "NOT met"}
        lines.append(
            f"best: {b['backend']} {b['chunk_ms_p50']:.1f} ms p50 "
            f"(goal ≤ {g['best_chunk_ms_p50_max']:.0f}: {met[g['chunk_ms_met']]}), "
            f"{b['speedup_vs_torch_eager']:.2f}× torch eager "
            f"(goal ≥ {g['best_speedup_min']}: {met[g['speedup_met']]})"
        )
    if "floor" in result:
        f = result["floor"]
        lines.append(
            f"bandwidth floor: {f['floor_ms_fp16']:.2f} ms fp16 / {f['floor_ms_fp32']:.2f} ms "
            f"fp32 per chunk at {f['copy_bandwidth_gb_s']:.0f} GB/s measured"
        )
    return "\n".join(lines)
