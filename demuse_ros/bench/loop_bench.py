"""``demuse bench loop --sim``: the closed loop with a checkpoint, synchronous then SAI.

Two runs of ``cycles`` each against a fresh twin and drivers, the same
checkpoint and the same per-chunk noise: first synchronous inference, then
speculative asynchronous inference (SAI). Reported: the loop rate and deadline
misses of each, the blocking latency (real observation → chunk ready) p50/p99
of each, ``blocking_reduction = 1 − sai/sync`` (goal ≥ 0.5, the paper's
figure), and ``sai_action_dev``: how far SAI's chunks lie from synchronous
denoising of the same observations with the same noise (TCP position, mean and
max over all waypoints, in mm).

Without ``--policy`` a small ``cpu``-preset checkpoint is trained once on
synthetic data (about a minute) and cached: its actions are meaningless for the
twin's task (the arm holds when the safety filter refuses them), but its
compute is the ``cpu`` preset's, which is what this benchmark times.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from demuse_ros.runtime.inference import InferenceConfig
from demuse_ros.runtime.scheduler import RuntimeConfig

BLOCKING_REDUCTION_GOAL = 0.5


def cached_bench_checkpoint() -> str:
    """A briefly trained ``cpu``-preset checkpoint in the user cache (built once)."""
    from demuse_ros.model.train import TrainConfig, train

    cache = Path(os.environ.get("DEMUSE_CACHE_DIR", Path.home() / ".cache" / "demuse_ros"))
    out = cache / "bench_loop_cpu_checkpoint"
    if not (out / "model.safetensors").is_file():
        cfg = TrainConfig(
            preset="cpu",
            episodes=8,
            steps=20,
            autoencoder_steps=20,
            val_every=0,
            checkpoint_every=20,
        )
        train(cfg, out, resume=(out / "trainer.json").is_file(), progress=False)
    return str(out)


def run(
    cycles: int,
    sim_config: Any,
    *,
    policy: str | None = None,
    cell_config: Any = None,
    sai_steps: int = 6,
) -> dict[str, Any]:
    from demuse_ros.runtime.runner import run_sim

    folder = policy or cached_bench_checkpoint()
    results = {}
    for mode in ("sync", "sai"):
        runtime = dataclasses.replace(
            RuntimeConfig(), inference=InferenceConfig(mode=mode, sai_steps=sai_steps)
        )
        results[mode] = run_sim(
            sim_config,
            policy=folder,
            cell_config=cell_config,
            runtime_config=runtime,
            cycles=cycles,
            stop_when_done=False,
            measure_sai_deviation=(mode == "sai"),
        )
    sync, sai = results["sync"], results["sai"]
    dev = sai.get("sai_action_dev", {})
    reduction = 1.0 - sai["blocking_ms_p50"] / sync["blocking_ms_p50"]
    return {
        "checkpoint": folder,
        "cycles": sai["cycles"],
        "tick_hz": sai["tick_hz"],
        "deadline_misses": sai["deadline_misses"],
        "tick_hz_sync": sync["tick_hz"],
        "deadline_misses_sync": sync["deadline_misses"],
        "blocking_ms_p50_sync": sync["blocking_ms_p50"],
        "blocking_ms_p99_sync": sync["blocking_ms_p99"],
        "blocking_ms_p50_sai": sai["blocking_ms_p50"],
        "blocking_ms_p99_sai": sai["blocking_ms_p99"],
        "blocking_reduction": reduction,
        "blocking_reduction_vs_goal": reduction / BLOCKING_REDUCTION_GOAL,
        "sai_steps": sai_steps,
        "sai_action_dev": dev.get("mean_m", math.nan) * 1e3,
        "sai_action_dev_max_mm": dev.get("max_m", math.nan) * 1e3,
        "speculations_late": sai["speculations_late"],
        "holds_sai": sai["holds"],
        "holds_sync": sync["holds"],
        "blocking_parts_sync": sync.get("blocking_parts", {}),
        "blocking_parts_sai": sai.get("blocking_parts", {}),
        "cycle_ms_p99_sai": sai["cycle_ms_p99"],
        "chunks_sent_sai": sai["chunks_sent"],
        "arm_chunks_rejected_sai": sai["arm"]["chunks_rejected"],
    }


__all__ = ["cached_bench_checkpoint", "run"]
