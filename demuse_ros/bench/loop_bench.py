"""``demuse bench loop --sim``: the closed loop with a checkpoint, synchronous then SAI.

Two runs of ``cycles`` each against a fresh twin and drivers, the same
checkpoint and the same per-chunk noise: first synchronous inference, then
speculative asynchronous inference (SAI). Reported: the loop rate and deadline
misses of each, the blocking latency (real observation → chunk ready) p50/p99
of each, ``blocking_reduction = 1 − sai/sync`` (goal ≥ 0.5, the paper's
figure), and ``sai_action_dev``: how far SAI's chunks lie from synchronous
denoising of the same observations with the same noise (TCP position, mean and
max over all waypoints, in mm).

Without ``--policy`` it runs the shipped default policy (``dispense-cpu``,
models/README.md): the ``cpu`` preset's compute, with actions that mean something
for the twin's task.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from demuse_ros.runtime.inference import InferenceConfig
from demuse_ros.runtime.scheduler import RuntimeConfig

BLOCKING_REDUCTION_GOAL = 0.5


def run(
    cycles: int,
    sim_config: Any,
    *,
    policy: str | None = None,
    cell_config: Any = None,
    sai_steps: int = 6,
) -> dict[str, Any]:
    from demuse_ros.paths import DEFAULT_POLICY, resolve_policy
    from demuse_ros.runtime.runner import run_sim

    folder = resolve_policy(policy or DEFAULT_POLICY)
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


__all__ = ["run"]
