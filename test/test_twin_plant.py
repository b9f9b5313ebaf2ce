"""The twin's MuJoCo plant: kinematics, servos, gripper, fingertip sensors, task, camera."""

from __future__ import annotations

import math
import threading
import time

import mujoco
import numpy as np
import pytest

from demuse_ros.config import ConfigError
from demuse_ros.kinematics import MODELS, URKinematics, pose_to_matrix
from demuse_ros.twin.camera import CameraRenderer
from demuse_ros.twin.interface import Plant
from demuse_ros.twin.plant import HOME_ROTVEC, MujocoPlant, PlantConfig
from demuse_ros.twin.scene import ARM_BODIES, TCP_TO_PAD_BOTTOM_M
from demuse_ros.twin.task import TaskConfig

DT = 0.002  # setpoint period of the scripted motions (500 Hz, e-Series rate)
QUIET = {"ft_noise_std": (0.0,) * 6, "ft_bias_left": (0.0,) * 6, "ft_bias_right": (0.0,) * 6}
# hardware.md §4.1: link masses from UR's ROS description.
MASSES = {
    "ur10": (7.1, 12.7, 4.27, 2.0, 2.0, 0.365),
    "ur10e": (7.369, 13.051, 3.989, 2.1, 1.98, 0.615),
}


def _min_jerk(s: float) -> float:
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def _joint_move(
    plant: MujocoPlant, q0: np.ndarray, q1: np.ndarray, duration_s: float
) -> np.ndarray:
    n, prev = round(duration_s / DT), q0
    for i in range(1, n + 1):
        q = q0 + (q1 - q0) * _min_jerk(i / n)
        plant.set_joint_setpoint(q, (q - prev) / DT)
        plant.step(DT)
        prev = q
    return prev


def _tcp_move(plant, q, start, goal, duration_s, rotvec=HOME_ROTVEC, on_step=None) -> np.ndarray:
    """Straight TCP line with a min-jerk profile, joint setpoints from IK at 500 Hz."""
    n, prev = round(duration_s / DT), q
    for i in range(1, n + 1):
        pos = start + (goal - start) * _min_jerk(i / n)
        q = plant.kinematics.ik(np.concatenate([pos, rotvec]), prev)
        plant.set_joint_setpoint(q, (q - prev) / DT)
        plant.step(DT)
        prev = q
        if on_step is not None:
            on_step()
    return prev


def _hold(plant, q, duration_s, on_step=None) -> None:
    for _ in range(round(duration_s / DT)):
        plant.set_joint_setpoint(q, np.zeros(6))
        plant.step(DT)
        if on_step is not None:
            on_step()


def _press(plant: MujocoPlant, depth_m: float, hold_s: float = 1.0, on_step=None) -> None:
    """Close the fingers, go above the button, press ``depth_m`` past first contact, lift."""
    plant.set_gripper_command(0.0, 20.0, True)
    top = plant.task.plunger_top_pose()[:3]
    z_touch = top[2] + TCP_TO_PAD_BOTTOM_M  # TCP height at which the pads touch the cap
    above = np.array([top[0], top[1], z_touch + 0.03])
    down = np.array([top[0], top[1], z_touch - depth_m])
    q = plant.home_q.copy()
    q = _tcp_move(plant, q, plant.kinematics.fk(q)[:3], above, 1.2)
    assert plant.gripper_state().width_m < 1e-3
    q = _tcp_move(plant, q, above, down, 0.8, on_step=on_step)
    _hold(plant, q, hold_s, on_step=on_step)
    q = _tcp_move(plant, q, down, above, 0.4)
    _hold(plant, q, 0.2)


def test_plant_satisfies_protocol():
    plant: Plant = MujocoPlant()  # a type checker verifies the signatures
    assert isinstance(plant.physics_rate_hz, float)
    members = [name for name in vars(Plant) if not name.startswith("_")]
    assert "step" in members and all(callable(getattr(plant, n)) for n in members)


