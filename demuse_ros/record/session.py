"""``demuse record --sim``: the twin, the cell, the scripted expert and the recorder.

The expert runs through the same :class:`~demuse_ros.runtime.scheduler.Runtime`
(scheduler, safety filter, servo path) as ``demuse run --sim --policy expert``;
the runtime sees the cell through :class:`RecordingCell`, which logs every chunk
it sends (``action_chunk``) to the recorder.

Episodes are automatic (``episodes`` × up to ``seconds``, each ending early when
the task is done; success from the twin's task status) or, with a keyboard, the
operator's: ``s`` start/stop, ``d`` discard, ``y``/``n`` mark success/failure,
``r`` new scene, ``q`` quit. Every automatic episode, and every ``r``, gets a
fresh twin and cell (the twin's seed + 1: a new task placement) — resetting a
running real-time twin in place stalls its camera (its frame schedule is on
simulated time, which a reset rewinds). Ctrl-C stops the arm first, then
finishes the running episode (kept, with ``interrupted``), then the cell and the
twin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from demuse_ros.record.keyboard import Keyboard
from demuse_ros.record.messages import CameraIntrinsics
from demuse_ros.record.meta import EpisodeMeta
from demuse_ros.record.recorder import Recorder, RecorderConfig
from demuse_ros.runtime.policies import EpisodeEnd
from demuse_ros.timing.clock import now_ns

log = logging.getLogger("demuse.record")

HELP = "keys: s start/stop episode, d discard, y/n mark success/failure, r reset scene, q quit"


class RecordingCell:
    """A started cell as the runtime uses it, logging each sent chunk to a recorder."""

    def __init__(self, cell: Any, recorder: Recorder) -> None:
        self._cell, self._recorder = cell, recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cell, name)

    def send_chunk(
        self, t_ns: Any, poses: Any, gripper_width_m: Any = None, gripper_force_n: float = 20.0
    ) -> None:
        t = now_ns()
        self._cell.send_chunk(
            t_ns, poses, gripper_width_m=gripper_width_m, gripper_force_n=gripper_force_n
        )
        self._recorder.log_chunk(t, t_ns, poses, gripper_width_m)


def sim_intrinsics(sim_config: Any) -> CameraIntrinsics:
    """The twin camera's colour intrinsics (the software device announces the same)."""
    cam = sim_config.camera
    return CameraIntrinsics(cam.width, cam.height, cam.fx, cam.fy, cam.ppx, cam.ppy)


