"""MJCF of the twin's workcell, generated in Python (no asset files), and the
contact readouts tied to its layout (geom classes, contact wrenches).

World frame = robot base frame (the UR base bolted to the table top, table top
at z = 0), so every plant quantity "in the base frame" is also in the world
frame.

The arm is built from the standard DH table of :mod:`demuse_ros.kinematics.ur`:
body ``i`` carries a hinge about its local z (joint ``i`` rotates about
``z_{i-1}``) and body ``i+1`` sits at ``Tz(d_i)·Tx(a_i)·Rx(alpha_i)`` in body
``i``. The ``flange`` site therefore coincides with the DH flange frame and the
``tcp`` site with ``URKinematics(model, tcp_offset).fk(q)``. Links are
capsules/cylinders on the DH segments (no lateral shoulder/elbow offsets) with
masses from UR's ROS description and cylinder inertias.

Collision classes (contype/conaffinity bits): environment 1, arm links 2, hand
4 (gripper housing, fingers, fingertips). Hand geoms never touch each other;
adjacent arm links are filtered by MuJoCo's parent filter and base↔shoulder
(the base is welded to the world, which that filter skips) is excluded.

The RG2-FT is reduced to a housing and two fingers on slide joints along the
tool y axis (left finger at +y), each ending in a fingertip body with a pad and
the F/T sensor site at the pad centre.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from demuse_ros.kinematics import MODELS
from demuse_ros.twin.camera import CAMERA_NAME

if TYPE_CHECKING:
    from demuse_ros.twin.plant import PlantConfig

ARM_JOINTS = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)
ARM_BODIES = (
    "shoulder_link",
    "upper_arm_link",
    "forearm_link",
    "wrist_1_link",
    "wrist_2_link",
    "wrist_3_link",
)
FINGER_JOINTS = ("left_finger_joint", "right_finger_joint")
FINGER_BODIES = ("left_finger", "right_finger")
TIP_BODIES = ("left_fingertip", "right_fingertip")
SENSOR_SITES = ("left_ft_sensor", "right_ft_sensor")
HAND_BODIES = ("rg2ft", *FINGER_BODIES, *TIP_BODIES)

# UR ROS description (hardware.md §4.1/§4.2): link masses (kg) and joint efforts (N·m).
LINK_MASSES_KG = {
    "ur10": (7.1, 12.7, 4.27, 2.0, 2.0, 0.365),
    "ur10e": (7.369, 13.051, 3.989, 2.1, 1.98, 0.615),
}
EFFORT_LIMITS_NM = {
    "ur10": (330.0, 330.0, 150.0, 56.0, 56.0, 56.0),
    "ur10e": (330.0, 330.0, 150.0, 54.0, 54.0, 54.0),
}
# Link radii (m) for geometry and inertia: shoulder, upper arm, forearm, wrists.
_LINK_RADII = (0.075, 0.055, 0.045, 0.046, 0.046, 0.045)
_MOTOR_RADII = (0.0, 0.075, 0.06, 0.0, 0.0, 0.0)  # joint housings drawn around the axis

# RG2-FT geometry in the flange frame (z out of the flange), metres.
GRIPPER_MASS_KG = 0.9  # housing + quick changer; each finger+tip adds 0.05
FINGER_MAX_M = 0.05  # per finger; opening 0..0.100
FINGERTIP_CENTRE_Z_M = 0.21  # pad centre along the flange z = the default TCP
PAD_HALF = (0.010, 0.004, 0.012)  # x, y (thickness), z
TCP_TO_PAD_BOTTOM_M = PAD_HALF[2]  # pad bottom is this far beyond the fingertip centre
_HOUSING_HALF = (0.03, 0.05, 0.065)
_HOUSING_Z = 0.085

_ENV = 'contype="1" conaffinity="7"'
_ARM = 'contype="2" conaffinity="7"'
_HAND = 'contype="4" conaffinity="3"'

TABLE_HALF = (0.7, 0.7, 0.02)
TABLE_CENTRE_XY = (-0.4, 0.0)
FLOOR_Z_M = -0.75


def _v(x) -> str:
    return " ".join(f"{float(c):.17g}" for c in np.ravel(x))


def _quat_x(angle: float) -> str:
    return _v((math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0))


def _quat_rotvec(rotvec) -> str:
    x, y, z, w = Rotation.from_rotvec(np.asarray(rotvec, dtype=float)).as_quat()
    return _v((w, x, y, z))


def _cylinder_inertia(mass: float, radius: float, length: float, axis: int) -> np.ndarray:
    axial = mass * radius**2 / 2
    perp = mass * (3 * radius**2 + length**2) / 12
    inertia = np.full(3, perp)
    inertia[axis] = axial
    return inertia


def _dh_offset(arm_model: str, i: int) -> str:
    """``pos``/``quat`` attributes of ``Tz(d_i)·Tx(a_i)·Rx(alpha_i)``."""
    m = MODELS[arm_model]
    return f'pos="{_v((m.a[i], 0.0, m.d[i]))}" quat="{_quat_x(m.alpha[i])}"'


def _arm_link(i: int, arm_model: str, armature: float, inner: str) -> str:
    """Body ``i`` (0-based) with its hinge, geometry and inertia, wrapping ``inner``."""
    m = MODELS[arm_model]
    d, a = m.d[i], m.a[i]
    mass, r = LINK_MASSES_KG[arm_model][i], _LINK_RADII[i]
    seg = np.array([a, 0.0, d])  # to the next joint, in this body's frame
    axis = 0 if abs(a) > abs(d) else 2
    limit = m.joint_position_limits_rad[i]
    if i == 0:  # the shoulder column starts above the base flange
        geoms = [f'<geom type="cylinder" fromto="0 0 0.035 0 0 {d:.17g}" size="{r}"/>']
    elif axis == 0:
        geoms = [f'<geom type="capsule" fromto="0 0 0 {a:.17g} 0 0" size="{r}"/>']
    else:
        geoms = [f'<geom type="cylinder" fromto="0 0 0 0 0 {d:.17g}" size="{r}"/>']
    if _MOTOR_RADII[i]:
        rm = _MOTOR_RADII[i]
        geoms.append(
            f'<geom type="cylinder" fromto="0 0 {-rm:.17g} 0 0 {rm:.17g}" size="{rm}" '
            'material="joint_cap"/>'
        )
    inertia = _cylinder_inertia(mass, r, float(np.linalg.norm(seg)), axis)
    placement = _dh_offset(arm_model, i - 1) if i > 0 else ""
    return (
        f'<body name="{ARM_BODIES[i]}" {placement}>\n'
        f'<joint name="{ARM_JOINTS[i]}" axis="0 0 1" range="{-limit:.17g} {limit:.17g}" '
        f'armature="{armature:.17g}" damping="0.5"/>\n'
        f'<inertial pos="{_v(seg / 2)}" mass="{mass}" diaginertia="{_v(inertia)}"/>\n'
        + "\n".join(geoms)
        + f"\n{inner}\n</body>"
    )


def _finger(side: int) -> str:
    """One RG2-FT finger; ``side`` +1 (left, +y) or -1 (right, -y)."""
    name = FINGER_BODIES[0 if side > 0 else 1]
    tip, site = TIP_BODIES[0 if side > 0 else 1], SENSOR_SITES[0 if side > 0 else 1]
    px, py, pz = PAD_HALF
    # Sensor frame: z = inward pad normal (-side·y_tool), x = tool z, y = z × x.
    rot = np.column_stack([(0, 0, 1), (-side, 0, 0), (0, -side, 0)])
    x, y, z, w = Rotation.from_matrix(rot).as_quat()
    return f"""
