"""Teleoperation without a robot: motion law, keyboard parsing, SpaceMouse mapping, the
twin controller's teach mode, CLI registration."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest

from demuse_ros.config import ConfigError
from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix
from demuse_ros.safety.filter import SafetyConfig, SafetyFilter
from demuse_ros.teleop import KeyboardConfig, KeyboardTeleop, SpaceMouse, TeleopConfig
from demuse_ros.teleop.core import integrate_twist, plan_horizon, ramp_twist, shape_twist

S = 1_000_000_000
HOME = np.array([-0.65, -0.15, 0.25, math.pi / math.sqrt(2), math.pi / math.sqrt(2), 0.0])


# ---------------------------------------------------------------------- motion law
def test_config_must_stay_well_under_the_safety_limits() -> None:
    safety = SafetyConfig()
    TeleopConfig().check_against(safety)
    with pytest.raises(ConfigError, match="max_linear_speed_m_s"):
        TeleopConfig(max_linear_speed_m_s=0.2).check_against(safety)  # 80 % of 0.25 m/s
    with pytest.raises(ConfigError, match="max_angular_accel_rad_s2"):
        TeleopConfig(max_angular_accel_rad_s2=8.0).check_against(safety)
    with pytest.raises(ConfigError, match="speed_scale"):
        TeleopConfig(speed_scale=1.5)


def test_shape_twist_deadband_scale_and_norm_caps() -> None:
    cfg = TeleopConfig(deadband=0.1, speed_scale=0.5)
    full = cfg.full_scale
    assert np.all(shape_twist(0.09 * full, cfg, 1.0) == 0.0)  # inside the deadband
    half = shape_twist(np.array([0.55, 0, 0, 0, 0, 0]) * full, cfg, 1.0)
    assert half[0] == pytest.approx(0.5 * full[0])  # rescaled past the deadband
    assert shape_twist(-full, cfg, 0.5)[2] == pytest.approx(-0.5 * full[2] / math.sqrt(3))
    diagonal = shape_twist(np.array([1, 1, 1, 1, 1, 1]) * full, cfg, 1.0)
    assert np.linalg.norm(diagonal[:3]) == pytest.approx(cfg.max_linear_speed_m_s)
    assert np.linalg.norm(diagonal[3:]) == pytest.approx(cfg.max_angular_speed_rad_s)
    assert np.all(shape_twist(np.full(6, np.nan), cfg, 1.0) == 0.0)
    assert shape_twist(10 * full, cfg, 1.0)[0] <= cfg.max_linear_speed_m_s


def test_ramp_integrate_and_every_horizon_passes_the_safety_filter() -> None:
    cfg = TeleopConfig(speed_scale=1.0)
    dt = 1.0 / cfg.rate_hz
    v = ramp_twist(np.zeros(6), np.array([0.1, 0, 0, 0, 0, 0.4]), cfg, dt)
    assert v[0] == pytest.approx(cfg.max_linear_accel_m_s2 * dt)
    assert v[5] == pytest.approx(0.2)  # 2 rad/s² · 0.1 s
    p = integrate_twist(HOME, np.array([0, 0, 0, 0, 0, 0.5]), 0.2)
    rel = matrix_to_rotvec(rotvec_to_matrix(p[3:]) @ rotvec_to_matrix(HOME[3:]).T)
    assert np.allclose(rel, [0, 0, 0.1], atol=1e-9)  # a rotation about base z
    # Worst cases from rest and at full speed (reversal): the filter accepts every chunk.
    safety = SafetyFilter(SafetyConfig(workspace_min_m=(-2, -2, -2), workspace_max_m=(2, 2, 2)))
    full = shape_twist(cfg.full_scale, cfg, 1.0)
    for start_twist, target in ((np.zeros(6), full), (full, -full), (full, np.zeros(6))):
        poses, twists = plan_horizon(HOME, start_twist, target, cfg)
        t_ns = np.arange(1, cfg.horizon_steps + 1, dtype=np.int64) * cfg.period_ns
        verdict = safety.check_chunk(HOME, 0, t_ns, poses)
        assert verdict.ok, verdict
        assert len(poses) == cfg.horizon_steps and np.all(np.abs(np.diff(twists, axis=0)) < 0.21)


# ---------------------------------------------------------------------- keyboard
def _keys(**keyboard: float) -> KeyboardTeleop:
    return KeyboardTeleop(TeleopConfig(), KeyboardConfig(**keyboard))


def test_keyboard_enable_motion_and_hold_time() -> None:
    kb = _keys(key_hold_s=0.3)
    kb.feed(b"w", 0)
    assert not kb.command(0).enable and not np.any(kb.command(0).twist)  # deadman off
    kb.feed(b"e", 1 * S)
    kb.feed(b"wa", 1 * S)
    cmd = kb.command(1 * S + S // 10)
    full = TeleopConfig().full_scale
    assert cmd.enable and np.allclose(cmd.twist, [full[0], full[1], 0, 0, 0, 0])
    assert not np.any(kb.command(1 * S + S // 2).twist)  # 0.3 s after the last press
    kb.feed(b"ku", 2 * S)
    assert np.allclose(kb.command(2 * S).twist[3:], [-full[3], 0, full[5]])
    kb.feed(b"d", 2 * S)  # the same axis, the other way: replaces
    assert kb.command(2 * S).twist[1] == -full[1]
    kb.feed(b" ", 2 * S)
    assert not kb.command(2 * S).enable and not np.any(kb.command(2 * S).twist)


def test_keyboard_speed_gripper_force_quit() -> None:
    kb = _keys()
    assert kb.command(0).speed_scale == 0.5 and kb.command(0).gripper_width_m is None
    kb.feed(b"++=", 0)
    assert kb.command(0).speed_scale == pytest.approx(0.8)
    kb.feed(b"-" * 20, 0)
    assert kb.command(0).speed_scale == pytest.approx(0.05)  # floor
    kb.feed(b"h", 0)
    assert kb.command(0).gripper_width_m == 0.0
    kb.feed(b"g", 0)
    assert kb.command(0).gripper_width_m == pytest.approx(0.1)
    kb.feed(b"]]]]]]", 0)
    assert kb.command(0).gripper_force_n == 40.0  # RG2 maximum
    kb.feed(b"[" * 20, 0)
    assert kb.command(0).gripper_force_n == 3.0  # RG2 minimum
    kb.feed(b"eq", 0)
    assert kb.quit_requested and not kb.command(0).enable


def test_keyboard_skips_escape_sequences_and_disarms_itself() -> None:
    kb = _keys(disarm_after_s=5.0)
    kb.feed(b"e", 0)
    force = kb.command(0).gripper_force_n
    kb.feed(b"\x1b[A\x1b[1;5D\x1bOP", 0)  # up arrow, Ctrl-left, F1: '[' and 'D' are not keys
    cmd = kb.command(0)
    assert cmd.gripper_force_n == force and not np.any(cmd.twist) and cmd.enable
    kb.feed(b"\x1b", 0)  # split across reads
    kb.feed(b"[", 0)
    kb.feed(b"Bw", 0)
    assert kb.command(0).twist[0] > 0  # 'B' ended the sequence, 'w' is a key again
    assert kb.command(4 * S).enable
    assert not kb.command(6 * S).enable  # 5 s without keys: disarmed
    assert not _keys(disarm_after_s=0.0).command(10**6 * S).enable


def test_terminal_keyboard_reads_a_pty_in_cbreak_mode_and_restores_it() -> None:
    import os
    import pty
    import select
    import termios

    from demuse_ros.teleop import TerminalKeyboard

    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with TerminalKeyboard(TeleopConfig(), fd=slave) as kb:
            lflag = termios.tcgetattr(slave)[3]
            assert not lflag & termios.ECHO and not lflag & termios.ICANON
            os.write(master, b"ew")  # no newline needed: byte at a time
            assert select.select([slave], [], [], 2.0)[0]
            cmd = kb.poll(5 * S)
            assert cmd.enable and cmd.twist[0] > 0 and cmd.t_ns == 5 * S
            os.write(master, b"q")
            select.select([slave], [], [], 2.0)
            kb.poll(6 * S)
            assert kb.quit_requested
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


# ---------------------------------------------------------------------- SpaceMouse
def test_spacemouse_state_mapping_deadman_and_gripper_toggle() -> None:
    cfg = TeleopConfig()
    sm = SpaceMouse(cfg, axis_signs=(1, -1, 1, 1, 1, 1))

    def state(buttons, **axes):
        values = {"x": 0.0, "y": 0.0, "z": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}
        return SimpleNamespace(t=0.0, buttons=buttons, **{**values, **axes})

    cmd = sm.command(state([0, 0], x=0.5, y=0.5, pitch=-1.0, yaw=2.0), 7)
    full = cfg.full_scale
    assert not cmd.enable and cmd.t_ns == 7 and cmd.gripper_width_m is None
    assert np.allclose(cmd.twist, [0.5 * full[0], -0.5 * full[1], 0, -full[3], 0, full[5]])
    assert sm.command(state([1, 0]), 8).enable
    assert sm.command(state([1, 1]), 9).gripper_width_m == 0.0  # first press closes
    assert sm.command(state([1, 1]), 10).gripper_width_m == 0.0  # held: no toggle
    sm.command(state([1, 0]), 11)
    assert sm.command(state([0, 1]), 12).gripper_width_m == pytest.approx(0.1)


@pytest.mark.skipif(
    importlib.util.find_spec("pyspacemouse") is not None, reason="pyspacemouse is installed"
)
def test_spacemouse_without_the_library_says_what_to_install() -> None:
    with pytest.raises(RuntimeError, match="pip install pyspacemouse"):
        SpaceMouse(TeleopConfig()).open()


# ---------------------------------------------------------------------- twin teach mode
class _HandPlant:
    """Joints follow the setpoint exactly, unless pushed (``push``) like a hand would."""

    def __init__(self, q0) -> None:
        self.q = np.array(q0, dtype=float)
        self.setpoint = self.q.copy()

    def set_joint_setpoint(self, q, qd) -> None:
        self.setpoint = np.array(q, dtype=float)

    def step(self) -> None:
        self.q = self.setpoint.copy()

    def arm_state(self):
        from demuse_ros.twin.interface import ArmPlantState

        return ArmPlantState(0.0, self.q.copy(), np.zeros(6), np.zeros(6), np.zeros(6))


def test_twin_teach_mode_is_compliant_and_refuses_motion() -> None:
    from demuse_ros.twin.ur_controller import URController

    plant = _HandPlant([0.0, -1.57, 1.57, -1.57, -1.57, 0.0])
    ctrl = URController(plant)

    def cycle(n: int = 1) -> None:
        for _ in range(n):
            ctrl.tick()
            plant.step()

    def send(cmd: int, doubles=()) -> None:
        values = {"input_int_register_0": cmd}
        values.update({f"input_double_register_{i}": float(v) for i, v in enumerate(doubles)})
        ctrl.write_inputs(values)
        cycle(2)

    cycle()
    assert ctrl.start_script(0)
    q0 = plant.q.copy()
    plant.q = q0 + 0.05  # a push while holding: the servo pulls back
    cycle()
    assert np.allclose(plant.q, q0)
    send(18)  # teachMode()
    send(0)
    plant.q = q0 + 0.05  # the same push in teach mode: the arm stays where it was pushed
    cycle(3)
    assert np.allclose(plant.q, q0 + 0.05)
    pose0 = ctrl.kin.fk(plant.q)
    assert ctrl.guide_tcp([0.0, 0.05, 0.0, 0.0, 0.0, 0.0], 0.5)  # the hand moves the tool +y
    cycle(100)
    moved = ctrl.kin.fk(plant.q)[:3] - pose0[:3]
    assert moved[1] == pytest.approx(0.025, abs=0.004) and abs(moved[0]) < 1e-3
    held = plant.q.copy()
    send(24, [*ctrl.kin.fk(plant.q)[:3] + [0.05, 0, 0], *pose0[3:], 0, 0, 0.008, 0.1, 300])
    cycle(20)
    assert np.allclose(plant.q, held)  # servoL ignored in teach mode
    send(0)
    send(19)  # endTeachMode(): holds again, follows no hand
    send(0)
    assert not ctrl.guide_tcp([0.0, 0.05, 0.0, 0.0, 0.0, 0.0], 0.5)
    plant.q = held + 0.05
    cycle()
    assert np.allclose(plant.q, held)


# ---------------------------------------------------------------------- CLI
def test_teleop_command_is_registered() -> None:
    from demuse_ros.cli import build_parser

    args = build_parser().parse_args(["teleop", "--sim", "--device", "freedrive", "--seconds", "2"])
    assert args.device == "freedrive" and args.seconds == 2.0 and args.sim
    with pytest.raises(SystemExit):
        build_parser().parse_args(["teleop", "--device", "joystick"])
