"""Teleoperation on the simulated cell: the real drivers (ur_rtde, pymodbus) against the twin.

One twin and cell serve every case (start-up takes ~5-10 s on the small test box). The
arm's workspace box ends 3 cm above the home TCP so that driving up leaves it quickly.
Tolerances are generous: the machine is small and shared.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from demuse_ros.drivers.cell import CellConfig
from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix
from demuse_ros.teleop import InputDevice, TeleopCommand, TeleopConfig, TeleopController
from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.loop import PeriodicLoop

pytest.importorskip("mujoco", reason="needs the sim extra: pip install -e '.[sim]'")
pytest.importorskip("rtde_control", reason="needs ur_rtde 1.6.5")

HOST = "127.0.0.171"
MODBUS_PORT = 17071
HOME_Z = 0.25  # the twin's home TCP height (m)
BOX_TOP_Z = HOME_Z + 0.03


@pytest.fixture(scope="module")
def cell():
    from demuse_ros.teleop.session import sim_cell
    from demuse_ros.twin.runner import SimConfig
    from demuse_ros.twin.sim_config import scale_camera
    from demuse_ros.twin.ur_servers import URServersConfig

    base = SimConfig()
    sim = scale_camera(
        dataclasses.replace(
            base,
            ur_servers=URServersConfig(host=HOST),
            modbus=dataclasses.replace(base.modbus, host=HOST, port=MODBUS_PORT),
        ),
        0.25,
    )
    cfg = CellConfig()
    safety = dataclasses.replace(cfg.arm.safety, workspace_max_m=(0.2, 0.8, BOX_TOP_Z))
    cfg = dataclasses.replace(cfg, arm=dataclasses.replace(cfg.arm, safety=safety))
    with sim_cell(sim, cfg) as (twin, c):
        yield twin, c


def _pose(c) -> np.ndarray:
    return np.asarray(c.arm.ring.read_latest(("tcp_pose",))["tcp_pose"], dtype=float)


def _rotation(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Rotation vector from p0's orientation to p1's, in the base frame."""
    return matrix_to_rotvec(rotvec_to_matrix(p1[3:]) @ rotvec_to_matrix(p0[3:]).T)


def _drive(
    ctrl: TeleopController,
    twist,
    seconds: float,
    *,
    enable: bool = True,
    scale: float = 1.0,
    submit: bool = True,
    watch=None,
) -> None:
    """Step the controller at its rate for ``seconds``, submitting a fresh command each tick
    (``submit=False``: the device went silent)."""
    loop = PeriodicLoop(ctrl.config.rate_hz, spin_s=0.0)
    for _ in range(round(seconds * ctrl.config.rate_hz)):
        loop.wait()
        now = now_ns()
        if submit:
            ctrl.submit(TeleopCommand(now, np.asarray(twist, float), enable, speed_scale=scale))
        ctrl.step(now)
        if watch is not None:
            watch()


def _settle(c, seconds: float = 0.4) -> None:
    loop = PeriodicLoop(20.0, spin_s=0.0)
    for _ in range(round(seconds * 20)):
        loop.wait()


def _release(ctrl: TeleopController) -> None:
    _drive(ctrl, np.zeros(6), 0.2, enable=False)


