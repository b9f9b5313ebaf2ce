"""UR arm driver: the real ur_rtde clients in the driver's process against the twin's process.

Each real-time test binds its own loopback address (ur_rtde hard-codes its ports).
Tolerances are generous: the test machine is small and loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest

from demuse_ros.drivers.arm import ArmDriverConfig, ArmDriverProcess
from demuse_ros.drivers.arm_path import (
    WaypointPlan,
    future_waypoints,
    interpolate_pose,
    validate_chunk,
)
from demuse_ros.drivers.process import describe_exit
from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix
from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.loop import PeriodicLoop

_HOSTS = itertools.count(61)


# ---------------------------------------------------------------------- pure parts
def test_config_validates_servo_ranges() -> None:
    ArmDriverConfig(lookahead_time_s=0.03, gain=2000)
    with pytest.raises(ValueError):
        ArmDriverConfig(lookahead_time_s=0.25)
    with pytest.raises(ValueError):
        ArmDriverConfig(gain=50)
    with pytest.raises(ValueError):
        ArmDriverConfig(reconnect_min_s=2.0, reconnect_max_s=1.0)


def test_validate_chunk_checks_shapes_and_finiteness() -> None:
    t = np.array([1, 2], dtype=np.int64)
    validate_chunk(t, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="shape"):
        validate_chunk(t, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        validate_chunk(t, np.full((2, 6), np.nan))
    with pytest.raises(ValueError, match="integer"):
        validate_chunk(t.astype(float), np.zeros((2, 6)))


def test_interpolate_pose_linear_and_slerp() -> None:
    p0 = np.array([0, 0, 0, 0, 0, 0.0])
    p1 = np.array([0.1, 0, 0, 0, 0, 1.0])
    t = np.array([0, 100], dtype=np.int64)
    mid, i = interpolate_pose(t, np.stack([p0, p1]), 50)
    assert i == 0
    assert np.allclose(mid[:3], [0.05, 0, 0]) and np.allclose(mid[3:], [0, 0, 0.5])
    assert np.allclose(interpolate_pose(t, np.stack([p0, p1]), 200)[0], p1)
    # Slerp between two general orientations stays on the geodesic.
    r0, r1 = np.array([0.3, -0.2, 2.0]), np.array([-0.1, 0.4, 2.5])
    q, _ = interpolate_pose(t, np.stack([np.r_[0, 0, 0, r0], np.r_[0, 0, 0, r1]]), 50)
    rel = matrix_to_rotvec(rotvec_to_matrix(r1) @ rotvec_to_matrix(r0).T)
    half = matrix_to_rotvec(rotvec_to_matrix(0.5 * rel) @ rotvec_to_matrix(r0))
    assert np.allclose(q[3:], half, atol=1e-9)
    # ... which is what scipy's Slerp computes (the driver avoids its per-tick cost).
    from scipy.spatial.transform import Rotation, Slerp

    for a in (0.1, 0.5, 0.9):
        q, _ = interpolate_pose(t, np.stack([np.r_[0, 0, 0, r0], np.r_[0, 0, 0, r1]]), 100 * a)
        ref = Slerp([0.0, 1.0], Rotation.from_rotvec([r0, r1]))(a).as_rotvec()
        assert np.allclose(q[3:], ref, atol=1e-9)


def test_waypoint_plan_starts_at_the_anchor_and_forgets_passed_segments() -> None:
    t = np.array([100, 200, 300], dtype=np.int64)
    poses = np.zeros((3, 6))
    poses[:, 0] = [0.1, 0.2, 0.3]
    ahead_t, ahead_p = future_waypoints(150, t, poses)
    assert ahead_t.tolist() == [200, 300] and np.allclose(ahead_p[:, 0], [0.2, 0.3])
    plan = WaypointPlan(150, np.zeros(6), ahead_t, ahead_p)
    assert plan.target(150)[0] == 0.0  # no jump: starts where the arm was commanded
    assert plan.target(175)[0] == pytest.approx(0.1)
    assert plan.target(250)[0] == pytest.approx(0.25) and len(plan.t_ns) == 2
    assert plan.target(400)[0] == pytest.approx(0.3) and plan.end_ns == 300


def test_chunk_stamps_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        validate_chunk(np.array([2, 1], dtype=np.int64), np.zeros((2, 6)))


def test_realtime_priority_is_validated_and_reports_denial() -> None:
    from demuse_ros.timing.realtime import set_realtime_priority

    assert set_realtime_priority(0) is None
    with pytest.raises(ValueError, match=r"1\.\.99"):
        set_realtime_priority(120)


# ---------------------------------------------------------------------- against the twin
pytest.importorskip("mujoco", reason="needs the sim extra: pip install -e '.[sim]'")
pytest.importorskip("rtde_control", reason="needs ur_rtde 1.6.5")


def _twin_config(host: str, modbus_port: int, personality: str = "cb3"):
    from demuse_ros.twin.interface import PERSONALITIES
    from demuse_ros.twin.runner import SimConfig
    from demuse_ros.twin.ur_servers import URServersConfig

    base = SimConfig()
    return replace(
        base,
        controller=replace(base.controller, personality=personality),
        plant=replace(base.plant, arm_model=PERSONALITIES[personality].arm_model),
        ur_servers=URServersConfig(host=host),
        modbus=replace(base.modbus, host=host, port=modbus_port),
    )


@contextmanager
def _cell(personality: str = "cb3", **driver) -> Iterator[tuple]:
    from demuse_ros.twin.runner import TwinProcess

    n = next(_HOSTS)
    host = f"127.0.0.{n}"
    with TwinProcess(_twin_config(host, 5000 + n, personality)) as twin:
        arm = ArmDriverProcess(ArmDriverConfig(host=host, **driver))
        arm.start(timeout_s=60.0)
        try:
            yield twin, arm
        finally:
            arm.stop()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    loop = PeriodicLoop(50.0)
    for _ in range(int(timeout_s * 50)):
        if condition():
            return True
        loop.wait()
    return bool(condition())


def _sleep(seconds: float) -> None:
    _wait_for(lambda: False, seconds)


def _latest(arm: ArmDriverProcess) -> dict:
    record = arm.ring.read_latest()
    assert record is not None
    return record


def _move_chunk(start: np.ndarray, delta: np.ndarray, duration_s: float, n: int = 30):
    """Min-jerk path from ``start`` to ``start + delta`` starting 0.1 s from now."""
    t0 = now_ns() + 100_000_000
    s = np.linspace(0.0, 1.0, n + 1)[1:]
    profile = 10 * s**3 - 15 * s**4 + 6 * s**5
    poses = np.repeat(start[None, :], n, axis=0)
    poses[:, :3] += profile[:, None] * delta[None, :3]
    t_ns = t0 + np.round(s * duration_s * 1e9).astype(np.int64)
    return t_ns, poses


def _move(twin, arm, delta=(0.03, 0, 0), duration_s=1.5) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(_latest(arm)["tcp_pose"])
    t_ns, poses = _move_chunk(start, np.r_[delta, 0, 0, 0], duration_s)
    before = arm.stats()["chunks_accepted"]
    arm.send_chunk(t_ns, poses)
    assert _wait_for(lambda: arm.stats()["chunks_accepted"] > before, 2.0), arm.stats()
    assert _wait_for(lambda: arm.stats()["watchdog_stops"] > 0, duration_s + 5.0), arm.stats()
    _sleep(0.3)
    return start, poses[-1]


@pytest.mark.slow
def test_state_tracking_watchdog_and_rejections() -> None:
    with _cell() as (twin, arm):
        # State records flow at about the control rate and match the plant.
        rate = twin.endpoints["control_rate_hz"]
        c0, t0 = arm.ring.count, now_ns()
        _sleep(1.0)
        c1, t1 = arm.ring.count, now_ns()
        measured = (c1 - c0) / ((t1 - t0) * 1e-9)
        print(f"state records: {measured:.1f} Hz (control {rate} Hz); stats {arm.stats()}")
        assert 0.6 * rate < measured < 1.2 * rate
        rec = _latest(arm)
        assert np.allclose(rec["joint_positions_rad"], twin.call("arm_q"), atol=5e-3)
        assert rec["robot_mode"] == 7 and rec["safety_mode"] == 1
        assert rec["t_capture_ns"] <= rec["t_receive_ns"] <= now_ns()
        st = arm.stats()
        assert st["connected"] == 1.0 and st["control_rate_hz"] == rate

        # A 3 cm move along x over 1.5 s is tracked; the watchdog stops it afterwards.
        start, goal = _move(twin, arm)
        final = np.asarray(_latest(arm)["tcp_pose"])
        err_mm = np.linalg.norm(final[:3] - goal[:3]) * 1e3
        print(f"tracking: final error {err_mm:.2f} mm, stats {arm.stats()}")
        assert err_mm < 2.0 and final[0] - start[0] > 0.025
        assert np.allclose(final[3:], start[3:], atol=0.01)
        st = arm.stats()
        assert st["watchdog_stops"] == 1 and st["servo_commands"] > 0.5 * rate
        assert st["servo_rate_hz"] == pytest.approx(rate, rel=0.1)
        # Held still after the watchdog stop.
        _sleep(0.3)
        assert np.linalg.norm(np.asarray(_latest(arm)["tcp_pose"])[:3] - final[:3]) < 5e-4

        # Out-of-box chunk: rejected by the filter and counted; the arm does not move.
        here = np.asarray(_latest(arm)["tcp_pose"])
        bad = here.copy()
        bad[2] = -0.5
        arm.send_chunk(np.array([now_ns() + 500_000_000]), bad[None, :])
        assert _wait_for(lambda: arm.stats()["rejected_workspace"] == 1, 2.0), arm.stats()
        # NaN: refused here, before queuing ...
        with pytest.raises(ValueError, match="NaN"):
            arm.send_chunk(np.array([now_ns() + 500_000_000]), np.full((1, 6), np.nan))
        # ... and by the filter in the child should one get through.
        arm.send(("chunk", np.array([now_ns() + 500_000_000]), np.full((1, 6), np.nan), now_ns()))
        assert _wait_for(lambda: arm.stats()["rejected_non_finite"] == 1, 2.0), arm.stats()
        # Too fast: 10 cm in 0.1 s.
        fast = here + np.r_[0.1, 0, 0, 0, 0, 0]
        arm.send_chunk(np.array([now_ns() + 100_000_000]), fast[None, :])
        assert _wait_for(lambda: arm.stats()["rejected_speed"] == 1, 2.0), arm.stats()
        _sleep(0.3)
        st = arm.stats()
        assert st["chunks_rejected"] == 3 and st["chunks_accepted"] == 1
        assert np.linalg.norm(np.asarray(_latest(arm)["tcp_pose"])[:3] - here[:3]) < 5e-4


@pytest.mark.slow
def test_protective_stop_faults_until_reset() -> None:
    import dashboard_client

    with _cell() as (twin, arm):
        twin.call("trigger_protective_stop", "test")
        assert _wait_for(lambda: arm.stats()["fault"] == 1.0, 5.0), arm.stats()
        assert arm.stats()["faults"] == 1
        here = np.asarray(_latest(arm)["tcp_pose"])
        t_ns, poses = _move_chunk(here, np.r_[0, 0, 0.02, 0, 0, 0], 1.0)
        arm.send_chunk(t_ns, poses)
        assert _wait_for(lambda: arm.stats()["rejected_fault"] == 1, 2.0), arm.stats()
        # A reset while the robot is still stopped changes nothing.
        arm.reset_fault()
        assert _wait_for(lambda: arm.stats()["resets"] == 1, 2.0)
        assert arm.stats()["fault"] == 1.0

        dash = dashboard_client.DashboardClient(arm.config.host)
        dash.connect()
        try:
            dash.unlockProtectiveStop()
        finally:
            dash.disconnect()
        assert _wait_for(lambda: _latest(arm)["safety_mode"] == 1, 5.0)
        arm.reset_fault()
        assert _wait_for(lambda: arm.stats()["fault"] == 0.0, 8.0), arm.stats()
        assert arm.stats()["faults"] == 1
        # A fresh chunk moves the arm again.
        start, goal = _move(twin, arm, delta=(0, 0, 0.02), duration_s=1.0)
        final = np.asarray(_latest(arm)["tcp_pose"])
        print(f"after reset: error {np.linalg.norm(final[:3] - goal[:3]) * 1e3:.2f} mm")
        assert final[2] - start[2] > 0.015
        assert np.linalg.norm(final[:3] - goal[:3]) < 2e-3


@pytest.mark.slow
def test_lost_connection_restarts_the_driver_without_resuming_the_old_plan() -> None:
    with _cell(reconnect_min_s=0.2) as (twin, arm):
        start = np.asarray(_latest(arm)["tcp_pose"])
        t_ns, poses = _move_chunk(start, np.r_[0.06, 0, 0, 0, 0, 0], 3.0)
        arm.send_chunk(t_ns, poses)
        _sleep(0.8)  # mid-move
        twin.call("drop_ur_connections")
        assert _wait_for(lambda: arm.stats()["process_restarts"] >= 1, 10.0), arm.stats()
        assert _wait_for(
            lambda: arm.alive and arm.stats()["reconnects"] >= 1 and arm.stats()["connected"],
            20.0,
        ), arm.stats()
        st = arm.stats()
        print(f"after the drop: {describe_exit(arm.last_exit_code)}; stats {st}")
        assert st["disconnects"] >= 1 or arm.last_exit_code != 0
        # The old plan had ~2 s and most of its 6 cm left: the arm must not follow it.
        _sleep(0.3)
        here = np.asarray(_latest(arm)["tcp_pose"])
        _sleep(1.5)
        later = np.asarray(_latest(arm)["tcp_pose"])
        print(f"moved {np.linalg.norm(later[:3] - here[:3]) * 1e3:.2f} mm after the restart")
        assert np.linalg.norm(later[:3] - here[:3]) < 5e-4
        assert here[0] - start[0] < 0.05  # it stopped short of the old goal
        # A chunk sent before the new connection is refused as stale ...
        old = now_ns() - 60 * 1_000_000_000
        arm.send(("chunk", np.array([now_ns() + 500_000_000]), later[None, :], old))
        assert _wait_for(lambda: arm.stats()["rejected_stale"] == 1, 2.0), arm.stats()
        # ... and a fresh one moves the arm from where it is.
        before = arm.stats()["watchdog_stops"]
        t_ns, poses = _move_chunk(later, np.r_[0, 0, 0.02, 0, 0, 0], 1.0)
        arm.send_chunk(t_ns, poses)
        assert _wait_for(lambda: arm.stats()["watchdog_stops"] > before, 6.0), arm.stats()
        _sleep(0.3)
        final = np.asarray(_latest(arm)["tcp_pose"])
        assert np.linalg.norm(final[:3] - poses[-1, :3]) < 2e-3


@pytest.mark.slow
def test_e_series_runs_at_500_hz_and_tracks() -> None:
    with _cell("e-series") as (twin, arm):
        assert twin.endpoints["control_rate_hz"] == 500.0
        c0, t0 = arm.ring.count, now_ns()
        _sleep(1.0)
        rate = (arm.ring.count - c0) / ((now_ns() - t0) * 1e-9)
        assert arm.stats()["control_rate_hz"] == 500.0 and 400 < rate < 550, rate
        start, goal = _move(twin, arm, delta=(0, 0.02, 0), duration_s=1.0)
        final = np.asarray(_latest(arm)["tcp_pose"])
        st = arm.stats()
        print(
            f"e-series: records {rate:.1f} Hz, final error "
            f"{np.linalg.norm(final[:3] - goal[:3]) * 1e3:.2f} mm, stats {st}"
        )
        assert np.linalg.norm(final[:3] - goal[:3]) < 2e-3 and final[1] - start[1] > 0.015
        assert st["servo_rate_hz"] == pytest.approx(500.0, rel=0.1)
