"""The assembled twin: config checks, lockstep expert, the real-time twin with real clients.

Each real-time test binds its own loopback address (127.0.0.x), since ur_rtde
hard-codes its ports.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from demuse_ros.config import ConfigError, load_config
from demuse_ros.twin.lockstep import run_expert_episode
from demuse_ros.twin.runner import SimConfig, Twin, TwinProcess
from demuse_ros.twin.ur_servers import URServersConfig

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mujoco", reason="needs the sim extra: pip install -e '.[sim]'")


def test_shipped_sim_config_loads() -> None:
    config = load_config(ROOT / "config" / "sim.yaml", SimConfig, "sim_node")
    assert config.controller.personality == "cb3" and config.plant.arm_model == "ur10"


def test_sim_config_rejects_inconsistent_parts() -> None:
    from demuse_ros.twin.ur_controller import URControllerConfig

    with pytest.raises(ConfigError, match=r"set plant\.arm_model: ur10e"):
        SimConfig(controller=URControllerConfig(personality="e-series"))
    from dataclasses import replace

    from demuse_ros.twin.camera_feed import CameraFeedConfig

    with pytest.raises(ConfigError, match=r"camera\.fx"):
        SimConfig(camera=replace(CameraFeedConfig(), fx=600.0))


@pytest.mark.slow
def test_scripted_expert_success_rate_in_lockstep() -> None:
    """The issue's bar: >= 95 % over randomized placements; measured over 20 seeds."""
    twin = Twin()
    try:
        results = [run_expert_episode(twin, seed) for seed in range(20)]
    finally:
        twin.close()
    failures = [(r.seed, r.reason) for r in results if not r.success]
    rate = 1 - len(failures) / len(results)
    print(f"expert success {rate:.0%}; failures {failures}")
    assert rate >= 0.95, failures
    for r in results:
        if r.success:
            assert r.metrics["peak_force_n"] <= 15.0
            assert abs(r.metrics["force_error_n"]) <= 2.0


def test_lockstep_is_deterministic() -> None:
    a, b = Twin(), Twin()
    try:
        ra, rb = run_expert_episode(a, 3), run_expert_episode(b, 3)
    finally:
        a.close()
        b.close()
    assert ra.success == rb.success and ra.duration_s == rb.duration_s
    assert ra.metrics["peak_force_n"] == rb.metrics["peak_force_n"]


# ---------------------------------------------------------------------- real time, real clients
def _config(host: str, modbus_port: int, **controller) -> SimConfig:
    from dataclasses import replace

    base = SimConfig()
    return replace(
        base,
        ur_servers=URServersConfig(host=host),
        modbus=replace(base.modbus, host=host, port=modbus_port),
        controller=replace(base.controller, **controller),
    )


