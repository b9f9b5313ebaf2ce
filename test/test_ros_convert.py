"""The ROS 2 layer's pure parts, without rclpy: conversions, parameters, bridge, diagnostics."""

from __future__ import annotations

import array
import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from demuse_ros.config import ConfigError
from demuse_ros.record.messages import chunk_messages, depth_to_mm
from demuse_ros.ros import diagnostics
from demuse_ros.ros.bridge import RemoteCell, StampJoiner, StreamRings, TopicTwin
from demuse_ros.ros.convert import (
    TimeMap,
    arm_record,
    camera_record,
    chunk_from_points,
    fill_message,
    ft_record,
    gripper_from_points,
    image_array,
    joint_order,
    look_at_quaternion,
    mm_to_depth_m,
    quat_to_rotvec,
    rotvec_to_quat,
)
from demuse_ros.ros.node_config import (
    NODE_PARAMETERS,
    TWIN_CAMERA_XYZ_M,
    TWIN_CAMERA_XYZW,
    CameraNodeConfig,
    FrameConfig,
    PolicyNodeConfig,
)
from demuse_ros.ros.params import ParamGroup, declarations, ros_kind, to_configs
from demuse_ros.runtime.chunking import ChunkConfig
from demuse_ros.runtime.scheduler import Runtime, RuntimeConfig
from demuse_ros.sync.streams import arm_schema, camera_schema, ft_schema
from demuse_ros.timing.clock import now_ns

MS = 1_000_000


# ---------------------------------------------------------------------- time and rotations
def test_time_map_round_trips_and_splits_stamps() -> None:
    times = TimeMap(ros_now_ns=1_700_000_000_123_456_789, mono_now_ns=5_000_000_000)
    mono = 5_250_000_001
    sec, nanosec = times.stamp(mono)
    assert (sec, nanosec) == (1_700_000_000, 373_456_790)
    assert times.from_stamp(sec, nanosec) == mono
    assert times.to_mono_ns(times.to_ros_ns(mono)) == mono


def test_rotation_vector_quaternion_round_trip() -> None:
    rng = np.random.default_rng(0)
    for rotvec in rng.uniform(-3.0, 3.0, size=(50, 3)):
        q = rotvec_to_quat(rotvec)
        assert q[3] >= 0 and math.isclose(np.linalg.norm(q), 1.0)
        back = quat_to_rotvec(q)
        assert np.allclose(
            Rotation.from_rotvec(back).as_matrix(), Rotation.from_rotvec(rotvec).as_matrix()
        )
    assert np.allclose(quat_to_rotvec((0.0, 0.0, 0.0, 2.0)), 0.0)  # normalised
    with pytest.raises(ValueError, match="no rotation"):
        quat_to_rotvec((0.0, 0.0, 0.0, 0.0))


def test_camera_extrinsic_default_is_the_twins_camera() -> None:
    """The shipped default extrinsic is the twin camera's optical frame (MuJoCo xyaxes)."""
    from demuse_ros.twin.scene import look_at_xyaxes
    from demuse_ros.twin.sim_config import SimConfig

    cam = SimConfig().plant.camera
    assert tuple(cam.pos_m) == TWIN_CAMERA_XYZ_M
    q = look_at_quaternion(cam.pos_m, cam.look_at_m)
    assert np.allclose(q, TWIN_CAMERA_XYZW, atol=1e-8)
    # MuJoCo's camera: x right, y up, looking along -z; the optical frame: x right, y down, z ahead.
    xy = look_at_xyaxes(cam.pos_m, cam.look_at_m)
    rot = Rotation.from_quat(q).as_matrix()
    assert np.allclose(rot[:, 0], xy[:3]) and np.allclose(rot[:, 1], -xy[3:])
    with pytest.raises(ValueError, match="straight up or down"):
        look_at_quaternion((0, 0, 1), (0, 0, 0))


# ---------------------------------------------------------------------- images
def test_depth_mm_round_trip_and_unknown_values() -> None:
    depth = np.array([[0.0, 0.5004, 1.2346], [np.nan, -1.0, 70.0]], dtype=np.float32)
    mm = depth_to_mm(depth)
    assert mm.dtype == np.dtype("<u2") and mm.tolist() == [[0, 500, 1235], [0, 0, 0]]
    back = mm_to_depth_m(mm)
    assert back.dtype == np.float32
    assert np.allclose(back[0], [0.0, 0.5, 1.235]) and not back[1].any()


