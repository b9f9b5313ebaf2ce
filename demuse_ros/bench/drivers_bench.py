"""``demuse bench drivers --sim``: the three drivers against the twin, idle and under load.

One run, two phases of ``seconds`` each, the arm tracking a slow circle fed as
10 Hz action chunks (as the runtime will): first with no extra load, then while
:class:`~demuse_ros.bench.load.CpuLoad` burns policy-sized CPU in other
processes. Reported per phase: the servo period (intervals between ``servoL``
calls, measured in the arm process), its p99 error against the controller
period, the arm state, F/T and camera rates, the camera's render-to-ring
latency, and what the safety filter did. The headline keys are the loaded
phase; ``*_idle`` keys are the baseline, and ``servo_p99_error_vs_goal`` is the
loaded p99 error over the 1 ms goal (< 1 meets it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from demuse_ros.bench.load import CpuLoad
from demuse_ros.drivers.cell import Cell, CellConfig, sim_cell_config
from demuse_ros.timing.clock import NS_PER_S, now_ns
from demuse_ros.timing.loop import PeriodicLoop

SERVO_P99_ERROR_GOAL_MS = 1.0
CIRCLE_RADIUS_M = 0.02
CIRCLE_PERIOD_S = 4.0
CHUNK_RATE_HZ = 10.0
CHUNK_WAYPOINTS = 10


def _circle_chunk(center: np.ndarray, t0_ns: int, start_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Waypoints every 0.1 s for 1 s, starting 0.1 s after ``start_ns``, on the circle."""
    t_ns = start_ns + np.arange(1, CHUNK_WAYPOINTS + 1, dtype=np.int64) * round(
        NS_PER_S / CHUNK_RATE_HZ
    )
    phase = 2.0 * math.pi * (t_ns - t0_ns) / NS_PER_S / CIRCLE_PERIOD_S
    poses = np.repeat(center[None, :], len(t_ns), axis=0)
    poses[:, 0] += CIRCLE_RADIUS_M * (np.cos(phase) - 1.0)  # starts at the centre pose
    poses[:, 1] += CIRCLE_RADIUS_M * np.sin(phase)
    return t_ns, poses


def _phase(cell: Cell, twin: Any, seconds: float, center: np.ndarray, t0_ns: int) -> dict:
    """Feed chunks for ``seconds``; return this phase's numbers."""
    cell.arm.reset_timing_stats()
    before = {name: proc.stats() for name, proc in cell.drivers.items()}
    counts = {name: proc.ring.count for name, proc in cell.drivers.items()}
    start = now_ns()
    tick = PeriodicLoop(CHUNK_RATE_HZ)
    for _ in range(round(seconds * CHUNK_RATE_HZ)):
        tick.wait()
        cell.send_chunk(*_circle_chunk(center, t0_ns, now_ns()))
    wall_s = (now_ns() - start) / NS_PER_S
    rates = {name: (proc.ring.count - counts[name]) / wall_s for name, proc in cell.drivers.items()}
    arm, cam = cell.arm.stats(), cell.camera.stats()
    twin_stats = twin.call("stats")
    delta = {k: arm[k] - before["arm"][k] for k in arm if k.startswith("rejected_")}
    return {
        "servo_hz": arm["servo_rate_hz"],
        "servo_period_ms_p50": arm["servo_period_ms_p50"],
        "servo_period_ms_p99": arm["servo_period_ms_p99"],
        "servo_period_ms_max": arm["servo_period_ms_max"],
        "servo_period_error_ms_p99": arm["servo_period_error_ms_p99"],
        "package_period_error_ms_p99": arm["package_period_error_ms_p99"],
        "arm_state_hz": rates["arm"],
        "ft_rate_hz": rates["ft"],
        "camera_fps": rates["camera"],
        "camera_latency_ms_p50": cam["twin_latency_ms_p50"],
        "twin_control_period_ms_p99": twin_stats["control_period_ms_p99"],
        "chunks_accepted": arm["chunks_accepted"] - before["arm"]["chunks_accepted"],
        "chunks_rejected": arm["chunks_rejected"] - before["arm"]["chunks_rejected"],
        "rejections": {k[len("rejected_") :]: v for k, v in delta.items() if v},
        "packages_missed": arm["packages_missed"] - before["arm"]["packages_missed"],
    }


def run(
    seconds: float,
    sim_config: Any,
    *,
    cell_config: CellConfig | None = None,
    load_workers: int = 2,
    load_duty: float = 0.6,
) -> dict[str, Any]:
    """Both phases against a twin started here; see the module docstring."""
    from demuse_ros.twin.runner import TwinProcess

    with TwinProcess(sim_config) as twin:
        config = sim_cell_config(cell_config or CellConfig(), twin.endpoints)
        with Cell(config) as cell:
            center = np.asarray(cell.arm.ring.read_latest(("tcp_pose",))["tcp_pose"])
            t0 = now_ns() + round(0.1 * NS_PER_S)
            _phase(cell, twin, 1.0, center, t0)  # warm-up: the arm joins the circle
            idle = _phase(cell, twin, seconds, center, t0)
            with CpuLoad(load_workers, load_duty) as load:
                _phase(cell, twin, 1.0, center, t0)
                loaded = _phase(cell, twin, seconds, center, t0)
                busy = load.busy_fraction()
            arm = cell.arm.stats()
        personality = twin.endpoints["personality"]
        rate = twin.endpoints["control_rate_hz"]
    result: dict[str, Any] = {
        "personality": personality,
        "control_rate_hz": rate,
        "seconds_per_phase": seconds,
        **loaded,
        "load_workers": load_workers,
        "load_busy_fraction": busy,
        **{f"{k}_idle": v for k, v in idle.items() if k != "rejections"},
        "servo_p99_error_goal_ms": SERVO_P99_ERROR_GOAL_MS,
        "servo_p99_error_vs_goal": loaded["servo_period_error_ms_p99"] / SERVO_P99_ERROR_GOAL_MS,
        "servo_p99_loaded_vs_idle": loaded["servo_period_ms_p99"] / idle["servo_period_ms_p99"],
        "arm_realtime": bool(arm["realtime"]),
        "arm_process_restarts": arm["process_restarts"],
        "protective_holds": arm["protective_holds"],
    }
    return result


__all__ = ["run"]
