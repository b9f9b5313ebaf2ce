"""ROS 2 message definitions, builders and fast CDR encoders, checked against mcap_ros2."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("mcap_ros2", reason="needs mcap-ros2-support (core dependency)")

from mcap_ros2._dynamic import generate_dynamic, serialize_dynamic
from scipy.spatial.transform import Rotation

from demuse_ros.record import messages as M
from demuse_ros.record.cdr import ENCODERS
from demuse_ros.record.decode import decode

OFFSET = 1_700_000_000_123_456_789  # a wall-minus-monotonic offset (ns)
RNG = np.random.default_rng(7)


def _records() -> dict[str, dict]:
    cam = {
        "t_capture_ns": 5_000_000_007,
        "t_receive_ns": 5_010_000_000,
        "device_time_s": 86_400.123456789,
        "rgb": RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8),
        "depth_m": RNG.uniform(0.1, 3.0, (6, 8)).astype(np.float32),
        "frame_number": 1234,
    }
    ft = {
        "t_capture_ns": 5_000_000_011,
        "t_receive_ns": 5_002_000_011,
        "device_time_s": math.nan,
        "wrench": RNG.normal(size=6),
        "finger_wrenches": RNG.normal(size=(2, 6)),
        "gripper_width_m": 0.0421,
    }
    arm = {
        "t_capture_ns": 5_000_000_013,
        "t_receive_ns": 5_000_400_013,
        "device_time_s": 1234.568,
        "joint_positions_rad": RNG.normal(size=6),
        "joint_velocities_rad_s": RNG.normal(size=6),
        "tcp_pose": np.r_[RNG.normal(size=3), 0.3, -1.2, 2.0],
        "tcp_speed": RNG.normal(size=6),
    }
    return {"camera": cam, "ft": ft, "arm": arm}


def _built(r: dict[str, dict] | None = None) -> list[tuple[str, dict]]:
    r = r or _records()
    intr = M.CameraIntrinsics(8, 6, 615.0, 616.0, 4.1, 3.2)
    frames = M.Frames()
    chunk = M.chunk_messages(
        5_000_000_000,
        5_000_000_000 + np.array([-5, 100_000_000, 200_000_000]),
        RNG.normal(size=(3, 6)),
        np.array([0.08, 0.06, 0.04]),
        OFFSET,
        frames,
    )
    return (
        M.camera_messages(r["camera"], OFFSET, frames, intr)
        + M.ft_messages(r["ft"], OFFSET, frames)
        + M.arm_messages(r["arm"], OFFSET, frames)
        + chunk
    )


@pytest.mark.parametrize("datatype", sorted(set(M.TOPICS.values())))
def test_definitions_parse_and_list_dependencies(datatype: str) -> None:
    text = M.msgdef(datatype)
    assert datatype in serialize_dynamic(datatype, text)
    assert datatype in generate_dynamic(datatype, text)
    for line in text.splitlines():  # every referenced type has its MSG: section
        ftype = line.split()[0].split("[")[0] if line and not line.startswith(("=", "MSG")) else ""
        if "/" in ftype:
            assert f"MSG: {ftype}\n" in text


def test_fast_encoders_match_mcap_ros2_byte_for_byte() -> None:
    covered = set()
    for topic, msg in _built():
        datatype = M.TOPICS[topic]
        if datatype not in ENCODERS:
            continue
        reference = serialize_dynamic(datatype, M.msgdef(datatype))[datatype](msg)
        assert ENCODERS[datatype](msg) == reference, topic
        covered.add(datatype)
    assert covered == set(ENCODERS)


def test_builders_decode_to_the_record_values_and_stamps() -> None:
    r = _records()
    decoded = {}
    for topic, msg in _built(r):
        datatype = M.TOPICS[topic]
        data = ENCODERS.get(datatype, serialize_dynamic(datatype, M.msgdef(datatype))[datatype])(
            msg
        )
        decoded[topic] = generate_dynamic(datatype, M.msgdef(datatype))[datatype](data)
    cam, ft, arm = r["camera"], r["ft"], r["arm"]
    color = decoded["camera/color/image_raw"]
    assert (color.encoding, color.step, color.header.frame_id) == (
        "rgb8",
        24,
        "camera_color_optical_frame",
    )
    stamp = color.header.stamp
    assert stamp.sec * 10**9 + stamp.nanosec == cam["t_capture_ns"] + OFFSET
    np.testing.assert_array_equal(decode(color), cam["rgb"])
    depth = decoded["camera/aligned_depth_to_color/image_raw"]
    assert depth.encoding == "16UC1" and depth.step == 16
    np.testing.assert_allclose(decode(depth) / 1000.0, cam["depth_m"], atol=0.0005)
    info = decode(decoded["camera/color/camera_info"])
    np.testing.assert_allclose(info["k"], [[615, 0, 4.1], [0, 616, 3.2], [0, 0, 1]])
    tref = decode(decoded["camera/time_reference"])
    assert tref["device_time_s"] == pytest.approx(cam["device_time_s"], abs=1e-9)
    assert tref["source"] == "camera frame=1234"
    assert math.isnan(decode(decoded["ft/time_reference"])["device_time_s"])
    np.testing.assert_array_equal(decode(decoded["ft/wrench"]), ft["wrench"])
    np.testing.assert_array_equal(decode(decoded["ft/right/wrench"]), ft["finger_wrenches"][1])
    assert decoded["ft/left/wrench"].header.frame_id == "rg2ft_left_sensor"
    js = decode(decoded["joint_states"])
    assert js["name"] == list(M.UR_JOINT_NAMES)
    np.testing.assert_array_equal(js["position"], arm["joint_positions_rad"])
    pose = decode(decoded["tcp_pose"])
    np.testing.assert_allclose(
        Rotation.from_quat(pose[3:]).as_rotvec(), arm["tcp_pose"][3:], atol=1e-12
    )
    ((parent, child, tf),) = decode(decoded["tf"])
    assert (parent, child) == ("base", "tool0")
    np.testing.assert_array_equal(tf, pose)
    chunk = decode(decoded["action_chunk"], OFFSET)
    np.testing.assert_array_equal(chunk["t_ns"], 5_000_000_000 + np.array([-5, 1e8, 2e8]))
    grip = decode(decoded["action_chunk/gripper"], OFFSET)
    np.testing.assert_array_equal(grip["positions"][:, 0], [0.08, 0.06, 0.04])


def test_depth_to_mm_follows_rep_118() -> None:
    d = np.array([0.0, 0.0004, 1.2344, 1.2346, np.nan, np.inf, -1.0, 65.535, 70.0], np.float32)
    np.testing.assert_array_equal(M.depth_to_mm(d), [0, 0, 1234, 1235, 0, 0, 0, 65535, 0])
    assert M.depth_to_mm(d).dtype == np.dtype("<u2")


def test_stamps_and_durations_are_exact_integers() -> None:
    assert M.stamp(1_700_000_000_999_999_999) == {"sec": 1_700_000_000, "nanosec": 999_999_999}
    assert M.duration(-5) == {"sec": -1, "nanosec": 999_999_995}
    with pytest.raises(KeyError, match="no message definition"):
        M.msgdef("sensor_msgs/PointCloud2")