def _consume_frames(ring: str, width: int, height: int, n: int, out: mp.Queue) -> None:
    """Camera-driver stand-in: the software device fed from the twin's frame ring."""
    from demuse_ros.twin.camera_feed import CameraFeedConfig, FrameReader, SoftwareCamera

    reader = FrameReader(ring, width, height)
    camera = SoftwareCamera(CameraFeedConfig(width=width, height=height))
    got = []
    try:
        while len(got) < n:
            for record in reader.wait_new(5.0):
                camera.push(record)
            pair = camera.poll()
            while pair is not None:
                depth, _color = pair
                got.append(
                    (
                        depth.get_frame_number(),
                        depth.get_timestamp(),
                        depth.get_distance(width // 2, height - 20),
                    )
                )
                pair = camera.poll()
    finally:
        camera.close()
        reader.close()
    out.put(got)


@pytest.mark.slow
def test_realtime_twin_serves_real_clients() -> None:
    import rtde_control
    import rtde_receive
    from pymodbus.client import ModbusTcpClient

    host = "127.0.0.41"
    with TwinProcess(_config(host, 5041)) as twin:
        ep = twin.endpoints
        recv = rtde_receive.RTDEReceiveInterface(host)
        ctrl = rtde_control.RTDEControlInterface(host)
        try:
            # Arm state over RTDE is the plant's state.
            assert np.allclose(recv.getActualQ(), twin.call("arm_q"), atol=1e-3)
            assert recv.getRobotMode() == 7 and recv.getSafetyMode() == 1
            # A synchronous moveL ends at the target (TCP = fingertip centre).
            start = np.array(recv.getActualTCPPose())
            goal = start + np.array([0.03, -0.02, 0.04, 0, 0, 0])
            assert ctrl.moveL(goal.tolist(), 0.1, 0.5)
            assert np.allclose(recv.getActualTCPPose()[:3], goal[:3], atol=1e-3)
            # RG2-FT over Modbus: close the fingers to 20 mm, read the width back.
            client = ModbusTcpClient(host, port=ep["modbus_port"], timeout=2)
            assert client.connect()
            try:
                assert not client.write_registers(2, [200, 200, 1], device_id=65).isError()
                for _ in range(300):
                    regs = client.read_holding_registers(257, count=26, device_id=65).registers
                    if regs[281 - 257] == 0 and abs(regs[280 - 257] - 200) <= 2:
                        break
                    recv.getTimestamp()  # pace the poll on the robot stream
                    ctrl.waitPeriod(ctrl.initPeriod())
                else:
                    pytest.fail(f"gripper did not reach 20 mm: {regs[280 - 257] / 10} mm")
                assert twin.call("gripper_width_m") == pytest.approx(0.020, abs=0.001)
                # Fingertip force registers are the plant's raw readings (not zeroed yet).
                fz_left = struct.unpack(">h", struct.pack(">H", regs[261 - 257]))[0] * 0.1
                assert math.isclose(fz_left, twin.call("finger_wrenches")[0][2], abs_tol=0.5)
            finally:
                client.close()
            # Camera frames reach a software device in another process.
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            w, h = ep["camera_size"]
            proc = ctx.Process(target=_consume_frames, args=(ep["camera_ring"], w, h, 10, out))
            proc.start()
            frames = out.get(timeout=60)
            proc.join(timeout=10)
            numbers = [f[0] for f in frames]
            stamps = [f[1] for f in frames]
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
            assert all(b > a for a, b in itertools.pairwise(stamps))
            period_ms = np.diff(stamps) / np.maximum(np.diff(numbers), 1)
            assert np.median(period_ms) == pytest.approx(1000 / 30, rel=0.1)
            assert all(0.3 < f[2] < 3.0 for f in frames)  # the table, in metres
            assert twin.call("stats")["realtime_factor"] == pytest.approx(1.0, abs=0.05)
        finally:
            ctrl.stopScript()
            ctrl.disconnect()
            recv.disconnect()


@pytest.mark.slow
def test_protective_stop_and_dashboard_unlock_on_the_realtime_twin() -> None:
    import dashboard_client
    import rtde_control
    import rtde_receive

    host = "127.0.0.42"
    with TwinProcess(_config(host, 5042)) as twin:
        recv = rtde_receive.RTDEReceiveInterface(host)
        ctrl = rtde_control.RTDEControlInterface(host)
        dash = dashboard_client.DashboardClient(host)
        dash.connect()
        try:
            twin.call("trigger_protective_stop", "test")
            assert _wait_for(lambda: recv.isProtectiveStopped())
            pose = np.array(recv.getActualTCPPose()) + [0, 0, 0.01, 0, 0, 0]
            assert not ctrl.moveL(pose.tolist(), 0.1, 0.5)
            dash.unlockProtectiveStop()
            assert _wait_for(lambda: not recv.isProtectiveStopped())
            assert ctrl.reuploadScript()
            assert _wait_for(ctrl.isProgramRunning)  # reuploadScript does not wait for it
            assert ctrl.moveL(pose.tolist(), 0.1, 0.5)
            assert np.allclose(recv.getActualTCPPose()[:3], pose[:3], atol=1e-3)
        finally:
            dash.disconnect()
            ctrl.disconnect()
            recv.disconnect()


def _wait_for(condition, timeout_s: float = 5.0) -> bool:
    from demuse_ros.timing.loop import PeriodicLoop

    loop = PeriodicLoop(100.0)
    for _ in range(int(timeout_s * 100)):
        if condition():
            return True
        loop.wait()
    return bool(condition())


@pytest.mark.slow
def test_reset_keeps_the_streams_of_a_connected_cell_running() -> None:
    """A new scene in a running twin (what episode recording does between episodes):
    the camera keeps rendering (its frame schedule follows simulated time back), the
    controller keeps streaming and no driver restarts."""
    from demuse_ros.teleop.session import sim_cell

    host = "127.0.0.42"
    with sim_cell(_config(host, 5042)) as (twin, cell):
        time.sleep(1.0)
        before = {name: getattr(cell, name).ring.count for name in ("camera", "ft", "arm")}
        twin.call("reset", 1)
        time.sleep(1.5)
        grew = {n: getattr(cell, n).ring.count - before[n] for n in before}
        print("records in 1.5 s after a reset:", grew)
        assert grew["camera"] >= 30 and grew["arm"] >= 150 and grew["ft"] >= 100
        assert all(d.stats().get("process_restarts", 0) == 0 for d in cell.drivers.values())