@pytest.mark.parametrize("arm", ["ur10", "ur10e"])
def test_flange_and_tcp_sites_match_dh_kinematics(arm):
    tcp = (0.01, -0.02, 0.21, 0.1, -0.2, 0.3)
    plant = MujocoPlant(PlantConfig(arm_model=arm, tcp_offset=tcp))
    m, d = plant.model, mujoco.MjData(plant.model)
    np.testing.assert_array_equal(plant.tcp_offset, tcp)
    kin = URKinematics(MODELS[arm], plant.tcp_offset)
    rng = np.random.default_rng(7)
    for _ in range(25):
        q = rng.uniform(-math.pi, math.pi, 6)
        d.qpos[:6] = q
        mujoco.mj_kinematics(m, d)
        for site, T in (("flange", pose_to_matrix(kin.flange_pose(q))), ("tcp", kin.fk_matrix(q))):
            s = m.site(site).id
            np.testing.assert_allclose(d.site_xpos[s], T[:3, 3], atol=1e-9)
            np.testing.assert_allclose(d.site_xmat[s].reshape(3, 3), T[:3, :3], atol=1e-9)
    # Link masses, joint ranges from the model tables.
    np.testing.assert_allclose([m.body(b).mass[0] for b in ARM_BODIES], MASSES[arm])
    np.testing.assert_allclose(m.jnt_range[:6, 1], MODELS[arm].joint_position_limits_rad)


@pytest.mark.parametrize("rate", [500.0, 1000.0])
def test_smooth_trajectory_tracked_under_1mm(rate):
    plant = MujocoPlant(PlantConfig(physics_rate_hz=rate))
    home, kin = plant.home_q.copy(), plant.kinematics
    mask = np.array([1.0, 0, 0, 1.0, 0, 0])  # shoulder pan and wrist 1, 0.5 rad at 0.5 Hz
    w = 2 * math.pi * 0.5
    errors = []
    for i in range(round(2.0 / DT)):
        t = i * DT
        plant.set_joint_setpoint(
            home + 0.5 * mask * math.sin(w * t), 0.5 * mask * w * math.cos(w * t)
        )
        plant.step(DT)
        state = plant.arm_state()
        assert not state.in_collision
        q_want = home + 0.5 * mask * math.sin(w * (t + DT))
        if t > 0.2:  # after the start-up transient (the sine starts at full speed)
            errors.append(np.linalg.norm(kin.fk(state.q)[:3] - kin.fk(q_want)[:3]))
    assert max(errors) < 1e-3, f"max TCP tracking error {max(errors) * 1e3:.3f} mm"
    assert max(errors) > 1e-6  # a real servo, not a teleport


@pytest.mark.parametrize("arm", ["ur10", "ur10e"])
def test_gravity_hold_drift(arm):
    plant = MujocoPlant(PlantConfig(arm_model=arm))
    start = plant.kinematics.fk(plant.arm_state().q)[:3]
    _hold(plant, plant.home_q, 2.0)
    drift = np.linalg.norm(plant.kinematics.fk(plant.arm_state().q)[:3] - start)
    assert drift < 1e-4
    torques = plant.arm_state().joint_torques_nm
    assert abs(torques[1]) > 10.0  # the shoulder really carries the arm


def test_joint_velocity_and_position_limits_enforced():
    plant = MujocoPlant()
    goal = plant.home_q + np.array([1.0, 0, 0, 0, 0, 0])  # a 1 rad step on the base
    goal[5] = 7.0  # beyond wrist 3's +2π
    plant.set_joint_setpoint(goal, np.zeros(6))
    peak = np.zeros(6)
    for _ in range(round(2.4 / DT)):
        plant.step(DT)
        peak = np.maximum(peak, np.abs(plant.arm_state().qd))
    limits = np.asarray(MODELS["ur10"].joint_velocity_limits_rad_s)
    assert np.all(peak <= limits * 1.02), peak / limits
    assert peak[0] > 0.95 * limits[0] and peak[5] > 0.95 * limits[5]  # moved at the limit
    q = plant.arm_state().q
    assert q[0] == pytest.approx(goal[0], abs=1e-4)
    assert q[5] == pytest.approx(2 * math.pi, abs=1e-3)


