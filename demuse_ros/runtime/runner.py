"""The embedded runner: twin (with ``--sim``), drivers and the policy loop in one command.

``demuse run --sim --policy expert`` starts the simulated cell, the three
drivers and :class:`~demuse_ros.runtime.scheduler.Runtime`, runs the loop until
the task ends, ``--cycles`` or ``--seconds`` are reached, or Ctrl-C, then stops
the arm first and everything else after it, and returns the run's statistics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from demuse_ros.drivers.cell import Cell, CellConfig, sim_cell_config
from demuse_ros.runtime.scheduler import Runtime, RuntimeConfig

log = logging.getLogger("demuse.run")


def run_sim(
    sim_config: Any,
    *,
    policy: str = "expert",
    cell_config: CellConfig | None = None,
    runtime_config: RuntimeConfig | None = None,
    cycles: int | None = None,
    seconds: float | None = None,
    stop_when_done: bool = True,
    report: Callable[[dict[str, Any]], None] | None = None,
    report_every: int = 10,
) -> dict[str, Any]:
    """Run the closed loop against a twin started here; returns the statistics."""
    from demuse_ros.runtime.policies import CheckpointPolicy, ExpertPolicy
    from demuse_ros.twin.runner import TwinProcess

    runtime_config = runtime_config or RuntimeConfig()
    end = time.monotonic() + seconds if seconds else math.inf
    with contextlib.ExitStack() as stack:
        twin = stack.enter_context(TwinProcess(sim_config))
        cell = stack.enter_context(
            Cell(sim_cell_config(cell_config or CellConfig(), twin.endpoints))
        )
        if policy == "expert":
            pol: Any = ExpertPolicy(twin, runtime_config.chunk.rate_hz)
            # The expert re-plans every tick: its force loop closes at the loop rate.
            runtime_config = _with_stride(runtime_config, 1)
        else:
            pol = CheckpointPolicy(policy)
        runtime = Runtime(cell, pol, runtime_config)
        task: dict[str, Any] = {}
        interrupted = False
        try:
            while (cycles is None or runtime.cycles < cycles) and time.monotonic() < end:
                runtime.cycle()
                if runtime.cycles % report_every == 0:
                    task = twin.call("task_status")
                    if report is not None:
                        report(_status(runtime, cell, task))
                    if stop_when_done and (task.get("done") or getattr(pol, "done", False)):
                        break
        except KeyboardInterrupt:
            interrupted = True
            log.info("Ctrl-C: stopping the arm, then the drivers and the twin")
        with contextlib.suppress(RuntimeError):
            cell.arm.stop_motion()
        task = twin.call("task_status")
        result = {
            "policy": pol.name,
            "interrupted": interrupted,
            **runtime.stats(),
            "task": {k: task.get(k) for k in ("done", "success", "reason")},
            "arm": {
                k: v
                for k, v in cell.arm.stats().items()
                if k.startswith(("chunks_", "rejected_", "servo_", "protective", "fault"))
            },
        }
    return result


def _with_stride(config: RuntimeConfig, stride: int) -> RuntimeConfig:
    import dataclasses

    return dataclasses.replace(config, chunk=dataclasses.replace(config.chunk, stride=stride))


def _status(runtime: Runtime, cell: Cell, task: dict[str, Any]) -> dict[str, Any]:
    st = runtime.stats()
    arm = cell.arm.stats()
    return {
        "cycles": st["cycles"],
        "tick_hz": st["tick_hz"],
        "deadline_misses": st["deadline_misses"],
        "policy_ms_p50": st["policy_ms_p50"],
        "cycle_ms_p99": st["cycle_ms_p99"],
        "holds": sum(st["holds"].values()),
        "rejected": arm["chunks_rejected"],
        "fault": arm["fault"],
        "hold": arm["hold"],
        "task": task.get("reason") or ("done" if task.get("done") else "running"),
    }


__all__ = ["run_sim"]