def test_image_array_handles_row_padding_bgr_and_16uc1() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), dtype=np.uint8)  # step 12 > 9 bytes a row
    padded[:, :9] = rgb.reshape(2, 9)
    out = image_array(padded.tobytes(), 2, 3, 12, "rgb8")
    assert out.shape == (2, 3, 3) and (out == rgb).all()
    bgr = image_array(rgb[..., ::-1].tobytes(), 2, 3, 9, "bgr8")
    assert (bgr == rgb).all()
    mm = np.array([[1, 65535], [300, 0]], dtype="<u2")
    assert (image_array(array.array("B", mm.tobytes()), 2, 2, 4, "16UC1") == mm).all()
    big = mm.astype(">u2")
    assert (image_array(big.tobytes(), 2, 2, 4, "16UC1", is_bigendian=True) == mm).all()
    with pytest.raises(ValueError, match="not supported"):
        image_array(b"", 1, 1, 1, "yuv422")
    with pytest.raises(ValueError, match="do not hold"):
        image_array(b"\0" * 8, 2, 3, 9, "rgb8")


# ---------------------------------------------------------------------- trajectories
def test_action_chunk_round_trip_through_message_fields() -> None:
    """policy_node's action_chunk, read back by arm_node: same monotonic times and poses."""
    sender = TimeMap(ros_now_ns=1_700_000_000 * 10**9, mono_now_ns=10**9)
    receiver = TimeMap(ros_now_ns=1_700_000_000 * 10**9 + 7, mono_now_ns=10**9 + 7)
    t_send = 3 * 10**9
    t = np.array([t_send + 100 * MS * (i + 1) for i in range(4)], dtype=np.int64)
    rng = np.random.default_rng(1)
    poses = np.c_[rng.uniform(-0.5, 0.5, (4, 3)), rng.uniform(-1.0, 1.0, (4, 3))]
    widths = np.array([0.08, 0.07, 0.06, 0.05])
    built = dict(chunk_messages(t_send, t, poses, widths, sender.offset_ns, FrameConfig().frames()))
    msg = built["action_chunk"]
    stamp = msg["header"]["stamp"]["sec"] * 10**9 + msg["header"]["stamp"]["nanosec"]
    points = [
        (
            p["time_from_start"]["sec"] * 10**9 + p["time_from_start"]["nanosec"],
            [p["transforms"][0]["translation"][k] for k in "xyz"],
            [p["transforms"][0]["rotation"][k] for k in "xyzw"],
        )
        for p in msg["points"]
    ]
    t_back, poses_back = chunk_from_points(stamp, points, receiver)
    assert (t_back == t).all()
    assert np.allclose(poses_back[:, :3], poses[:, :3])
    for a, b in zip(poses_back[:, 3:], poses[:, 3:], strict=True):
        assert np.allclose(Rotation.from_rotvec(a).as_matrix(), Rotation.from_rotvec(b).as_matrix())
    g = built["action_chunk/gripper"]
    gpoints = [
        (
            p["time_from_start"]["sec"] * 10**9 + p["time_from_start"]["nanosec"],
            p["positions"],
            [25.0],
        )
        for p in g["points"]
    ]
    tg, wg, force = gripper_from_points(stamp, gpoints, receiver)
    assert (tg == t).all() and np.allclose(wg, widths) and force == 25.0
    assert gripper_from_points(stamp, [(0, [0.05], [])], receiver)[2] is None


# ---------------------------------------------------------------------- message objects
class _Fake:
    """Stands in for a generated message class (``get_fields_and_field_types``)."""

    FIELDS: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        for name, kind in self.FIELDS.items():
            setattr(self, name, _TYPES[kind]() if kind in _TYPES else None)

    @classmethod
    def get_fields_and_field_types(cls) -> dict[str, str]:
        return dict(cls.FIELDS)


class _Time(_Fake):
    FIELDS: ClassVar[dict[str, str]] = {"sec": "int32", "nanosec": "uint32"}


class _Header(_Fake):
    FIELDS: ClassVar[dict[str, str]] = {"stamp": "builtin_interfaces/Time", "frame_id": "string"}


class _Vec(_Fake):
    FIELDS: ClassVar[dict[str, str]] = {"x": "double", "y": "double", "z": "double"}


class _Image(_Fake):
    FIELDS: ClassVar[dict[str, str]] = {
        "header": "std_msgs/Header",
        "data": "sequence<uint8>",
        "encoding": "string",
    }


