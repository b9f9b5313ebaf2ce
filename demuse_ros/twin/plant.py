"""MuJoCo plant of the twin: UR10/UR10e joint servos, RG2-FT fingers and sensors, task, camera.

Implements :class:`demuse_ros.twin.interface.Plant`. World frame = robot base
frame (see :mod:`demuse_ros.twin.scene`).

Joint servos: the reference is ``q + qd·τ`` with τ the time since the last
:meth:`MujocoPlant.set_joint_setpoint` (capped at ``setpoint_extrapolation_s``;
a setpoint with a velocity is a moving target, which makes the PD consistent),
clamped to the joint range and rate-limited to the joint velocity limits. The
torque is a mass-matrix-weighted PD plus bias (gravity + Coriolis)
compensation, ``τ = M(q)·(ω²·e + 2ζω·ė) + c(q, q̇)``, clipped to the joint
efforts: every joint gets bandwidth ω in every configuration, like a stiff
model-based industrial servo.

Readouts. Contacts, wrenches and the task are evaluated on the state each
substep starts from (``mj_step1`` / ``mj_step2``), one substep behind ``q``.
``tcp_wrench`` is the wrench the environment exerts on the hand (pressing down
reads +Fz), moment about the TCP; hand↔arm self-contacts are not external.
``in_collision``: an arm link (base..wrist 3) touched anything during the last
:meth:`MujocoPlant.step`. Fingertip sensors: contact wrench on each fingertip
in its sensor frame (z = inward pad normal, x = tool z; a grip reads Fz < 0,
see :mod:`demuse_ros.twin.scene`) plus bias and Gaussian noise, drawn once per
substep count from the reset's seeded generator.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import mujoco
import numpy as np

from demuse_ros.config import param, validate_fields
from demuse_ros.kinematics import MODELS, URKinematics
from demuse_ros.twin import scene
from demuse_ros.twin.camera import CameraConfig, CameraRenderer, RenderState
from demuse_ros.twin.interface import ArmPlantState, GripperPlantState, TaskStatus
from demuse_ros.twin.task import DispenseTask, TaskConfig

# Home: tool z pointing down, tool x along world +y (the orientation of the
# classic UR pose q = [0, -π/2, π/2, -π/2, -π/2, 0], which also seeds the IK).
HOME_ROTVEC = (math.pi / math.sqrt(2), math.pi / math.sqrt(2), 0.0)
HOME_IK_SEED = (0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0)

_SPEED_TAU_S = 0.01  # time constant of the joint speed limiter

# RG2-FT finger drive, per finger: a reference that runs to the goal at half the opening
# speed, tracked by F = clip(KP·(ref - s) - KD·v, ±force): a blocked finger's error grows
# until it pushes with the commanded force. Mass incl. reflected inertia ≈ 0.15 kg.
_FINGER_KP = 4000.0  # N/m
_FINGER_KD = 40.0  # N·s/m
_STALL_SPEED_M_S = 0.002  # fingers slower than this count as stopped
_STALL_TIME_S = 0.05  # ... for this long before a grip is detected
_WIDTH_TOL_M = 0.0005  # opening this close to the target counts as reached
_FORCE_RANGE_N = (3.0, 40.0)  # RG2 grip force range; commands are clipped into it


@dataclass(frozen=True)
class PlantConfig:
    """MuJoCo plant: arm model, physics rate, servos, gripper, fingertip sensor errors, camera."""

    arm_model: str = param("ur10", doc="Arm model (DH table).", choices=("ur10", "ur10e"))
    physics_rate_hz: float = param(
        1000.0, doc="Physics substep rate.", unit="Hz", range=(500.0, 20000.0)
    )
    tcp_offset: tuple[float, ...] = param(
        (0.0, 0.0, scene.FINGERTIP_CENTRE_Z_M, 0.0, 0.0, 0.0),
        doc="TCP pose in the flange frame [x, y, z, rx, ry, rz] (default: fingertip centre).",
        unit="m, rad",
    )
    joint_armature: tuple[float, ...] = param(
        (0.5, 0.5, 0.25, 0.1, 0.1, 0.1),
        doc="Reflected rotor inertia per joint.",
        unit="kg·m²",
        range=(0.0, 100.0),
    )
    servo_bandwidth_rad_s: float = param(
        120.0, doc="Joint servo natural frequency ω.", unit="rad/s", range=(1.0, 2000.0)
    )
    servo_damping_ratio: float = param(1.0, doc="Joint servo damping ratio ζ.", range=(0.1, 5.0))
    setpoint_extrapolation_s: float = param(
        0.01,
        doc="How long a setpoint's velocity keeps moving the reference (0: pure hold).",
        unit="s",
        range=(0.0, 1.0),
    )
    gripper_speed_m_s: float = param(
        0.1, doc="Rate of change of the opening while moving.", unit="m/s", range=(0.001, 1.0)
    )
    initial_gripper_width_m: float = param(
        0.1, doc="Opening after reset.", unit="m", range=(0.0, 0.1)
    )
    ft_noise_std: tuple[float, ...] = param(
        (0.05, 0.05, 0.05, 0.002, 0.002, 0.002),
        doc="Fingertip sensor white noise std per axis (Fx..Tz).",
        unit="N, N·m",
        range=(0.0, 100.0),
    )
    ft_bias_left: tuple[float, ...] = param(
        (0.3, -0.2, 0.4, 0.01, -0.005, 0.003),
        doc="Constant offset of the left fingertip sensor (Fx..Tz).",
        unit="N, N·m",
    )
    ft_bias_right: tuple[float, ...] = param(
        (-0.25, 0.15, 0.35, -0.008, 0.006, -0.002),
        doc="Constant offset of the right fingertip sensor (Fx..Tz).",
        unit="N, N·m",
    )
    home_tcp_height_m: float = param(
        0.25, doc="TCP height above the table in the home pose.", unit="m", range=(0.12, 1.0)
    )
    seed: int = param(0, doc="Seed of the first reset and of later seedless resets.")
    camera: CameraConfig = field(default_factory=CameraConfig)

    def __post_init__(self) -> None:
        validate_fields(self)
        for name in ("tcp_offset", "joint_armature", "ft_noise_std", "ft_bias_left"):
            if len(getattr(self, name)) != 6 or len(self.ft_bias_right) != 6:
                raise ValueError(f"{name} and ft_bias_right need 6 values (x, y, z, rx|Tx, ..)")
        if self.servo_bandwidth_rad_s / self.physics_rate_hz > 0.25:
            raise ValueError(
                f"servo_bandwidth_rad_s {self.servo_bandwidth_rad_s} is too high for "
                f"physics_rate_hz {self.physics_rate_hz} (ω·dt must stay ≤ 0.25 for a stable "
                "explicit servo); lower the bandwidth or raise the rate"
            )


class MujocoPlant:
    """The twin's physics (see module docstring). Not thread-safe: one owner steps it.

    Args:
        config: plant config.
        task_config: dispense task config.
        extra_worldbody_xml: MJCF added to the worldbody (test objects, fixtures).
    """

    def __init__(
        self,
        config: PlantConfig | None = None,
        task_config: TaskConfig | None = None,
        *,
        extra_worldbody_xml: str = "",
    ) -> None:
        self.config = cfg = config or PlantConfig()
        self.task = DispenseTask(task_config)
        self.arm = MODELS[cfg.arm_model]
        self.kinematics = URKinematics(self.arm, np.asarray(cfg.tcp_offset, dtype=float))
        xml = scene.build_scene_xml(cfg, self.task.mjcf(), extra_worldbody_xml)
        self.model = m = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(m)
        jid = [m.joint(j).id for j in scene.ARM_JOINTS]
        fid = [m.joint(j).id for j in scene.FINGER_JOINTS]
        # The arm's and the fingers' qpos/dof addresses are 0..5 and 6..7 (hinges and
        # slides: one each); slices keep the per-substep code cheap.
        if not (
            list(m.jnt_qposadr[jid + fid]) == list(range(8))
            and list(m.jnt_dofadr[jid + fid]) == list(range(8))
        ):
            raise RuntimeError("unexpected joint layout: arm and fingers must come first")
        self._arm, self._fin = slice(0, 6), slice(6, 8)
        self._qpos, self._qvel = self.data.qpos, self.data.qvel  # views, valid for data's life
        self._ctrl, self._qfrc_bias = self.data.ctrl, self.data.qfrc_bias
        self._ts = float(m.opt.timestep)
        self._zero6 = np.zeros(6)
        self._arm_act = np.array([m.actuator(j).id for j in scene.ARM_JOINTS])
        self._fin_act = np.array([m.actuator(j).id for j in scene.FINGER_JOINTS])
        self._q_lo, self._q_hi = m.jnt_range[jid, 0].copy(), m.jnt_range[jid, 1].copy()
        self._v_max = np.asarray(self.arm.joint_velocity_limits_rad_s)
        self._dq_max = self._v_max * self._ts
        self._effort = np.asarray(scene.EFFORT_LIMITS_NM[cfg.arm_model])
        self._tcp_site = m.site("tcp").id
        self._sensor_sites = [m.site(s).id for s in scene.SENSOR_SITES]
        self._geom_class = scene.geom_classes(m)
        self.task.bind(m, self.data)
        self.home_q = self.kinematics.ik(self.home_tcp_pose(), np.asarray(HOME_IK_SEED))
        self._bias = np.stack([cfg.ft_bias_left, cfg.ft_bias_right]).astype(float)
        self._noise_std = np.asarray(cfg.ft_noise_std, dtype=float)
        self._seeds = np.random.default_rng(cfg.seed)
        self._renderer: CameraRenderer | None = None
        self._renderer_thread: int | None = None
        self._buf_v = np.zeros(m.nv)
        self._buf_mv = np.zeros(m.nv)
        self.reset(cfg.seed)

    # -- Plant protocol ---------------------------------------------------------------
    @property
    def physics_rate_hz(self) -> float:
        return self.config.physics_rate_hz

    @property
    def timestep_s(self) -> float:
        return self._ts

    @property
    def time_s(self) -> float:
        return self._steps * self._ts

    @property
    def tcp_offset(self) -> np.ndarray:
        """TCP pose in the flange frame, ``[x, y, z, rx, ry, rz]`` (what ``set_tcp`` takes)."""
        return np.asarray(self.config.tcp_offset, dtype=float).copy()

    def home_tcp_pose(self) -> np.ndarray:
        """TCP pose of the home configuration: above the nominal plunger, pointing down."""
        x, y = self.task.config.nominal_xy_m
        return np.array([x, y, self.config.home_tcp_height_m, *HOME_ROTVEC])

    def reset(self, seed: int | None = None) -> None:
        """Home pose, new task placement and noise stream (``seed`` None: next from config.seed)."""
        if seed is None:
            seed = int(self._seeds.integers(2**63))
        task_ss, noise_ss = np.random.SeedSequence(seed).spawn(2)
        self._noise_rng = np.random.default_rng(noise_ss)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._arm] = self.home_q
        d.qpos[self._fin] = self.config.initial_gripper_width_m / 2
        self.task.reset(np.random.default_rng(task_ss))
        mujoco.mj_forward(m, d)
        self._steps = 0
        self._t_target = 0.0
        self._q_cmd, self._qd_cmd, self._t_cmd = self.home_q.copy(), np.zeros(6), 0.0
        self._q_ref = self.home_q.copy()
        self._tau = d.qfrc_bias[self._arm].copy()
        self._in_collision = self._collided = False
        # Gripper: holding its initial opening, idle.
        self._grip_active = False
        self._finger_hold = d.qpos[self._fin].copy()
        self._target_width = self.config.initial_gripper_width_m
        self._finger_ref = self._finger_hold.copy()
        self._force_limit = 20.0
        self._moving = self._grip_detected = False
        self._stall_t = 0.0
        self._ft_cache: tuple[int, np.ndarray] | None = None

    def set_joint_setpoint(self, q: np.ndarray, qd: np.ndarray) -> None:
        q, qd = np.asarray(q, dtype=float), np.asarray(qd, dtype=float)
        if (
            q.shape != (6,)
            or qd.shape != (6,)
            or not (np.isfinite(q).all() and np.isfinite(qd).all())
        ):
            raise ValueError(f"setpoint needs finite q and qd of shape (6,), got {q!r}, {qd!r}")
        self._q_cmd = np.clip(q, self._q_lo, self._q_hi)
        self._qd_cmd = np.clip(qd, -self._v_max, self._v_max)
        self._t_cmd = self.time_s

    def set_gripper_command(self, target_width_m: float, target_force_n: float, grip: bool) -> None:
        if not grip:  # stop where the fingers are
            self._grip_active = self._moving = False
            self._finger_hold = self.data.qpos[self._fin].copy()
            self._finger_ref = self._finger_hold.copy()
            return
        self._grip_active = self._moving = True
        self._grip_detected = False
        self._stall_t = 0.0
        self._finger_ref = self.data.qpos[self._fin].copy()  # start from where the fingers are
        self._target_width = float(np.clip(target_width_m, 0.0, 2 * scene.FINGER_MAX_M))
        self._force_limit = float(np.clip(target_force_n, *_FORCE_RANGE_N))

    def step(self, dt_s: float) -> None:
        """Advance by ``dt_s``, in whole substeps (the remainder carries over to the next call)."""
        if not (dt_s > 0 and math.isfinite(dt_s)):
            raise ValueError(f"step(dt_s={dt_s!r}): dt_s must be a positive, finite time")
        self._t_target += dt_s
        self._collided = self._in_collision  # in_collision: at any substep of this step
        for _ in range(round(self._t_target / self._ts) - self._steps):
            self._substep()
            self._collided |= self._in_collision

    def arm_state(self) -> ArmPlantState:
        d = self.data
        return ArmPlantState(
            t_s=self.time_s,
            q=d.qpos[self._arm].copy(),
            qd=d.qvel[self._arm].copy(),
            joint_torques_nm=self._tau.copy(),
            tcp_wrench=self._tcp_wrench(),
            in_collision=self._collided,
        )

    def gripper_state(self) -> GripperPlantState:
        if self._ft_cache is None or self._ft_cache[0] != self._steps:
            noise = self._noise_rng.normal(0.0, 1.0, (2, 6)) * self._noise_std
            self._ft_cache = (self._steps, self.finger_wrenches_true() + self._bias + noise)
        return GripperPlantState(
            width_m=self.width_m(),
            moving=self._moving,
            grip_detected=self._grip_detected,
            finger_wrenches=self._ft_cache[1].copy(),
        )

    def task_status(self) -> TaskStatus:
        return self.task.status()

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Camera frame now, rendered in the calling thread (always the same thread)."""
        if self._renderer is None:
            self._renderer = CameraRenderer(self.model, self.config.camera)
            self._renderer_thread = threading.get_ident()
        elif self._renderer_thread != threading.get_ident():
            raise RuntimeError(
                "MujocoPlant.render() called from a second thread; a GL context is bound to "
                "its thread: build a CameraRenderer there and feed it render_state()"
            )
        return self._renderer.render(self.render_state())

    # -- extras ---------------------------------------------------------------------------
    def render_state(self) -> RenderState:
        """Copy of what :class:`CameraRenderer` needs (safe to pass to another thread)."""
        return RenderState(self.time_s, self.data.qpos.copy(), self.model.body_pos.copy())

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> MujocoPlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def width_m(self) -> float:
        """Finger opening (m), the sum of both finger travels, clipped to 0..0.100."""
        return float(np.clip(self.data.qpos[self._fin].sum(), 0.0, 2 * scene.FINGER_MAX_M))

    def sensor_rotations(self) -> np.ndarray:
        """(2, 3, 3) base-frame rotations of the left/right fingertip sensor frames."""
        return np.stack([self.data.site_xmat[s].reshape(3, 3) for s in self._sensor_sites])

    def finger_wrenches_true(self) -> np.ndarray:
        """(2, 6) contact wrench on each fingertip in its sensor frame, without bias/noise."""
        out = np.zeros((2, 6))
        for k, site in enumerate(self._sensor_sites):
            on = self._geom_class == (scene.TIP_LEFT, scene.TIP_RIGHT)[k]
            f, t = scene.contact_wrench(self.model, self.data, on, self.data.site_xpos[site])
            R = self.data.site_xmat[site].reshape(3, 3)
            out[k, :3], out[k, 3:] = R.T @ f, R.T @ t
        return out

    # -- internals --------------------------------------------------------------------------
    def _substep(self) -> None:
        m, d, cfg = self.model, self.data, self.config
        mujoco.mj_step1(m, d)  # kinematics, contacts, M, bias at the current state
        ts, a, f = self._ts, self._arm, self._fin
        qpos, qvel = self._qpos, self._qvel
        # Arm: moving reference, clamped and rate-limited, then M-weighted PD + bias.
        age = self._steps * ts - self._t_cmd
        horizon = cfg.setpoint_extrapolation_s
        target = self._q_cmd + self._qd_cmd * min(age, horizon)
        target = np.minimum(np.maximum(target, self._q_lo), self._q_hi)
        qd_ref = self._qd_cmd if age < horizon else self._zero6
        step = target - self._q_ref
        limited = np.minimum(np.maximum(step, -self._dq_max), self._dq_max)
        if (limited != step).any():
            qd_ref = np.where(limited != step, limited / ts, qd_ref)
        self._q_ref = self._q_ref + limited
        w, z = cfg.servo_bandwidth_rad_s, cfg.servo_damping_ratio
        qd = qvel[a]
        acc = w * w * (self._q_ref - qpos[a]) + 2 * z * w * (qd_ref - qd)
        # Speed limiter: no acceleration beyond the joint velocity limits (a step in the
        # reference would otherwise overshoot them by ~15 %).
        acc = np.minimum(
            np.maximum(acc, (-self._v_max - qd) / _SPEED_TAU_S), (self._v_max - qd) / _SPEED_TAU_S
        )
        self._buf_v[a] = acc
        mujoco.mj_mulM(m, d, self._buf_mv, self._buf_v)
        tau = self._buf_mv[a] + self._qfrc_bias[a]
        self._tau = np.minimum(np.maximum(tau, -self._effort), self._effort)
        ctrl = self._ctrl
        ctrl[self._arm_act] = self._tau
        # Fingers: force-limited PD on a reference running to the goal at the finger speed.
        goal = self._target_width / 2 if self._grip_active else self._finger_hold
        dmax = cfg.gripper_speed_m_s / 2 * ts
        self._finger_ref = self._finger_ref + np.minimum(
            np.maximum(goal - self._finger_ref, -dmax), dmax
        )
        force = _FINGER_KP * (self._finger_ref - qpos[f]) - _FINGER_KD * qvel[f]
        lim = self._force_limit
        ctrl[self._fin_act] = np.minimum(np.maximum(force, -lim), lim)
        mujoco.mj_step2(m, d)  # constraint forces of this state, then integrate
        self._steps += 1
        if self._grip_active:
            self._update_gripper(ts)
        ncon = d.ncon
        self._in_collision = bool(ncon) and bool(
            (self._geom_class[d.contact.geom[:ncon]] == scene.ARM).any()
        )
        self.task.update(self._steps * ts, self._in_collision, ncon)

    def _update_gripper(self, ts: float) -> None:
        if abs(self.width_m() - self._target_width) <= _WIDTH_TOL_M:
            self._moving = self._grip_detected = False
        elif self._moving:
            if np.abs(self._qvel[self._fin]).max() < _STALL_SPEED_M_S:
                self._stall_t += ts
                if self._stall_t >= _STALL_TIME_S:
                    self._moving, self._grip_detected = False, True
            else:
                self._stall_t = 0.0

    def _tcp_wrench(self) -> np.ndarray:
        """External contact wrench on the hand (gripper, fingers, tips), moment about the TCP."""
        m, d = self.model, self.data
        hand, env = self._geom_class >= scene.HAND, self._geom_class == scene.ENV
        f, t = scene.contact_wrench(m, d, hand, d.site_xpos[self._tcp_site], by=env)
        return np.concatenate([f, t])
