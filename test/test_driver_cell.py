"""The cell: three drivers against the twin; every twin fault ends in its documented state.

The end states are the README's "Fault injection" table; each case here checks
one row. A single twin and cell serve all the cases (starting one takes ~5 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from demuse_ros.drivers.cell import Cell, CellConfig, load_cell_config, sim_cell_config
from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.loop import PeriodicLoop

pytest.importorskip("mujoco", reason="needs the sim extra: pip install -e '.[sim]'")
pytest.importorskip("rtde_control", reason="needs ur_rtde 1.6.5")

HOST = "127.0.0.81"


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    loop = PeriodicLoop(50.0)
    for _ in range(int(timeout_s * 50)):
        if condition():
            return True
        loop.wait()
    return bool(condition())


def sleep(seconds: float) -> None:
    wait_for(lambda: False, seconds)


def test_load_cell_config_reads_groups_and_overrides(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "policy_node:\n  ros__parameters:\n    arm: {gain: 400.0}\n"
        "    camera: {source: realsense}\n"
    )
    # One section for all three groups (node=...); the shipped file has one per driver node.
    cfg = load_cell_config(
        str(path), "policy_node", overrides={"ft.rate_hz": 50, "start_timeout_s": 5}
    )
    assert cfg.arm.gain == 400.0 and cfg.ft.rate_hz == 50 and cfg.start_timeout_s == 5
    with pytest.raises(ValueError, match="unknown cell parameter"):
        load_cell_config(str(path), "policy_node", overrides={"arms.gain": 1})
    with pytest.raises(ValueError, match="gain"):
        load_cell_config(str(path), "policy_node", overrides={"arm.gain": 5})


@pytest.fixture(scope="module")
def cell():
    from demuse_ros.twin.runner import SimConfig, TwinProcess
    from demuse_ros.twin.ur_servers import URServersConfig

    base = SimConfig()
    sim = replace(
        base,
        ur_servers=URServersConfig(host=HOST),
        modbus=replace(base.modbus, host=HOST, port=5081),
    )
    with TwinProcess(sim) as twin:
        config = sim_cell_config(CellConfig(), twin.endpoints)
        config = replace(config, arm=replace(config.arm, reconnect_min_s=0.2))
        with Cell(config) as c:
            yield twin, c


def _pose(c: Cell) -> np.ndarray:
    return np.asarray(c.arm.ring.read_latest(("tcp_pose",))["tcp_pose"])


def _chunk(start: np.ndarray, delta_m, seconds: float, n: int = 20):
    t_ns = now_ns() + np.round(np.linspace(0.1, 0.1 + seconds, n) * 1e9).astype(np.int64)
    s = np.linspace(0.0, 1.0, n)
    poses = np.repeat(start[None, :], n, axis=0)
    poses[:, :3] += (10 * s**3 - 15 * s**4 + 6 * s**5)[:, None] * np.asarray(delta_m)[None, :]
    return t_ns, poses


@pytest.mark.slow
def test_all_three_drivers_stream_at_their_rates(cell) -> None:
    _, c = cell
    c.ring_rates_hz()
    sleep(2.0)
    rates = c.ring_rates_hz()
    print(f"rates {rates}")
    assert rates["arm"] == pytest.approx(125.0, rel=0.1)
    assert rates["ft"] == pytest.approx(100.0, rel=0.1)
    assert rates["camera"] == pytest.approx(30.0, rel=0.15)
    assert all(proc.alive for proc in c.drivers.values())


@pytest.mark.slow
def test_chunk_with_gripper_targets_moves_arm_and_fingers(cell) -> None:
    twin, c = cell
    start = _pose(c)
    t_ns, poses = _chunk(start, (0.0, 0.02, 0.0), 1.0)
    widths = np.linspace(0.08, 0.04, len(t_ns))
    c.send_chunk(t_ns, poses, gripper_width_m=widths, gripper_force_n=20.0)
    assert wait_for(lambda: abs(twin.call("gripper_width_m") - 0.04) < 0.003, 8.0), (
        twin.call("gripper_width_m"),
        c.ft.stats(),
    )
    assert wait_for(lambda: np.linalg.norm(_pose(c)[:3] - poses[-1, :3]) < 2e-3, 5.0)
    st = c.ft.stats()
    # Widths change by ~2 mm per waypoint: the 2 mm deadband skips about every other one.
    assert st["gripper_plans"] >= 1 and 5 <= st["commands"] <= len(widths)
    with pytest.raises(ValueError, match="width_m"):
        c.send_chunk(t_ns, poses, gripper_width_m=np.full(len(t_ns), 0.5))
    with pytest.raises(ValueError, match="one per waypoint"):
        c.send_chunk(t_ns, poses, gripper_width_m=np.zeros(3))


@pytest.mark.slow
def test_camera_faults_are_counted_and_the_stream_continues(cell) -> None:
    twin, c = cell
    before = c.camera.stats()
    twin.call("drop_camera_frames", 5)
    twin.call("freeze_camera", 3)
    assert wait_for(lambda: c.camera.stats()["dropped"] >= before["dropped"] + 5, 5.0)
    assert wait_for(lambda: c.camera.stats()["duplicates"] >= before["duplicates"] + 3, 5.0)
    count = c.camera.ring.count
    assert wait_for(lambda: c.camera.ring.count > count + 10, 3.0)
    assert c.camera.alive


@pytest.mark.slow
def test_modbus_faults_are_counted_never_emitted_and_recovered(cell) -> None:
    twin, c = cell
    before = c.ft.stats()
    twin.call("modbus_fault", "inject_exception", 4, 3)
    assert wait_for(lambda: c.ft.stats()["exceptions"] >= before["exceptions"] + 3, 3.0)
    twin.call("modbus_fault", "drop_connections")
    assert wait_for(lambda: c.ft.stats()["reconnects"] >= before["reconnects"] + 1, 5.0)
    count = c.ft.ring.count
    assert wait_for(lambda: c.ft.ring.count > count + 50, 3.0)
    # Every record in the ring is valid data: finite, at increasing capture times.
    rows = [c.ft.ring.read(i) for i in range(c.ft.ring.count - 50, c.ft.ring.count)]
    assert all(np.isfinite(r["wrench"]).all() for r in rows)
    stamps = [r["t_capture_ns"] for r in rows]
    assert stamps == sorted(stamps)


@pytest.mark.slow
def test_silent_force_torque_stream_latches_a_protective_hold(cell) -> None:
    twin, c = cell
    start = _pose(c)
    holds = c.arm.stats()["protective_holds"]
    t_ns, poses = _chunk(start, (0.0, 0.0, 0.03), 2.0)
    c.send_chunk(t_ns, poses)
    sleep(0.5)
    twin.call("modbus_fault", "set_reply_delay", 0.4)  # every F/T poll times out
    try:
        assert wait_for(lambda: c.arm.stats()["hold"] == 1.0, 3.0), c.arm.stats()
        assert c.arm.stats()["protective_holds"] == holds + 1
        here = _pose(c)
        sleep(1.0)
        assert np.linalg.norm(_pose(c)[:3] - here[:3]) < 5e-4  # stopped, not following
        assert _pose(c)[2] - start[2] < 0.025
        rejected = c.arm.stats()["rejected_protective_hold"]
        c.send_chunk(*_chunk(_pose(c), (0.0, 0.0, 0.01), 1.0))
        assert wait_for(lambda: c.arm.stats()["rejected_protective_hold"] > rejected, 2.0)
    finally:
        twin.call("modbus_fault", "clear_faults")
        twin.call("modbus_fault", "set_reply_delay", 0.0)
    # F/T back: an explicit reset clears the hold, and a fresh chunk moves the arm again.
    assert wait_for(lambda: c.ft.stats()["connected"] == 1.0, 5.0)
    sleep(0.3)
    c.arm.reset_fault()
    assert wait_for(lambda: c.arm.stats()["hold"] == 0.0, 3.0), c.arm.stats()
    here = _pose(c)
    t_ns, poses = _chunk(here, (0.0, 0.0, -0.01), 1.0)
    c.send_chunk(t_ns, poses)
    assert wait_for(lambda: np.linalg.norm(_pose(c)[:3] - poses[-1, :3]) < 2e-3, 5.0)


@pytest.mark.slow
def test_stalled_rtde_stream_restarts_the_arm_driver(cell) -> None:
    twin, c = cell
    before = c.arm.stats()
    twin.call("pause_ur_stream", 1.0)
    assert wait_for(lambda: c.arm.stats()["process_restarts"] > before["process_restarts"], 5.0)
    assert wait_for(lambda: c.arm.alive and c.arm.stats()["connects"] > before["connects"], 20.0), (
        c.arm.stats()
    )
    st = c.arm.stats()
    assert (
        st["stream_timeouts"] > before["stream_timeouts"]
        or st["disconnects"] > before["disconnects"]
    )
    count = c.arm.ring.count
    assert wait_for(lambda: c.arm.ring.count > count + 100, 3.0)


# ---------------------------------------------------------------------- the commands
def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_demuse_drivers_stops_everything_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "demuse_ros", "drivers", "--sim", "--host", "127.0.0.82",
         "--report-s", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 90.0
        for line in proc.stdout:
            lines.append(line)
            if "camera 2" in line or "camera 3" in line or time.monotonic() > deadline:
                break
        assert any("demuse.drivers: arm" in ln for ln in lines), "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, _ = proc.communicate(timeout=30.0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines.append(out)
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert "Ctrl-C: stopping the arm" in text and "all stopped" in text
    assert wait_for(lambda: _group_gone(proc.pid), 5.0), "child processes left behind"


@pytest.mark.slow
def test_bench_drivers_prints_the_issue_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "demuse_ros", "bench", "drivers", "--sim", "--host", "127.0.0.83",
         "--seconds", "1", "--load-workers", "1", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "servo_hz",
        "servo_period_ms_p50",
        "servo_period_ms_p99",
        "servo_period_ms_max",
        "ft_rate_hz",
        "camera_fps",
        "camera_latency_ms_p50",
        "servo_p99_error_vs_goal",
    ):
        assert isinstance(result[key], float) and result[key] > 0, (key, result)
    assert result["chunks_rejected"] == 0 and result["arm_process_restarts"] == 0
    assert result["servo_hz"] == pytest.approx(125.0, rel=0.1)