<body name="{name}">
  <joint name="{FINGER_JOINTS[0 if side > 0 else 1]}" type="slide" axis="0 {side} 0"
         range="0 {FINGER_MAX_M}" armature="0.1" damping="1" solreflimit="0.005 1"
         solimplimit="0.95 0.99 0.001"/>
  <inertial pos="0 {side * 0.008} 0.17" mass="0.04" diaginertia="2e-5 2e-5 5e-6"/>
  <geom type="box" pos="0 {side * 0.006:.17g} 0.168" size="0.009 0.004 0.03" {_HAND}
        material="finger"/>
  <body name="{tip}" pos="0 {side * py:.17g} {FINGERTIP_CENTRE_Z_M}">
    <inertial pos="0 0 0" mass="0.01" diaginertia="1e-6 1e-6 1e-6"/>
    <geom name="{tip}_pad" type="box" size="{px} {py} {pz}" {_HAND} friction="1 0.01 0.001"
          material="pad"/>
    <site name="{site}" quat="{_v((w, x, y, z))}" size="0.003"/>
  </body>
</body>"""


def _gripper(arm_model: str, tcp_offset) -> str:
    """Flange site and the RG2-FT body, both at the DH flange frame of wrist 3."""
    hx, hy, hz = _HOUSING_HALF
    flange = _dh_offset(arm_model, 5)
    return f"""