def test_home_pose_and_randomized_placement():
    plant = MujocoPlant()
    tcp = plant.kinematics.fk(plant.arm_state().q)
    np.testing.assert_allclose(tcp[:3], [*TaskConfig().nominal_xy_m, 0.25], atol=1e-6)
    z_tool = pose_to_matrix(tcp)[:3, 2]
    np.testing.assert_allclose(z_tool, [0, 0, -1], atol=1e-6)
    nominal, half = (
        np.array(TaskConfig().nominal_xy_m),
        np.array(TaskConfig().randomize_half_range_m),
    )
    placements = []
    for seed in range(6):
        plant.reset(seed)
        xy = plant.task.plunger_top_pose()[:2]
        assert np.all(np.abs(xy - nominal) <= half + 1e-12)
        placements.append(xy)
    assert len({tuple(np.round(p, 6)) for p in placements}) == 6


def test_gripper_open_close_reaches_width():
    plant = MujocoPlant()
    plant.set_gripper_command(0.030, 20.0, True)
    plant.step(0.3)
    assert plant.gripper_state().moving  # ~0.1 m/s: 70 mm take ~0.7 s
    plant.step(0.7)
    state = plant.gripper_state()
    assert abs(state.width_m - 0.030) < 1e-3 and not state.moving and not state.grip_detected
    plant.set_gripper_command(0.085, 20.0, True)
    plant.step(1.0)
    state = plant.gripper_state()
    assert abs(state.width_m - 0.085) < 1e-3 and not state.moving and not state.grip_detected
    plant.set_gripper_command(0.0, 20.0, True)
    plant.step(0.2)
    plant.set_gripper_command(0.0, 20.0, False)  # stop: fingers stay where they are
    stopped = plant.gripper_state().width_m
    plant.step(0.5)
    assert abs(plant.gripper_state().width_m - stopped) < 5e-4 and 0.04 < stopped < 0.08


@pytest.mark.parametrize("force", [8.0, 20.0, 60.0])
def test_gripper_force_limited_on_box(force):
    x, y = TaskConfig().nominal_xy_m  # the home TCP sits at (x, y, 0.25); fingers along world x
    box = (
        f'<body pos="{x} {y} 0.25"><geom type="box" size="0.02 0.015 0.015" '
        'contype="1" conaffinity="7"/></body>'
    )
    plant = MujocoPlant(PlantConfig(**QUIET), extra_worldbody_xml=box)
    plant.set_gripper_command(0.0, force, True)
    plant.step(1.2)
    state = plant.gripper_state()
    assert state.grip_detected and not state.moving
    assert abs(state.width_m - 0.040) < 1e-3
    expected = min(force, 40.0)
    # Each fingertip is pushed outward, i.e. along -z of its sensor frame (inward normal).
    np.testing.assert_allclose(state.finger_wrenches[:, 2], -expected, rtol=0.03)
    np.testing.assert_allclose(state.finger_wrenches[:, :2], 0.0, atol=0.05 * expected)
    assert np.linalg.norm(plant.arm_state().tcp_wrench[:3]) < 0.1  # squeeze is internal


def test_press_succeeds_and_fingertip_sensors_see_the_plunger_force():
    plant = MujocoPlant(PlantConfig(**QUIET))
    samples = []

    def record():
        g, a = plant.gripper_state(), plant.arm_state()
        R = plant.sensor_rotations()
        total = R[0] @ g.finger_wrenches[0, :3] + R[1] @ g.finger_wrenches[1, :3]
        samples.append((plant.task.force_n(), total, a.tcp_wrench[:3].copy()))

    _press(plant, depth_m=0.0063, on_step=record)  # (10 N - 1 N preload) / 1500 N/m ≈ 6 mm
    status = plant.task_status()
    assert status.done and status.success and status.reason == "success", status
    m = status.metrics
    assert m["hold_s"] >= 0.5 and 8.0 < m["peak_force_n"] < 12.0 and m["force_error_n"] < 2.0
    assert 0 < m["time_to_success_s"] <= plant.time_s
    loaded = [(f, tot, tcp) for f, tot, tcp in samples if f > 5.0]
    assert len(loaded) > 200
    for f, total, tcp in loaded:
        # The cap pushes the fingertips up (+z in the base frame); the sideways part is
        # friction from the arm's slightly anisotropic stiffness, not part of the truth.
        assert abs(total[2] - f) < 0.1 * f and np.linalg.norm(total[:2]) < 0.3 * f
        np.testing.assert_allclose(tcp, total, atol=1e-9)


