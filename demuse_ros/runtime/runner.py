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
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from demuse_ros.drivers.cell import Cell, CellConfig, sim_cell_config
from demuse_ros.runtime.dashboard import Dashboard, status_of
from demuse_ros.runtime.policies import EpisodeEnd
from demuse_ros.runtime.report import write_report
from demuse_ros.runtime.scheduler import Runtime, RuntimeConfig
from demuse_ros.timing.realtime import set_normal_priority, set_realtime_priority

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
    record_dir: str | None = None,
    record_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the closed loop against a twin started here; returns the statistics.

    ``report`` gets a status snapshot every ``report_every`` cycles; ``dashboard``
    shows it live in the terminal; ``report_dir`` receives ``run.json`` and plots;
    ``record_dir`` records the run as one MCAP episode (``record_meta``: its
    :class:`~demuse_ros.record.meta.EpisodeMeta` fields), success from the twin.
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
        recorder = None
        if record_dir:
            recorder = stack.enter_context(
                _recorder(cell, sim_config, policy, runtime_config, record_dir, record_meta)
            )
        if recorder is not None:
            from demuse_ros.record.session import RecordingCell

            runtime = Runtime(RecordingCell(cell, recorder), pol, runtime_config)
        else:
            runtime = Runtime(cell, pol, runtime_config)
        task: dict[str, Any] = {}
        episode_end = EpisodeEnd()
        interrupted = False
        board = stack.enter_context(Dashboard()) if dashboard else None
        # Last, so no thread created above inherits it: the control thread real-time.
        stack.enter_context(_realtime_control_thread(runtime_config.realtime_priority))
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
                    if stop_when_done and episode_end.reached(runtime.cycles, task, pol):
                        break
        except KeyboardInterrupt:
            interrupted = True
            log.info("Ctrl-C: stopping the arm, then the drivers and the twin")
        with contextlib.suppress(RuntimeError):
            cell.arm.stop_motion()
        set_normal_priority()
        task = twin.call("task_status")
        result = {
            "policy": pol.name,
            "inference": runtime_config.inference.mode if policy != "expert" else "expert",
            "speculations_late": getattr(pol, "speculations_late", 0),
            "interrupted": interrupted,
            **runtime.stats(),
            "task": {k: task.get(k) for k in ("done", "success", "reason")},
            "task_metrics": dict(task.get("metrics") or {}),
            "arm": {
                k: v
                for k, v in cell.arm.stats().items()
                if k.startswith(("chunks_", "rejected_", "servo_", "protective", "fault"))
            },
        }
        if recorder is not None:
            path = recorder.stop_episode(success=task.get("success"), interrupted=interrupted)
            result["recording"] = {"path": str(path), **recorder.stats()}
        if hasattr(pol, "blocking_parts_ms"):
            result["blocking_parts"] = pol.blocking_parts_ms()
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


@contextlib.contextmanager
def _realtime_control_thread(priority: int) -> Iterator[None]:
    """SCHED_FIFO for the calling (control) thread, and a 1 ms GIL switch interval so
    a woken control thread gets the GIL from the inference worker within 1 ms
    (Python's default is 5 ms); both undone on exit."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    problem = set_realtime_priority(priority)
    if problem:
        log.warning("control thread: %s", problem)
    try:
        yield
    finally:
        set_normal_priority()
        sys.setswitchinterval(interval)


def _recorder(cell, sim_config, policy, runtime_config, out_dir, meta):
    """A started recorder on the cell with one episode open (``demuse run --record``)."""
    from demuse_ros.config import to_dict
    from demuse_ros.record.meta import EpisodeMeta, checkpoint_hash
    from demuse_ros.record.recorder import Recorder, RecorderConfig
    from demuse_ros.record.session import sim_intrinsics

    recorder = Recorder.from_cell(
        cell,
        RecorderConfig(out_dir=out_dir),
        intrinsics=sim_intrinsics(sim_config),
        base_metadata={"source": "twin", "policy": policy},
    )
    recorder.start()
    fields = {
        "task": "dispense",
        "checkpoint_hash": "" if policy == "expert" else checkpoint_hash(policy),
        "config": {"policy": policy, "runtime": to_dict(runtime_config)},
        **(meta or {}),
    }
    recorder.start_episode(EpisodeMeta(**fields))
    return recorder


def _with_stride(config: RuntimeConfig, stride: int) -> RuntimeConfig:
    import dataclasses

    return dataclasses.replace(config, chunk=dataclasses.replace(config.chunk, stride=stride))


__all__ = ["run_sim"]