class _Path(_Fake):
    FIELDS: ClassVar[dict[str, str]] = {
        "header": "std_msgs/Header",
        "points": "sequence<geometry_msgs/Vector3>",
    }


_TYPES: dict[str, Any] = {
    "builtin_interfaces/Time": _Time,
    "std_msgs/Header": _Header,
    "geometry_msgs/Vector3": _Vec,
}


def test_fill_message_nested_lists_and_bytes() -> None:
    header = {"stamp": {"sec": 3, "nanosec": 4}, "frame_id": "base"}
    img = fill_message(
        _Image(), {"header": header, "data": b"\x01\x02", "encoding": "rgb8"}, _TYPES.get
    )
    assert img.header.stamp.sec == 3 and img.header.frame_id == "base"
    assert (
        isinstance(img.data, array.array) and img.data.typecode == "B" and list(img.data) == [1, 2]
    )
    path = fill_message(_Path(), {"header": header, "points": [{"x": 1.0}, {"y": 2.0}]}, _TYPES.get)
    assert [type(p) for p in path.points] == [_Vec, _Vec] and path.points[1].y == 2.0
    with pytest.raises(KeyError, match="no field 'dta'"):
        fill_message(_Image(), {"dta": b""}, _TYPES.get)


# ---------------------------------------------------------------------- records and rings
def test_records_fit_the_stream_schemas() -> None:
    rings = StreamRings()
    color = np.zeros((4, 6, 3), np.uint8)
    ring = rings.camera_ring(6, 4)
    assert ring is not None and ring.schema == camera_schema(6, 4)
    assert rings.put("camera", 10, 11, camera_record(color, np.full((4, 6), 1500, np.uint16), 7))
    rec = ring.read(0)
    assert rec["frame_number"] == 7 and np.allclose(rec["depth_m"], 1.5)
    assert rings.camera_ring(640, 480) is None and rings.wrong_size == 1
    assert rings.ft.schema == ft_schema() and rings.arm.schema == arm_schema()
    assert rings.put("ft", 10, 11, ft_record([1, 2, 3, 0, 0, 0], 0.05, left=[1] * 6))
    ft = rings.ft.read(0)
    assert (
        ft["finger_wrenches"][0].tolist() == [1.0] * 6 and np.isnan(ft["finger_wrenches"][1]).all()
    )
    quat = rotvec_to_quat([0.1, 0.2, 0.3])
    assert rings.put("arm", 10, 11, arm_record(np.zeros(6), [], [1, 2, 3], quat))
    arm = rings.arm.read(0)
    assert np.allclose(arm["tcp_pose"], [1, 2, 3, 0.1, 0.2, 0.3]) and arm["robot_mode"] == -1
    assert not rings.put("arm", 9, 12, arm_record(np.zeros(6), [], [1, 2, 3], quat))
    assert rings.out_of_order["arm"] == 1
    assert joint_order(["b", "a", "c"], ["a", "b"]) == [1, 0]
    assert joint_order(["a"], ["a", "b"]) is None
    rings.close()


def test_stamp_joiner_pairs_parts_and_drops_incomplete_records() -> None:
    out: list[tuple[int, dict[str, Any]]] = []
    joiner = StampJoiner(("color", "depth"), lambda t, parts: out.append((t, parts)), max_pending=3)
    joiner.add(1, "color", "c1")
    joiner.add(2, "color", "c2")
    joiner.add(2, "depth", "d2")  # record 2 completes: record 1 (no depth) can never complete
    joiner.add(1, "depth", "d1")  # late: dropped
    assert out == [(2, {"color": "c2", "depth": "d2"})]
    assert (joiner.completed, joiner.dropped) == (1, 2)
    for t in range(10, 16):  # never completed: at most max_pending kept
        joiner.add(t, "color", t)
    assert joiner.dropped == 5
    with pytest.raises(KeyError, match="unknown part"):
        joiner.add(20, "infrared", None)


# ---------------------------------------------------------------------- the runtime on a RemoteCell
class _StepPolicy:
    """Moves 1 mm per step in +x from the observed pose (a policy with no model)."""

    name, horizon = "step", 4

    def reset(self, obs: Any) -> None:
        pass

    def predict(self, obs: Any) -> np.ndarray:
        pose = np.asarray(obs.tcp_pose)
        return np.array([np.r_[pose + [0.001 * (i + 1), 0, 0, 0, 0, 0], 0.05] for i in range(4)])


