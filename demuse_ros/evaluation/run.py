"""``demuse eval``: a policy's success over seeded episodes, in lockstep or in real time.

* ``lockstep``: :class:`~demuse_ros.evaluation.lockstep.LockstepCell` (no wall
  clock; the policy's quality).
* ``realtime``: :func:`~demuse_ros.runtime.runner.run_sim` per episode — twin,
  drivers over their protocols, the 10 Hz runtime and the inference mode as
  deployed (the whole system's quality).

Episode ``i`` uses placement seed ``seed + i``; keep evaluation seeds away from
the seeds the demonstrations were recorded with (``demuse record --sim`` uses
the twin's seed + scene, 0… by default; evaluation starts at 10 000).
Per episode: success, the task's reason, time to success, force error at the
target and peak force (the task's ground truth), and for lockstep the ticks,
chunks and refusals. The summary: success rate with a 95 % Wilson interval,
medians, and a plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("demuse.eval")

EVAL_SEED = 10_000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def _policy_factory(policy: str, twin_calls: Any, inference: Any) -> Callable[[], Any]:
    if policy == "expert":
        from demuse_ros.runtime.policies import ExpertPolicy

        return lambda: ExpertPolicy(twin_calls, 10.0)
    from demuse_ros.runtime.inference import ModelPolicy

    model = ModelPolicy(policy, dataclasses.replace(inference, mode="sync"))
    return lambda: model


def evaluate_lockstep(
    sim_config: Any,
    policy: str,
    episodes: int,
    *,
    seed: int = EVAL_SEED,
    runtime_config: Any = None,
    cell_config: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    max_s: float | None = None,
) -> list[dict[str, Any]]:
    """``episodes`` lockstep episodes of ``policy`` ('expert' or a checkpoint folder);
    ``max_s`` ends an episode early (simulated seconds; default: the task's timeout)."""
    from demuse_ros.drivers.cell import CellConfig
    from demuse_ros.evaluation.lockstep import LockstepCell, TwinCalls
    from demuse_ros.runtime.scheduler import RuntimeConfig
    from demuse_ros.twin.runner import Twin

    runtime_config = runtime_config or RuntimeConfig()
    cell_config = cell_config or CellConfig()
    chunk = runtime_config.chunk
    if policy == "expert":  # it re-plans every tick, as in `demuse run --sim`
        chunk = dataclasses.replace(chunk, stride=1)
    twin = Twin(sim_config)
    make = _policy_factory(policy, TwinCalls(twin), runtime_config.inference)
    out = []
    try:
        with LockstepCell(
            twin,
            chunk=chunk,
            sync=runtime_config.sync,
            safety=cell_config.arm.safety,
            ft=cell_config.ft,
            gripper_force_n=runtime_config.gripper_force_n,
        ) as cell:
            for i in range(episodes):
                record = dataclasses.asdict(cell.run_episode(make(), seed + i, max_s=max_s))
                out.append(record)
                if progress is not None:
                    progress(record)
    finally:
        twin.close()
    return out


def evaluate_realtime(
    sim_config: Any,
    policy: str,
    episodes: int,
    *,
    seed: int = EVAL_SEED,
    runtime_config: Any = None,
    cell_config: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    max_s: float | None = None,
) -> list[dict[str, Any]]:
    """``episodes`` real-time episodes through the drivers (a fresh twin each)."""
    from demuse_ros.runtime.runner import run_sim

    timeout_s = max_s if max_s is not None else sim_config.task.timeout_s + 2.0
    out = []
    for i in range(episodes):
        plant = dataclasses.replace(sim_config.plant, seed=seed + i)
        result = run_sim(
            dataclasses.replace(sim_config, plant=plant),
            policy=policy,
            cell_config=cell_config,
            runtime_config=runtime_config,
            seconds=timeout_s,
        )
        task = result["task"]
        metrics = result.get("task_metrics", {})
        record = {
            "seed": seed + i,
            "success": bool(task.get("success")),
            "reason": task.get("reason") or "timeout",
            "time_to_done_s": metrics.get("time_to_success_s", math.nan),
            "metrics": metrics,
            "tick_hz": result["tick_hz"],
            "deadline_misses": result["deadline_misses"],
            "holds": result["holds"],
            "peak_force_n": metrics.get("peak_force_n", math.nan),
        }
        out.append(record)
        if progress is not None:
            progress(record)
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate (with its 95 % interval) and medians over the episodes."""
    n = len(records)
    ok = [r for r in records if r["success"]]
    lo, hi = wilson_interval(len(ok), n)

    def median(values: list[float]) -> float:
        v = [x for x in values if x is not None and math.isfinite(x)]
        return float(np.median(v)) if v else math.nan

    reasons: dict[str, int] = {}
    for r in records:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {
        "episodes": n,
        "successes": len(ok),
        "success_rate": len(ok) / n if n else math.nan,
        "success_rate_ci95": [lo, hi],
        "force_error_n_median": median([r["metrics"].get("force_error_n") for r in ok]),
        "peak_force_n_median": median([r["metrics"].get("peak_force_n") for r in records]),
        "time_to_success_s_median": median([r["metrics"].get("time_to_success_s") for r in ok]),
        "reasons": reasons,
    }


def write_outputs(out_dir: str, result: dict[str, Any]) -> list[Path]:
    """``eval.json`` and ``eval.png`` (per-episode outcome, force error, time to success)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    records = result["episodes"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    seeds = [r["seed"] for r in records]
    axes[0].bar(seeds, [1 if r["success"] else 0 for r in records], color="tab:green")
    s = result["summary"]
    axes[0].set_title(
        f"success {s['successes']}/{s['episodes']} "
        f"(95 % CI {s['success_rate_ci95'][0]:.2f}–{s['success_rate_ci95'][1]:.2f})"
    )
    axes[0].set_xlabel("seed")
    err = [r["metrics"].get("force_error_n", math.nan) for r in records if r["success"]]
    axes[1].hist([e for e in err if math.isfinite(e)], bins=15)
    axes[1].set_title("force error at the target (N), successes")
    tts = [r["metrics"].get("time_to_success_s", math.nan) for r in records if r["success"]]
    axes[2].hist([t for t in tts if math.isfinite(t)], bins=15)
    axes[2].set_title("time to success (s)")
    fig.tight_layout()
    fig.savefig(out / "eval.png", dpi=100)
    plt.close(fig)
    return [out / "eval.json", out / "eval.png"]


__all__ = [
    "EVAL_SEED",
    "evaluate_lockstep",
    "evaluate_realtime",
    "summarize",
    "wilson_interval",
    "write_outputs",
]