def test_hard_press_fails_by_overshoot():
    plant = MujocoPlant()
    _press(plant, depth_m=0.012)  # ≈ 19 N
    status = plant.task_status()
    assert status.done and not status.success and status.reason == "overshoot"
    assert status.metrics["peak_force_n"] > 15.0


def test_timeout():
    plant = MujocoPlant(task_config=TaskConfig(timeout_s=0.5))
    plant.step(0.4)
    assert not plant.task_status().done
    plant.step(0.2)
    status = plant.task_status()
    assert status.done and status.reason == "timeout" and not status.success


def test_arm_collision_with_table_is_reported_and_blocked():
    plant = MujocoPlant()
    kin = plant.kinematics
    flipped = plant.home_q + np.array([0, 0, 0, math.pi, 0, 0])  # wrist 1 turned: tool up
    q_up = kin.ik(np.array([-0.65, -0.15, 0.6, 0, 0, 0]), flipped)
    q = _joint_move(plant, plant.home_q, q_up, 1.5)
    assert not plant.arm_state().in_collision and not plant.task_status().done
    q_low = kin.ik(np.array([-0.65, -0.15, 0.2, 0, 0, 0]), q)  # wrist would end in the table
    seen = False
    n, prev = round(1.0 / DT), q
    for i in range(1, n + 1):
        q = q_up + (q_low - q_up) * _min_jerk(i / n)
        plant.set_joint_setpoint(q, (q - prev) / DT)
        plant.step(DT)
        prev = q
        seen |= plant.arm_state().in_collision
    assert seen
    assert kin.flange_pose(plant.arm_state().q)[2] > 0.1  # stopped on the table, not through it
    status = plant.task_status()
    assert status.done and status.reason == "collision"


def _camera_axes(cam) -> tuple[np.ndarray, ...]:
    """Eye and optical axes (forward, image right, image down) from the camera config."""
    eye, target = np.asarray(cam.pos_m), np.asarray(cam.look_at_m)
    fwd = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(fwd, (0, 0, 1.0))
    right /= np.linalg.norm(right)
    return eye, fwd, right, np.cross(fwd, right)


def test_render_shapes_and_depth():
    plant = MujocoPlant()
    cam = plant.config.camera
    rgb, depth = plant.render()
    assert rgb.shape == (cam.height, cam.width, 3) and rgb.dtype == np.uint8
    assert depth.shape == (cam.height, cam.width) and depth.dtype == np.float32
    assert rgb.std() > 10  # not a blank frame
    eye, fwd, right, down = _camera_axes(cam)
    for u, v in ((320, 460), (100, 420), (560, 430)):  # table pixels: ray ∩ plane z = 0
        ray = fwd + (u + 0.5 - cam.cx) / cam.fx * right + (v + 0.5 - cam.cy) / cam.fy * down
        t = -eye[2] / ray[2]  # the ray has unit length along the optical axis: t is z-depth
        hit = eye + t * ray
        assert -1.1 < hit[0] < 0.3 and -0.7 < hit[1] < 0.7, "the pixel must see the table"
        assert abs(depth[v, u] - t) < 0.02, (u, v, depth[v, u], t)
    assert (depth[:20] == 0).mean() > 0.2  # above the table, nothing within range: no return
    # The red button cap is where the intrinsics put it, at the right depth.
    rel = plant.task.plunger_top_pose()[:3] - [0, 0, 0.01] - eye
    z = rel @ fwd
    u, v = int(cam.fx * (rel @ right) / z + cam.cx), int(cam.fy * (rel @ down) / z + cam.cy)
    r, g, b = rgb[v, u].astype(int)
    assert r > 120 and r > 2 * g and r > 2 * b, (u, v, r, g, b)
    assert abs(depth[v, u] - z) < 0.02
    plant.close()