def record_sim(
    sim_config: Any,
    *,
    cell_config: Any = None,
    recorder_config: RecorderConfig | None = None,
    runtime_config: Any = None,
    expert_config: Any = None,
    meta: EpisodeMeta | None = None,
    episodes: int = 1,
    seconds: float | None = None,
    keyboard: bool = False,
    until_done: bool = True,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Record the scripted expert on a twin started here (module docstring); returns stats.

    ``until_done=False`` keeps automatic episodes running their full ``seconds``
    after the task ends (the benchmark's fixed duration). ``expert_config``: the
    scripted expert's :class:`~demuse_ros.twin.expert.ExpertConfig` (default: the
    one ``demuse run --sim --policy expert`` uses)."""
    from demuse_ros.drivers.cell import Cell, CellConfig, sim_cell_config
    from demuse_ros.runtime.scheduler import RuntimeConfig
    from demuse_ros.twin.runner import TwinProcess

    meta = meta or EpisodeMeta(task="dispense")
    runtime_config = runtime_config or RuntimeConfig()
    # The expert re-plans every tick (as in `demuse run --sim --policy expert`).
    runtime_config = dataclasses.replace(
        runtime_config, chunk=dataclasses.replace(runtime_config.chunk, stride=1)
    )
    cell_config = cell_config or CellConfig()
    if not meta.config:
        from demuse_ros.config import to_dict

        meta = dataclasses.replace(
            meta,
            config={
                "policy": "expert",
                "sim": to_dict(sim_config),
                "cell": to_dict(cell_config),
                "runtime": to_dict(runtime_config),
                **({"expert": to_dict(expert_config)} if expert_config is not None else {}),
            },
        )
    done: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    runtime_stats: dict[str, Any] = {}
    interrupted = False
    deadline = time.monotonic() + seconds if (keyboard and seconds) else math.inf
    with contextlib.ExitStack() as outer:
        kb = outer.enter_context(Keyboard()) if keyboard else None
        interactive = kb is not None and kb.active
        if interactive:
            log.info(HELP)
        scene = 0
        while True:
            config = _seeded(sim_config, scene)
            with contextlib.ExitStack() as stack:
                twin = stack.enter_context(TwinProcess(config))
                cell = stack.enter_context(Cell(sim_cell_config(cell_config, twin.endpoints)))
                recorder = stack.enter_context(
                    Recorder.from_cell(
                        cell,
                        recorder_config,
                        intrinsics=sim_intrinsics(config),
                        base_metadata={"source": "twin", "policy": "expert", "scene": scene},
                    )
                )
                session = _Session(twin, cell, recorder, runtime_config, meta, done, expert_config)
                action = "quit"
                try:
                    if interactive:
                        action = session.interactive(kb, deadline, report)  # type: ignore[arg-type]
                    else:
                        session.automatic(seconds, report, until_done=until_done)
                        action = "next" if scene + 1 < episodes else "quit"
                except KeyboardInterrupt:
                    log.info("Ctrl-C: stopping the arm, then finishing the episode file")
                    interrupted = True
                with contextlib.suppress(RuntimeError):
                    cell.arm.stop_motion()
                if recorder.recording:
                    done.append(session.finish(interrupted=interrupted))
                totals.append(recorder.stats())
                if session.runtime is not None:
                    runtime_stats = session.runtime.stats()
            if interrupted or action == "quit":
                break
            scene += 1
    return {
        "episodes": done,
        "interrupted": interrupted,
        "recorder": _sum_stats(totals),
        "runtime": {
            k: runtime_stats.get(k)
            for k in ("cycles", "tick_hz", "deadline_misses", "chunks_sent", "holds")
        },
    }


def _seeded(sim_config: Any, scene: int) -> Any:
    """Scene ``scene`` of a session: the twin's seed advanced by ``scene`` (a new placement)."""
    if scene == 0:
        return sim_config
    plant = dataclasses.replace(sim_config.plant, seed=int(sim_config.plant.seed) + scene)
    return dataclasses.replace(sim_config, plant=plant)


def _sum_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Recorder statistics of several scenes added up (maxima for *_max)."""
    if not parts:
        return {}
    out: dict[str, Any] = dict(parts[0])
    for part in parts[1:]:
        for key, value in part.items():
            if isinstance(value, dict):
                out[key] = {k: out[key].get(k, 0) + v for k, v in value.items()}
            elif isinstance(value, bool) or not isinstance(value, int | float):
                out[key] = value if value is not None else out.get(key)
            elif key.endswith("_max"):
                out[key] = max(out[key], value)
            else:
                out[key] = out[key] + value
    return out


class _Session:
    def __init__(
        self,
        twin: Any,
        cell: Any,
        recorder: Recorder,
        runtime_config: Any,
        meta: EpisodeMeta,
        done: list[dict[str, Any]],
        expert_config: Any = None,
    ) -> None:
        self.twin, self.cell, self.recorder = twin, cell, recorder
        self.rcell = RecordingCell(cell, recorder)
        self.runtime_config, self.meta, self.done = runtime_config, meta, done
        self.expert_config = expert_config
        self.runtime: Any = None
        self.policy: Any = None
        self.interrupted = False
        self.t_episode = math.nan

    def new_runtime(self) -> None:
        from demuse_ros.runtime.policies import ExpertPolicy
        from demuse_ros.runtime.scheduler import Runtime

        self.policy = ExpertPolicy(
            self.twin, self.runtime_config.chunk.rate_hz, config=self.expert_config
        )
        self.runtime = Runtime(self.rcell, self.policy, self.runtime_config)

    def start(self) -> None:
        path = self.recorder.start_episode(self.meta)
        self.t_episode = time.monotonic()
        log.info("episode started: %s", path.name)

    def finish(self, **end_info: Any) -> dict[str, Any]:
        task = self.twin.call("task_status")
        success = bool(task.get("success")) if task.get("done") else None
        if self.recorder.marked_success is not None:
            success = None  # the operator's mark stands
        path = self.recorder.stop_episode(success=success, task_status=task, **end_info)
        return {"path": str(path), "task": task.get("reason") or "running", **end_info}

    def automatic(self, seconds: float | None, report: Any, *, until_done: bool = True) -> None:
        """One episode of up to ``seconds`` (ends when the task is done, if ``until_done``)."""
        self.new_runtime()
        self.start()
        end = time.monotonic() + seconds if seconds else math.inf
        episode_end = EpisodeEnd()
        while time.monotonic() < end:
            self.runtime.cycle()
            if self.runtime.cycles % 10 == 0:
                task = self.twin.call("task_status")
                if report is not None:
                    report(self.status(task))
                if until_done and episode_end.reached(self.runtime.cycles, task, self.policy):
                    break
        with contextlib.suppress(RuntimeError):
            self.cell.arm.stop_motion()
        self.done.append(self.finish())

    def interactive(self, kb: Keyboard, deadline: float, report: Any) -> str:
        """Keyboard control until ``q`` ("quit"), ``r`` ("reset": a new scene) or the deadline."""
        self.new_runtime()
        while time.monotonic() < deadline:
            self.runtime.cycle()
            for key in kb.read():
                if key == "q":
                    return "quit"
                if key == "r":
                    if not self.recorder.recording:
                        log.info("resetting the scene (a fresh twin and cell)")
                        return "reset"
                    log.warning("stop (s) or discard (d) the episode before resetting the scene")
                self.on_key(key)
            if report is not None and self.runtime.cycles % 20 == 0:
                report(self.status(self.twin.call("task_status")))
        return "quit"

    def on_key(self, key: str) -> None:
        rec = self.recorder
        try:
            if key == "s":
                if rec.recording:
                    self.done.append(self.finish())
                else:
                    self.start()
            elif key == "d":
                rec.discard_episode()
            elif key in "yn":
                rec.mark_success(key == "y")
            elif key in "h?":
                log.info(HELP)
        except RuntimeError as exc:  # e.g. "no episode is recording"
            log.warning("%s", exc)

    def status(self, task: dict[str, Any]) -> dict[str, Any]:
        st = self.recorder.stats()
        return {
            "recording": st["recording"],
            "episode_s": time.monotonic() - self.t_episode if st["recording"] else 0.0,
            "records": st["records"],
            "lost": sum(st["lost"].values()),
            "dropped": st["dropped"],
            "backlog_mb": st["backlog_bytes"] / 1e6,
            "task": task.get("reason") or "running",
        }


__all__ = ["HELP", "RecordingCell", "record_sim", "sim_intrinsics"]