def test_teleop_moves_the_arm_in_the_commanded_direction(cell) -> None:
    _, c = cell
    cfg = TeleopConfig()
    ctrl = TeleopController(c, cfg)
    sent: list[tuple] = []
    ctrl.add_chunk_listener(
        lambda t_send, t, poses, widths: sent.append((t_send, t, poses, widths))
    )
    full = cfg.full_scale
    p0 = _pose(c)
    _drive(ctrl, [0, full[1], 0, 0, 0, 0], 1.0, scale=0.5)
    _drive(ctrl, np.zeros(6), 0.5, scale=0.5)  # enabled, no twist: ramps down and holds
    p1 = _pose(c)
    _drive(ctrl, [0, -full[1], 0, 0, 0, 0], 1.0, scale=1.0)
    _drive(ctrl, np.zeros(6), 0.5)
    p2 = _pose(c)
    d1, d2 = p1[:3] - p0[:3], p2[:3] - p1[:3]
    print(f"+y at 50 %: {d1 * 1000} mm;  -y at 100 %: {d2 * 1000} mm")
    # v · T: 0.05 m/s and 0.1 m/s for 1 s (the ramps up and down cancel).
    assert d1[1] == pytest.approx(0.05, rel=0.25) and d2[1] == pytest.approx(-0.1, rel=0.25)
    assert abs(d2[1] / d1[1]) == pytest.approx(2.0, rel=0.15)
    assert np.all(np.abs(d1[[0, 2]]) < 3e-3) and np.all(np.abs(d2[[0, 2]]) < 3e-3)
    _drive(ctrl, [0, 0, 0, 0, 0, full[5]], 0.5)  # yaw about base z at 0.4 rad/s
    _drive(ctrl, np.zeros(6), 0.5)
    rot = _rotation(p2, _pose(c))
    print(f"+rz for 0.5 s: {rot} rad")
    assert rot[2] == pytest.approx(0.2, rel=0.25) and np.all(np.abs(rot[:2]) < 0.02)
    assert ctrl.refusals == 0 and c.arm.stats()["chunks_rejected"] == 0
    # Every chunk went to the recorder hook: absolute future stamps, poses, gripper widths.
    assert len(sent) == ctrl.chunks_sent >= 25
    t_send, t, poses, widths = sent[-1]
    assert t.dtype == np.int64 and np.all(t > t_send) and poses.shape == (len(t), 6)
    assert widths.shape == t.shape and np.all(np.isfinite(widths))  # the measured width
    _release(ctrl)
    assert ctrl.hold_reason == "disabled" and not ctrl.status()["enabled"]


def test_deadman_off_holds_and_sends_nothing(cell) -> None:
    _, c = cell
    ctrl = TeleopController(c, TeleopConfig())
    full = ctrl.config.full_scale
    _drive(ctrl, [full[0], 0, 0, 0, 0, 0], 0.6)  # moving +x at 0.1 m/s
    assert ctrl.streaming
    sent = ctrl.chunks_sent
    _drive(ctrl, [full[0], 0, 0, 0, 0, 0], 0.1, enable=False)  # one tick without the deadman
    p_hold = _pose(c)
    _drive(ctrl, [full[0], 0, 0, 0, 0, 0], 0.3, enable=False)
    p_a = _pose(c)
    _drive(ctrl, [full[0], 0, 0, 0, 0, 0], 0.6, enable=False)
    p_b = _pose(c)
    print(f"after the hold: {(p_a - p_hold)[:3] * 1000} mm, then {(p_b - p_a)[:3] * 1000} mm")
    assert ctrl.chunks_sent == sent and ctrl.hold_reason == "disabled"
    assert ctrl.holds["disabled"] == 1  # the plan was cut once, on the transition
    # servoStop: the servo's lag (~40 ms · 0.1 m/s) plus a few mm of braking.
    assert np.linalg.norm(p_a[:3] - p_hold[:3]) < 0.008
    assert np.linalg.norm(p_b[:3] - p_a[:3]) < 5e-4  # and it holds


def test_stale_input_holds(cell) -> None:
    _, c = cell
    ctrl = TeleopController(c, TeleopConfig(stale_timeout_s=0.3))
    full = ctrl.config.full_scale
    _drive(ctrl, [-full[0], 0, 0, 0, 0, 0], 0.6, scale=0.5)  # back -x at 0.05 m/s
    p_last = _pose(c)
    _drive(ctrl, None, 0.6, submit=False)  # the device goes silent; the loop goes on
    p_a = _pose(c)
    _drive(ctrl, None, 0.5, submit=False)
    p_b = _pose(c)
    travel = np.linalg.norm(p_a[:3] - p_last[:3])
    print(f"travel after the last input: {travel * 1000:.1f} mm")
    assert ctrl.hold_reason == "stale input" and ctrl.holds["stale input"] == 1
    # Until the command is 0.3 s old the arm goes on (≤ 0.4 s · 0.05 m/s), then stops.
    assert 0.005 < travel < 0.03
    assert np.linalg.norm(p_b[:3] - p_a[:3]) < 5e-4