def test_renderer_in_another_thread_matches():
    plant = MujocoPlant()
    plant.step(0.05)
    state = plant.render_state()
    out = {}

    def work():
        with CameraRenderer(plant.model, plant.config.camera) as renderer:
            out["frame"] = renderer.render(state)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    rgb, depth = plant.render()
    np.testing.assert_array_equal(out["frame"][0], rgb)
    np.testing.assert_array_equal(out["frame"][1], depth)
    plant.close()


def _run_script(plant: MujocoPlant) -> list[np.ndarray]:
    plant.set_gripper_command(0.02, 15.0, True)
    trace = []
    for i in range(150):
        q = plant.home_q + 0.2 * math.sin(i * DT * 4) * np.array([1, -1, 1, 0, 1, 0.0])
        plant.set_joint_setpoint(q, np.zeros(6))
        plant.step(DT)
        a, g = plant.arm_state(), plant.gripper_state()
        trace.append(
            np.concatenate([a.q, a.qd, a.joint_torques_nm, [g.width_m], g.finger_wrenches.ravel()])
        )
    trace.append(plant.task.plunger_top_pose())
    return trace


def test_determinism():
    a, b = MujocoPlant(PlantConfig(seed=3)), MujocoPlant(PlantConfig(seed=3))
    trace_a, trace_b = _run_script(a), _run_script(b)
    for x, y in zip(trace_a, trace_b, strict=True):
        np.testing.assert_array_equal(x, y)
    a.reset(3)
    for x, y in zip(_run_script(a), trace_a, strict=True):
        np.testing.assert_array_equal(x, y)
    c = MujocoPlant(PlantConfig(seed=4))
    assert not np.array_equal(_run_script(c)[-1], trace_a[-1])  # other placement
    assert not np.array_equal(_run_script(c)[0][-12:], trace_a[0][-12:])  # other noise


def test_step_takes_whole_substeps():
    plant = MujocoPlant()  # 1 kHz
    plant.step(0.0015)
    assert plant.arm_state().t_s == pytest.approx(0.002)
    plant.step(0.0015)
    assert plant.arm_state().t_s == pytest.approx(0.003)
    plant.step(1 / 125)
    assert plant.arm_state().t_s == pytest.approx(0.011)
    for bad in (0.0, -0.001, math.nan):
        with pytest.raises(ValueError):
            plant.step(bad)


def test_config_validation():
    with pytest.raises(ConfigError):
        PlantConfig(arm_model="ur5")
    with pytest.raises(ConfigError):
        PlantConfig(physics_rate_hz=250.0)
    with pytest.raises(ValueError, match="bandwidth"):
        PlantConfig(physics_rate_hz=500.0, servo_bandwidth_rad_s=200.0)
    with pytest.raises(ValueError, match="force"):
        TaskConfig(max_force_n=11.0)


def test_timing_report(capsys):
    """Prints (never asserts) the cost of a plant substep and of a camera frame."""
    lines = []
    for rate in (1000.0, 500.0):
        with MujocoPlant(PlantConfig(physics_rate_hz=rate)) as plant:
            plant.step(0.05)  # warm up
            t0 = time.perf_counter()
            plant.step(1.0)
            per_step = (time.perf_counter() - t0) / rate
            t0 = time.perf_counter()
            mujoco.mj_step(plant.model, plant.data, nstep=1000)
            bare = (time.perf_counter() - t0) / 1000
            lines.append(
                f"{rate:.0f} Hz: {per_step * 1e6:.1f} µs/substep (mj_step {bare * 1e6:.1f})"
            )
    with MujocoPlant() as plant:
        plant.render()
        t0 = time.perf_counter()
        for _ in range(10):
            plant.render()
        lines.append(f"render RGB+depth 640×480: {(time.perf_counter() - t0) / 10 * 1e3:.1f} ms")
    with capsys.disabled():
        print("\n[twin plant timing] " + "; ".join(lines))