<site name="flange" {flange} size="0.005" rgba="1 0 0 1"/>
<body name="rg2ft" {flange}>
  <inertial pos="0 0 {_HOUSING_Z}" mass="{GRIPPER_MASS_KG}"
            diaginertia="{_v(_cylinder_inertia(GRIPPER_MASS_KG, 0.045, 0.15, 2))}"/>
  <geom type="cylinder" fromto="0 0 0 0 0 0.02" size="0.038" {_HAND} material="finger"/>
  <geom type="box" pos="0 0 {_HOUSING_Z}" size="{hx} {hy} {hz}" {_HAND} material="gripper"/>
  <site name="tcp" pos="{_v(tcp_offset[:3])}" quat="{_quat_rotvec(tcp_offset[3:])}"
        size="0.004" rgba="0 1 0 1"/>
  {_finger(+1)}
  {_finger(-1)}
</body>"""


def look_at_xyaxes(eye, target) -> np.ndarray:
    """MuJoCo ``xyaxes`` of a camera at ``eye`` looking at ``target`` with world z up."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = eye - target
    back /= np.linalg.norm(back)  # camera +z points away from the scene
    x = np.cross((0.0, 0.0, 1.0), back)
    x /= np.linalg.norm(x)
    return np.concatenate([x, np.cross(back, x)])


def _camera(cam) -> str:
    # Intrinsics through a virtual sensor of 1 µm pixels: MuJoCo then uses
    # fx, fy, cx, cy exactly (fovy = 2·atan(H / (2·fy)) follows from them).
    pitch = 1e-6
    w, h = cam.width, cam.height
    principal = ((w / 2 - cam.cx) * pitch, (h / 2 - cam.cy) * pitch)
    return (
        f'<camera name="{CAMERA_NAME}" pos="{_v(cam.pos_m)}" '
        f'xyaxes="{_v(look_at_xyaxes(cam.pos_m, cam.look_at_m))}" resolution="{w} {h}" '
        f'sensorsize="{_v((w * pitch, h * pitch))}" focal="{_v((cam.fx * pitch, cam.fy * pitch))}" '
        f'principal="{_v(principal)}"/>'
    )