def test_out_of_box_motion_is_refused_by_the_arm_filter(cell) -> None:
    _, c = cell
    ctrl = TeleopController(c, TeleopConfig())
    full = ctrl.config.full_scale
    before = c.arm.stats()
    heights: list[float] = []
    _drive(ctrl, [0, 0, full[2], 0, 0, 0], 1.5, watch=lambda: heights.append(_pose(c)[2]))
    _settle(c)
    _drive(ctrl, np.zeros(6), 0.1)  # one more tick reads the last chunk's verdict
    top = _pose(c)[2]
    after = c.arm.stats()
    print(
        f"top {top:.4f} m (box {BOX_TOP_Z} m), max seen {max(heights):.4f} m, refusals "
        f"{ctrl.refusals}, last {ctrl.last_refusal!r}"
    )
    assert after["rejected_workspace"] > before["rejected_workspace"]
    assert after["chunks_rejected"] - before["chunks_rejected"] == ctrl.refusals > 0
    assert ctrl.last_refusal == "workspace"
    assert max(heights) <= BOX_TOP_Z + 1e-3 and top <= BOX_TOP_Z + 1e-3  # never outside
    assert top > BOX_TOP_Z - 0.03  # it went up to near the boundary and stopped there
    accepted = after["chunks_accepted"]
    _drive(ctrl, [0, 0, -full[2], 0, 0, 0], 0.6)  # back into the box: accepted again
    _drive(ctrl, np.zeros(6), 0.3)
    assert c.arm.stats()["chunks_accepted"] > accepted and _pose(c)[2] < top - 0.01
    _release(ctrl)


def test_freedrive_refuses_chunks_and_keeps_streaming(cell) -> None:
    twin, c = cell
    from demuse_ros.teleop.session import run_freedrive

    arm = c.arm
    arm.teach_mode(True)
    _settle(c, 0.3)
    assert arm.stats()["teach_mode"] == 1.0
    p0, records = _pose(c), arm.ring.count
    assert twin.call("guide_tcp", [0.05, 0.0, 0.0, 0.0, 0.0, 0.0], 0.4)  # a hand pulls +x
    ctrl = TeleopController(c, TeleopConfig())
    full = ctrl.config.full_scale
    _drive(ctrl, [0, full[1], 0, 0, 0, 0], 0.8)  # teleop tries meanwhile: refused
    _settle(c, 0.2)
    p1 = _pose(c)
    moved = p1[:3] - p0[:3]
    print(f"hand moved the tool {moved * 1000} mm; {arm.ring.count - records} state records")
    assert moved[0] == pytest.approx(0.02, abs=0.006) and abs(moved[1]) < 2e-3
    assert arm.ring.count - records > 0.8 * 125  # the state kept streaming (125 Hz)
    assert ctrl.last_refusal == "teach_mode" and arm.stats()["rejected_teach_mode"] >= 1
    arm.teach_mode(False)
    _settle(c, 0.3)
    assert arm.stats()["teach_mode"] == 0.0
    assert not twin.call("guide_tcp", [0.05, 0.0, 0.0, 0.0, 0.0, 0.0], 0.4)  # holds now
    accepted = arm.stats()["chunks_accepted"]
    _drive(ctrl, [-full[0], 0, 0, 0, 0, 0], 0.6)
    _drive(ctrl, np.zeros(6), 0.3)
    assert arm.stats()["chunks_accepted"] > accepted and _pose(c)[0] < p1[0] - 0.01
    _release(ctrl)
    # The session helper without a keyboard: teach mode for its duration, then off.
    summary = run_freedrive(c, None, seconds=0.5)
    assert not summary["interrupted"] and summary["arm"]["state_records"] > 0
    _settle(c, 0.3)
    assert arm.stats()["teach_mode"] == 0.0 and arm.stats()["fault"] == 0.0


