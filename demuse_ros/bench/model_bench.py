"""``demuse bench model``: parameters, FLOPs and CPU latency of the policy model per preset.

Per preset: parameters (all and per-token active), tokens, GFLOPs of one
forward (DiT's convention, multiply-adds; top-k routed and all-experts), the CPU
latency of one denoiser forward at batch 1 in eval mode (the export path: every
expert computed and masked), and for the non-xl presets the latency of a whole
DDIM chunk (the preset's steps) and of encoding one frame with the built-in
autoencoder. Weights are freshly initialised: latency does not depend on them.
The ``cpu`` preset's chunk is compared to its 60 ms goal (a 10 Hz loop on 2 cores).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from demuse_ros.model.autoencoder import ConvAutoencoder, ConvAutoencoderConfig
from demuse_ros.model.config import DIFFUSION_PRESETS, PRESETS
from demuse_ros.model.diffusion import Conditions, DDIMSampler
from demuse_ros.model.dit import DeMUSE
from demuse_ros.model.export import DenoiserStep, example_inputs
from demuse_ros.model.flops import counts, xl_vs_paper

GOAL_CPU_CHUNK_MS = 60.0
_WARMUP = 3


def _time_ms(fn: Any, repeats: int) -> dict[str, float]:
    for _ in range(min(_WARMUP, repeats)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(times)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90))}


def _conditions(model: DeMUSE, inputs: tuple[torch.Tensor, ...]) -> Conditions:
    cfg, named = model.cfg, dict(zip(DenoiserStep(model).names, inputs, strict=True))
    rgb = named.get("rgb")
    return Conditions(
        rgb_latent=None if rgb is None else rgb[:, : cfg.latent_channels],
        depth=named.get("depth"),
        wrench=named.get("wrench"),
        state=named["action"][:, : cfg.state_dim],
        task=named["task"],
    )


@torch.inference_mode()
def _measure(name: str, repeats: int) -> dict[str, Any]:
    cfg = PRESETS[name]
    torch.manual_seed(0)
    model = DeMUSE(cfg).eval()
    inputs = example_inputs(cfg)
    step = DenoiserStep(model)
    out: dict[str, Any] = {"forward_ms": _time_ms(lambda: step(*inputs), repeats)}
    if name != "xl":
        diffusion = DIFFUSION_PRESETS[name]
        sampler = DDIMSampler(model, diffusion)
        cond = _conditions(model, inputs)
        out["ddim_steps"] = sampler.n_evaluations
        out["chunk_ms"] = _time_ms(lambda: sampler.sample(cond), max(3, repeats // 4))
        ae = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=cfg.latent_channels)).eval()
        frame = torch.rand(1, 3, cfg.image_size_px, cfg.image_size_px) * 2 - 1
        out["encode_ms"] = _time_ms(lambda: ae.encode(frame), repeats)
    return out


def run(
    presets: list[str], repeats: int = 30, xl_repeats: int = 3, threads: int | None = None
) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    table = {}
    for name in presets:
        c = counts(PRESETS[name])
        row: dict[str, Any] = {
            "params": c.params,
            "active_params": c.active_params,
            "tokens": c.tokens,
            "gflops": c.gmacs_routed,
            "gflops_all_experts": c.gmacs_dense,
        }
        n = xl_repeats if name == "xl" else repeats
        if n > 0:
            row.update(_measure(name, n))
        table[name] = row
        if name == "xl":
            result["xl_vs_paper"] = xl_vs_paper(PRESETS["xl"], c)
    result["presets"] = table
    cpu = table.get("cpu", {})
    if "chunk_ms" in cpu:
        result["cpu_chunk_ms_p50"] = cpu["chunk_ms"]["p50"]
        result["cpu_chunk_p50_vs_goal"] = cpu["chunk_ms"]["p50"] / GOAL_CPU_CHUNK_MS
    return result


def table(result: dict[str, Any]) -> str:
    """The result as a text table (for a terminal)."""
    head = (
        f"{'preset':<7}{'params':>10}{'active':>10}{'tokens':>7}{'GFLOPs':>9}{'all-exp':>9}"
        f"{'fwd p50 ms':>11}{'steps':>6}{'chunk p50 ms':>13}{'encode ms':>10}"
    )
    lines = [f"torch {result['torch']}, {result['threads']} threads", head]
    for name, r in result["presets"].items():
        fwd, chunk, enc = (
            "-" if key not in r else f"{r[key]['p50']:.2f}"
            for key in ("forward_ms", "chunk_ms", "encode_ms")
        )
        lines.append(
            f"{name:<7}{r['params'] / 1e6:>9.2f}M{r['active_params'] / 1e6:>9.2f}M{r['tokens']:>7}"
            f"{r['gflops']:>9.3f}{r['gflops_all_experts']:>9.3f}"
            f"{fwd:>11}{r.get('ddim_steps', '-'):>6}{chunk:>13}{enc:>10}"
        )
    if "xl_vs_paper" in result:
        lines.append(result["xl_vs_paper"])
    if "cpu_chunk_p50_vs_goal" in result:
        lines.append(
            f"cpu chunk p50 {result['cpu_chunk_ms_p50']:.1f} ms = "
            f"{result['cpu_chunk_p50_vs_goal']:.2f} × the {GOAL_CPU_CHUNK_MS:.0f} ms goal"
        )
    return "\n".join(lines)