def build_scene_xml(config: PlantConfig, task_xml: str, extra_worldbody_xml: str = "") -> str:
    """The complete MJCF of the cell.

    Args:
        config: plant config (arm model, physics rate, TCP offset, armature, camera).
        task_xml: worldbody fragment of the task fixture (from the task object).
        extra_worldbody_xml: more worldbody elements (test objects, other fixtures).
    """
    cam = config.camera
    inner = _gripper(config.arm_model, np.asarray(config.tcp_offset, dtype=float))
    for i in reversed(range(6)):
        inner = _arm_link(i, config.arm_model, config.joint_armature[i], inner)
    efforts = EFFORT_LIMITS_NM[config.arm_model]
    motors = "\n".join(
        f'<motor name="{j}" joint="{j}" ctrlrange="{-e} {e}"/>'
        for j, e in zip(ARM_JOINTS, efforts, strict=True)
    )
    fingers = "\n".join(
        f'<motor name="{j}" joint="{j}" ctrlrange="-40 40"/>' for j in FINGER_JOINTS
    )
    tx, ty = TABLE_CENTRE_XY
    legs = "".join(
        f'<geom type="box" pos="{tx + sx * (TABLE_HALF[0] - 0.05):.4g} '
        f'{ty + sy * (TABLE_HALF[1] - 0.05):.4g} {FLOOR_Z_M / 2:.4g}" '
        f'size="0.03 0.03 {-FLOOR_Z_M / 2:.4g}" contype="0" conaffinity="0" material="table"/>'
        for sx in (-1, 1)
        for sy in (-1, 1)
    )
    return f"""<mujoco model="demuse_twin_{config.arm_model}">
<compiler angle="radian" autolimits="true"/>
<option timestep="{1.0 / config.physics_rate_hz:.17g}" integrator="implicitfast"/>
<statistic extent="1" center="-0.4 0 0.3"/>
<visual>
  <quality shadowsize="0" offsamples="0"/>
  <global offwidth="{max(cam.width, 640)}" offheight="{max(cam.height, 480)}"/>
  <map znear="{cam.near_m}" zfar="{cam.far_m}"/>
  <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5"/>
</visual>
<default>
  <geom {_ARM} solref="0.005 1" solimp="0.95 0.99 0.001" material="link"/>
</default>
<asset>
  <material name="link" rgba="0.72 0.75 0.78 1"/>
  <material name="joint_cap" rgba="0.25 0.35 0.55 1"/>
  <material name="gripper" rgba="0.85 0.85 0.85 1"/>
  <material name="finger" rgba="0.3 0.3 0.32 1"/>
  <material name="pad" rgba="0.1 0.1 0.1 1"/>
  <material name="table" rgba="0.62 0.48 0.33 1"/>
  <material name="floor" rgba="0.35 0.37 0.4 1"/>
  <material name="fixture" rgba="0.55 0.55 0.6 1"/>
  <material name="button" rgba="0.85 0.15 0.1 1"/>
</asset>
<worldbody>
  <light pos="-0.4 -0.3 2.5" dir="0 0 -1" directional="true" diffuse="0.6 0.6 0.6"/>
  <geom name="floor" type="plane" pos="0 0 {FLOOR_Z_M}" size="3 3 0.1" {_ENV} material="floor"/>
  <geom name="table" type="box" pos="{tx} {ty} {-TABLE_HALF[2]}" size="{_v(TABLE_HALF)}" {_ENV}
        material="table"/>
  {legs}
  <body name="base_link">
    <geom type="cylinder" fromto="0 0 0 0 0 0.03" size="0.08" material="joint_cap"/>
    {inner}
  </body>
  {task_xml}
  {extra_worldbody_xml}
  {_camera(cam)}
</worldbody>
<contact>
  <exclude body1="base_link" body2="shoulder_link"/>
</contact>
<actuator>
{motors}
{fingers}
</actuator>
</mujoco>
"""


# Geom classes for contact readouts.
ENV, ARM, HAND, TIP_LEFT, TIP_RIGHT = range(5)


def geom_classes(model: mujoco.MjModel) -> np.ndarray:
    """(ngeom,) class of every geom: ENV, ARM (base + links), HAND, TIP_LEFT, TIP_RIGHT."""
    of_body = np.full(model.nbody, ENV)
    for name in ("base_link", *ARM_BODIES):
        of_body[model.body(name).id] = ARM
    for name in HAND_BODIES:
        of_body[model.body(name).id] = HAND
    of_body[model.body(TIP_BODIES[0]).id] = TIP_LEFT
    of_body[model.body(TIP_BODIES[1]).id] = TIP_RIGHT
    return of_body[model.geom_bodyid]


def contact_wrench(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    on: np.ndarray,
    point: np.ndarray,
    by: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Contact force on the geoms in mask ``on`` and its moment about ``point`` (world frame).

    Args:
        on: (ngeom,) bool, the body the wrench acts on.
        point: moment reference point (world).
        by: (ngeom,) bool, only contacts with these geoms count (default: all not in ``on``).
    """
    force, moment, raw = np.zeros(3), np.zeros(3), np.zeros(6)
    for i in range(data.ncon):
        g1, g2 = data.contact.geom[i]
        if on[g1] == on[g2] or (by is not None and not by[g2 if on[g1] else g1]):
            continue
        mujoco.mj_contactForce(model, data, i, raw)
        frame = data.contact.frame[i].reshape(3, 3)
        sign = 1.0 if on[g2] else -1.0  # the force acts on geom2 along +normal
        f = sign * (frame.T @ raw[:3])
        force += f
        # r × f written out: np.cross on single 3-vectors costs ~30 µs of Python overhead.
        rx, ry, rz = (data.contact.pos[i] - point).tolist()
        fx, fy, fz = f.tolist()
        moment += (ry * fz - rz * fy, rz * fx - rx * fz, rx * fy - ry * fx)
        moment += sign * (frame.T @ raw[3:])
    return force, moment
