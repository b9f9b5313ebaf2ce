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
from demuse_ros.runtime.dashboard import Dashboard, status_of
from demuse_ros.runtime.report import write_report
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
    dashboard: bool = False,
    report_dir: str | None = None,
    measure_sai_deviation: bool = False,
) -> dict[str, Any]:
    """Run the closed loop against a twin started here; returns the statistics.

    ``report`` gets a status snapshot every ``report_every`` cycles; ``dashboard``
    shows it live in the terminal; ``report_dir`` receives ``run.json`` and plots.
    """
    from demuse_ros.runtime.inference import ModelPolicy
    from demuse_ros.runtime.policies import ExpertPolicy
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
            pol = ModelPolicy(policy, runtime_config.inference, stride=runtime_config.chunk.stride)
            stack.callback(pol.close)
            pol.record = measure_sai_deviation
        runtime = Runtime(cell, pol, runtime_config)
        task: dict[str, Any] = {}
        interrupted = False
        board = stack.enter_context(Dashboard()) if dashboard else None
        try:
            while (cycles is None or runtime.cycles < cycles) and time.monotonic() < end:
                runtime.cycle()
                if runtime.cycles % report_every == 0:
                    task = twin.call("task_status")
                    status = status_of(runtime, cell, task)
                    if board is not None:
                        board.update(status)
                    if report is not None:
                        report(status)
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
            "inference": runtime_config.inference.mode if policy != "expert" else "expert",
            "speculations_late": getattr(pol, "speculations_late", 0),
            "interrupted": interrupted,
            **runtime.stats(),
            "task": {k: task.get(k) for k in ("done", "success", "reason")},
            "arm": {
                k: v
                for k, v in cell.arm.stats().items()
                if k.startswith(("chunks_", "rejected_", "servo_", "protective", "fault"))
            },
        }
        if measure_sai_deviation and hasattr(pol, "action_deviation_m"):
            result["sai_action_dev"] = pol.action_deviation_m()
        if report_dir:
            paths = write_report(
                report_dir,
                runtime.trace,
                result,
                rate_hz=runtime_config.chunk.rate_hz,
                force_limit_n=cell.config.arm.safety.max_force_n,
            )
            result["report_files"] = [str(p) for p in paths]
    return result


def _with_stride(config: RuntimeConfig, stride: int) -> RuntimeConfig:
    import dataclasses

    return dataclasses.replace(config, chunk=dataclasses.replace(config.chunk, stride=stride))


__all__ = ["run_sim"]