def _fill(rings: StreamRings, t_ns: int, frame: int) -> None:
    rings.camera_ring(8, 6)
    rings.put(
        "camera",
        t_ns,
        t_ns,
        camera_record(np.zeros((6, 8, 3), np.uint8), np.zeros((6, 8), np.uint16), frame),
    )
    for dt in (-4 * MS, 0, 4 * MS):
        rings.put("ft", t_ns + dt, t_ns, ft_record(np.zeros(6), 0.05))
        rings.put(
            "arm",
            t_ns + dt,
            t_ns,
            arm_record(np.zeros(6), np.zeros(6), [0.1, 0.2, 0.3], [0, 0, 0, 1]),
        )


def test_runtime_runs_on_a_remote_cell_and_holds_on_arm_rejections() -> None:
    """policy_node's wiring without ROS: rings in, chunks out through the publish callables."""
    sent: list[tuple] = []
    stops: list[int] = []
    rings = StreamRings()
    cell = RemoteCell(rings, lambda *chunk: sent.append(chunk), lambda: stops.append(1))
    config = RuntimeConfig(chunk=ChunkConfig(stride=1), frame_wait_s=0.0)
    _fill(rings, now_ns() - 5 * MS, 1)
    runtime = Runtime(cell, _StepPolicy(), config)
    runtime.step()
    assert runtime.chunks_sent == 1 and len(sent) == 1
    t, poses, widths, force = sent[0]
    assert t.dtype == np.int64 and poses.shape[1] == 6 and widths is not None and force == 20.0
    assert poses[:, 0].max() <= 0.1 + 0.004 + 1e-9  # 1 mm steps from the observed x
    # The arm node's diagnostics report a refusal: the runtime holds (cuts its plan).
    cell.arm.update_stats({"chunks_rejected": "1", "fault": "0", "mode": "text is skipped"})
    _fill(rings, now_ns() - 5 * MS, 2)
    runtime.step()
    assert runtime.holds["rejected_by_arm"] == 1
    with pytest.raises(ValueError, match="width"):
        cell.send_chunk(t, poses, gripper_width_m=np.full(len(t), 0.5))
    before = len(stops)
    cell.arm.stop_motion()  # an empty action_chunk: the arm node stops the arm
    assert len(stops) == before + 1
    rings.close()


def test_topic_twin_waits_for_the_first_value() -> None:
    twin = TopicTwin(timeout_s=2.0)
    threading.Timer(0.05, twin.set, ("plunger_force_n", 3.5)).start()
    assert twin.call("plunger_force_n") == 3.5
    twin.timeout_s = 0.01
    with pytest.raises(TimeoutError, match="use_sim"):
        twin.call("plunger_top_pose")
    with pytest.raises(KeyError):
        twin.set("secret", 1)


# ---------------------------------------------------------------------- parameters
def test_every_node_declares_ros_typed_documented_parameters() -> None:
    from demuse_ros.ros.node_config import node_parameter_groups

    for node in [*NODE_PARAMETERS, "sim_node"]:
        decls = declarations(node_parameter_groups(node))
        assert len({d.name for d in decls}) == len(decls), node
        for d in decls:
            assert d.description, f"{node}: {d.name} has no description"
            if d.float_range:
                assert d.kind == "double" and d.float_range[0] <= d.default <= d.float_range[1]
            if d.int_range:
                assert d.kind == "integer" and d.int_range[0] <= d.default <= d.int_range[1]
            if d.kind == "double":
                assert isinstance(d.default, float), d.name


def test_parameters_read_back_through_the_config_dataclasses() -> None:
    groups = NODE_PARAMETERS["policy_node"]
    values = {d.name: d.default for d in declarations(groups)}
    configs = to_configs(groups, values, source="/policy_node parameters")
    assert configs[RuntimeConfig] == RuntimeConfig()
    assert configs[PolicyNodeConfig] == PolicyNodeConfig()
    assert configs[FrameConfig] == FrameConfig()
    values["sync.max_age_s"] = 2.0
    with pytest.raises(ConfigError) as info:
        to_configs(groups, values, source="/policy_node parameters")
    assert str(info.value).startswith(
        "/policy_node parameters: sync.max_age_s = 2.0 is out of range"
    )
    cam = NODE_PARAMETERS["camera_node"]
    values = {d.name: d.default for d in declarations(cam)}
    assert values["camera.rs_filters"] == [] and values["camera.source"] == "realsense"
    values["camera.rs_filters"] = array.array("u", [])  # what an unset array may look like
    values["extrinsic.rotation_xyzw"] = [0.0, 0.0, 0.5, 0.5]
    with pytest.raises(ConfigError, match="unit quaternion"):
        to_configs(cam, values, source="camera_node")
    assert to_configs(cam, {}, source="x")[CameraNodeConfig] == CameraNodeConfig()