def test_gripper_follows_teleop_targets_only_while_enabled(cell) -> None:
    twin, c = cell
    ctrl = TeleopController(c, TeleopConfig())
    width0 = twin.call("gripper_width_m")
    target = 0.03 if width0 > 0.05 else 0.08

    def command(enable: bool) -> None:
        loop = PeriodicLoop(ctrl.config.rate_hz, spin_s=0.0)
        for _ in range(5):
            loop.wait()
            now = now_ns()
            ctrl.submit(TeleopCommand(now, np.zeros(6), enable, gripper_width_m=target))
            ctrl.step(now)

    command(False)  # no deadman: the gripper target is not sent either
    _settle(c, 0.5)
    assert abs(twin.call("gripper_width_m") - width0) < 1e-3
    command(True)
    loop = PeriodicLoop(10.0, spin_s=0.0)
    for _ in range(40):
        if abs(twin.call("gripper_width_m") - target) < 3e-3:
            break
        loop.wait()
    assert abs(twin.call("gripper_width_m") - target) < 3e-3 and ctrl.gripper_width_m == target
    _release(ctrl)


class _ScriptedDevice(InputDevice):
    """A device whose operator pushes +y for ``push_s``, then lets go and quits."""

    name = "scripted"

    def __init__(self, config: TeleopConfig, push_s: float) -> None:
        self.config, self.push_ns = config, round(push_s * 1e9)
        self.t0: int | None = None
        self.opened = self.closed = False
        self._quit = False

    @property
    def quit_requested(self) -> bool:
        return self._quit

    def open(self) -> None:
        self.opened = True

    def poll(self, now_ns: int) -> TeleopCommand:
        self.t0 = now_ns if self.t0 is None else self.t0
        pushing = now_ns - self.t0 < self.push_ns
        self._quit = now_ns - self.t0 > self.push_ns + 300_000_000
        twist = np.array([0, self.config.full_scale[1], 0, 0, 0, 0]) if pushing else np.zeros(6)
        return TeleopCommand(now_ns, twist, enable=True)

    def close(self) -> None:
        self.closed = True


def test_run_teleop_loop_until_the_device_quits(cell) -> None:
    from demuse_ros.teleop.session import run_teleop

    _, c = cell
    cfg = TeleopConfig()
    p0 = _pose(c)
    with _ScriptedDevice(cfg, push_s=0.5) as device:
        summary = run_teleop(TeleopController(c, cfg), device, seconds=5.0)
    _settle(c, 0.3)
    moved = _pose(c)[1] - p0[1]
    assert device.opened and device.closed and not summary["interrupted"]
    assert summary["hold_reason"] == "stopped" and summary["chunks_sent"] >= 7
    assert moved == pytest.approx(0.025, rel=0.3)  # 0.05 m/s (scale 0.5) for 0.5 s


def test_teleop_demonstration_is_recorded_and_replays_as_training_data(cell, tmp_path) -> None:
    pytest.importorskip("mcap_ros2", reason="needs mcap-ros2-support (core dependency)")
    from demuse_ros.dataset.replay import ReplayConfig, replay_episode
    from demuse_ros.record.meta import EpisodeMeta
    from demuse_ros.record.recorder import Recorder, RecorderConfig
    from demuse_ros.sync.synchronizer import SyncConfig

    _, c = cell
    ctrl = TeleopController(c, TeleopConfig())
    with Recorder.from_cell(c, RecorderConfig(out_dir=str(tmp_path))) as rec:
        ctrl.add_chunk_listener(rec.log_chunk)  # what `demuse teleop --record` wires
        rec.start_episode(EpisodeMeta(task="teleop test", operator="pytest"))
        _drive(ctrl, [0, -ctrl.config.full_scale[1], 0, 0, 0, 0], 1.0, scale=0.5)
        _release(ctrl)
        sent = ctrl.chunks_sent
        path = rec.stop_episode(success=True)
        stats = rec.stats()
    assert stats["lost"] == {"camera": 0, "ft": 0, "arm": 0} and stats["dropped"] == 0
    # thresholds relaxed: this checks recording and replay, not timing (a loaded CI
    # machine can leave arm-record gaps over the 10 ms default around a frame)
    loose = SyncConfig(ft_threshold_s=0.05, arm_threshold_s=0.05, max_age_s=0.3)
    episode, replay = replay_episode(path, ReplayConfig(sync=loose))
    assert replay.chunks == sent and replay.action_source == "action_chunk"
    assert replay.valid >= 8  # about 1.2 s at 10 Hz
    # the commanded targets lead the measured motion along -y
    assert episode.actions[-1, 1] < episode.state[0, 1] - 0.02