def test_ros_kinds_and_unsupported_fields() -> None:
    assert ros_kind(float) == "double" and ros_kind(tuple[float, float]) == "double_array"
    assert ros_kind(tuple[str, ...]) == "string_array"
    with pytest.raises(TypeError, match="cannot be a ROS 2 parameter"):
        ros_kind(float | None)

    @dataclass(frozen=True)
    class Bad:
        limit: float | None = None

    with pytest.raises(TypeError, match="limit"):
        declarations([ParamGroup("x", Bad)])


# ---------------------------------------------------------------------- diagnostics, launch
def test_diagnostics_levels_say_what_to_act_on() -> None:
    ok = diagnostics.arm_status("arm_node", {"connected": 1.0}, 125.0, "10.0.0.2")
    assert diagnostics.level_of(ok) == diagnostics.OK and ok["name"] == "arm_node: arm"
    fault = diagnostics.arm_status("arm_node", {"connected": 1.0, "fault": 1.0}, 125.0, "h")
    assert (
        diagnostics.level_of(fault) == diagnostics.ERROR and "arm/reset_fault" in fault["message"]
    )
    hold = diagnostics.arm_status("arm_node", {"connected": 1.0, "hold": 1.0}, 125.0, "h")
    assert diagnostics.level_of(hold) == diagnostics.WARN
    assert diagnostics.level_of(diagnostics.ft_status("f", {"connected": 0.0}, 0.0, "h")) == 2
    run = diagnostics.runtime_status("p", {"holds": {"overrun": 2}}, policy="x", enabled=True)
    values = diagnostics.values_of(run)
    assert values["holds.overrun"] == "2" and values["enabled"] == "true"
    twin = diagnostics.sim_status("sim", {"realtime_factor": 1.0, "task": {"done": True}})
    assert diagnostics.values_of(twin)["task.done"] == "true"


def test_launch_cell_parameters() -> None:
    from demuse_ros.ros.launch_support import cell_parameters, parse_bool

    real = cell_parameters(use_sim=False, robot_ip="10.0.0.2", camera_serial="123")
    assert real == {
        "camera_node": {"camera.serial_number": "123"},
        "ft_node": {},
        "arm_node": {"arm.host": "10.0.0.2"},
    }
    sim = cell_parameters(use_sim=True, robot_ip="ignored", personality="e-series")
    assert sim["arm_node"] == {"arm.host": "127.0.0.1"}
    assert sim["camera_node"]["camera.source"] == "twin"
    assert sim["camera_node"]["camera.frame_ring"] == sim["sim_node"]["camera.ring_name"]
    assert sim["sim_node"]["plant.arm_model"] == "ur10e"
    assert parse_bool("True") and not parse_bool("false")
    with pytest.raises(ValueError):
        parse_bool("yes")


def test_sim_overrides_are_valid_parameters_of_their_nodes() -> None:
    from demuse_ros.ros.launch_support import cell_parameters
    from demuse_ros.ros.node_config import node_parameter_groups

    for node, overrides in cell_parameters(use_sim=True, personality="e-series").items():
        groups = node_parameter_groups(node)
        values = {d.name: d.default for d in declarations(groups)}
        assert set(overrides) <= set(values), node
        to_configs(groups, {**values, **overrides}, source=node)  # validates


def test_twin_serves_the_configured_camera_ring_name() -> None:
    """sim_node names the frame ring (camera.ring_name) so camera_node can attach to it."""
    from dataclasses import replace

    from demuse_ros.twin.runner import RealtimeTwin
    from demuse_ros.twin.sim_config import SimConfig

    base = SimConfig()
    twin = RealtimeTwin(replace(base, camera=replace(base.camera, ring_name="demuse_test_ring")))
    try:
        assert twin.camera_ring_name == "demuse_test_ring"
        assert twin.endpoints()["camera_ring"] == "demuse_test_ring"
    finally:
        twin.twin.close()
