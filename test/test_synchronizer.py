"""Synchronizer: invalid-tick reasons, interpolated values, properties over synthetic streams."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demuse_ros.sync import (
    InvalidReason,
    SyncConfig,
    Synchronizer,
    arm_schema,
    camera_schema,
    choose,
    ft_schema,
)
from demuse_ros.timing.clock_mapper import ClockMapper, ClockMapperConfig
from demuse_ros.transport import RingBuffer, capacity_for

MS = 1_000_000
S = 1_000_000_000
W, H = 8, 6  # tiny frames: these tests are about time, not pixels


def rings(cam_cap: int = 16, ft_cap: int = 64, arm_cap: int = 256):
    return (
        RingBuffer.create(camera_schema(W, H), cam_cap),
        RingBuffer.create(ft_schema(), ft_cap),
        RingBuffer.create(arm_schema(), arm_cap),
    )


def put_frame(cam: RingBuffer, t_ns: int, n: int, value: int = 0) -> None:
    cam.put(
        t_ns,
        t_ns + 5 * MS,
        n / 30,
        rgb=np.full((H, W, 3), value, np.uint8),
        depth_m=np.full((H, W), 1.0, np.float32),
        frame_number=n,
    )


def put_ft(ft: RingBuffer, t_ns: int, wrench) -> None:
    w = np.asarray(wrench, float)
    ft.put(
        t_ns, t_ns + MS, math.nan, wrench=w, finger_wrenches=np.stack([w, w]), gripper_width_m=0.05
    )


def put_arm(arm: RingBuffer, t_ns: int, pose) -> None:
    pose = np.asarray(pose, float)
    arm.put(
        t_ns,
        t_ns + MS,
        t_ns / S,
        joint_positions_rad=np.full(6, t_ns / S),
        joint_velocities_rad_s=np.zeros(6),
        tcp_pose=pose,
        tcp_speed=np.zeros(6),
        robot_mode=7,
        safety_mode=1,
        runtime_state=2,
    )


def test_linear_alignment_values_and_stamps() -> None:
    cam, ft, arm = rings()
    t0 = 10 * S
    for k in range(100):  # 100 Hz F/T whose Fz ramps 1 N per 10 ms
        put_ft(ft, t0 + k * 10 * MS, [0, 0, k, 0, 0, 0])
    for k in range(500):  # 500 Hz arm moving 1 mm per 2 ms in x, rotating about z
        put_arm(arm, t0 + k * 2 * MS, [k * 1e-3, 0, 0.3, 0, 0, k * 1e-3])
    put_frame(cam, t0 + 503 * MS, 7, value=9)
    sync = Synchronizer(SyncConfig(), cam, ft, arm)
    obs = sync.tick(now=t0 + 530 * MS)
    assert obs.valid, obs.detail
    assert obs.reason is InvalidReason.OK and obs.frame_number == 7
    assert obs.wrench[2] == pytest.approx(50.3)
    assert obs.ft_gap_s == pytest.approx(0.007)  # samples at 500 and 510 ms; farther is 7 ms
    np.testing.assert_allclose(obs.tcp_pose, [0.2515, 0, 0.3, 0, 0, 0.2515], atol=1e-9)
    assert obs.arm_gap_s == pytest.approx(0.001)
    assert obs.age_s == pytest.approx(0.027)
    assert obs.rgb.shape == (H, W, 3) and obs.rgb[0, 0, 0] == 9 and obs.depth_m.dtype == np.float32
    # the same frame again is a duplicate, and it is counted
    again = sync.tick(now=t0 + 540 * MS)
    assert again.reason is InvalidReason.DUPLICATE_FRAME
    assert sync.stats()["invalid"]["duplicate_frame"] == 1 and sync.stats()["valid"] == 1


def test_nearest_mode_takes_a_sample_verbatim() -> None:
    cam, ft, arm = rings()
    t0 = 10 * S
    put_ft(ft, t0, [1, 0, 0, 0, 0, 0])
    put_ft(ft, t0 + 10 * MS, [2, 0, 0, 0, 0, 0])
    put_arm(arm, t0 + 5 * MS, [0.1, 0, 0, 0, 0, 0])
    put_frame(cam, t0 + 6 * MS, 1)
    obs = Synchronizer(SyncConfig(interpolation="nearest"), cam, ft, arm).tick(now=t0 + 20 * MS)
    assert obs.valid and obs.wrench[0] == 2.0 and obs.ft_gap_s == pytest.approx(0.004)
    assert obs.tcp_pose[0] == 0.1


@pytest.mark.parametrize(
    ("setup", "now_ms", "reason"),
    [
        ("empty", 100, InvalidReason.NO_CAMERA_FRAME),
        ("normal", 250, InvalidReason.STALE_CAMERA),
        ("normal", 90, InvalidReason.FUTURE_CAMERA),
        ("no_ft", 120, InvalidReason.FT_MISSING),
        ("ft_gap", 120, InvalidReason.FT_TOO_FAR),
        ("no_arm", 120, InvalidReason.ARM_MISSING),
        ("arm_gap", 120, InvalidReason.ARM_TOO_FAR),
        ("nan", 120, InvalidReason.NON_FINITE),
    ],
)
def test_invalid_reasons(setup: str, now_ms: int, reason: InvalidReason) -> None:
    cam, ft, arm = rings()
    t0 = 10 * S
    if setup != "empty":
        put_frame(cam, t0 + 100 * MS, 1)
    if setup not in ("no_ft", "empty"):
        for k in range(0, 200, 10):
            if setup == "ft_gap" and 60 <= k <= 140:
                continue  # a 90 ms hole around the anchor
            put_ft(ft, t0 + k * MS, [math.nan if setup == "nan" else 0.0] * 6)
    if setup not in ("no_arm", "empty"):
        for k in range(0, 200, 2):
            if setup == "arm_gap" and 80 <= k <= 130:
                continue
            put_arm(arm, t0 + k * MS, [0.1, 0, 0, 0, 0, 0])
    sync = Synchronizer(SyncConfig(), cam, ft, arm)
    obs = sync.tick(now=t0 + now_ms * MS)
    assert not obs.valid and obs.reason is reason
    assert obs.detail  # every invalid tick says why
    assert sync.stats()["invalid"][reason.value] == 1


def test_rig_without_force_torque() -> None:
    cam, _, arm = rings()
    put_frame(cam, 10 * S, 1)
    put_arm(arm, 10 * S, [0.1, 0, 0, 0, 0, 0])
    obs = Synchronizer(SyncConfig(), cam, None, arm).tick(now=10 * S + 10 * MS)
    assert obs.valid and obs.wrench is None and obs.tcp_pose is not None


def test_overwritten_anchor_is_reported_not_returned() -> None:
    cam, ft, arm = rings(cam_cap=2)
    put_frame(cam, 10 * S, 1)
    for k in range(10):
        put_ft(ft, 10 * S + (k - 5) * MS, [0] * 6)
        put_arm(arm, 10 * S + (k - 5) * MS, [0] * 6)
    sync = Synchronizer(SyncConfig(), cam, ft, arm)

    # Two more frames land between the tick's metadata read and its image copy.
    original_read = cam.read

    def read_and_lap(index, fields=None, out=None):
        if fields is not None and "rgb" in fields:
            put_frame(cam, 10 * S + MS, 2)
            put_frame(cam, 10 * S + 2 * MS, 3)
        return original_read(index, fields, out)

    cam.read = read_and_lap  # type: ignore[method-assign]
    obs = sync.tick(now=10 * S + 20 * MS)
    assert obs.reason is InvalidReason.OVERWRITTEN and "overwritten" in obs.detail


# ---------------------------------------------------------------------- synthetic streams
@dataclass(frozen=True)
class Spec:
    rate_hz: float
    jitter_s: float  # capture-time jitter (std)
    latency_s: float  # minimum capture -> receive latency
    latency_jitter_s: float  # mean of the exponential extra latency
    drop_p: float
    reorder_p: float  # probability that a sample arrives after its successor
    dup_p: float = 0.0  # camera only: the same hardware frame delivered twice
    drift_ppm: float = 0.0
    offset_s: float = 0.0


HOST_T0_S = 1000.0  # host monotonic time at the start of a scenario


def make_stream(rng: np.random.Generator, spec: Spec, duration_s: float):
    """(receive_ns, true capture_ns, device_s, sample number) tuples in arrival order."""
    period = 1.0 / spec.rate_hz
    nominal = np.arange(rng.uniform(0, period), duration_s, period)
    capture = np.sort(nominal + rng.normal(0.0, spec.jitter_s, nominal.size)) + HOST_T0_S
    number = np.arange(capture.size)
    keep = rng.random(capture.size) >= spec.drop_p
    capture, number = capture[keep], number[keep]
    receive = capture + spec.latency_s + rng.exponential(spec.latency_jitter_s, capture.size)
    for i in np.flatnonzero(rng.random(capture.size - 1) < spec.reorder_p):
        receive[i], receive[i + 1] = receive[i + 1] + 1e-6, receive[i]
    device = (capture - HOST_T0_S - spec.offset_s) / (1.0 + spec.drift_ppm * 1e-6) + 100.0
    events = [
        (int(r * S), int(c * S), float(d), int(n))
        for r, c, d, n in zip(receive, capture, device, number, strict=True)
    ]
    for i in np.flatnonzero(rng.random(len(events)) < spec.dup_p):
        r, c, d, n = events[i]
        events.append((r + int(3 * MS), c, d, n))  # the driver hands the same frame again
    return events


def simulate(
    seed: int, cam: Spec, ft: Spec, arm: Spec, config: SyncConfig, duration_s: float = 3.0
):
    rng = np.random.default_rng(seed)
    rings_ = {
        "camera": RingBuffer.create(camera_schema(W, H), capacity_for(cam.rate_hz, 0.5)),
        "ft": RingBuffer.create(ft_schema(), capacity_for(ft.rate_hz, 0.5)),
        "arm": RingBuffer.create(arm_schema(), capacity_for(arm.rate_hz, 0.5)),
    }
    # Drivers subtract their calibrated fixed latency so mapped times are capture times.
    mappers = {
        "camera": ClockMapper(ClockMapperConfig(latency_s=cam.latency_s)),
        "arm": ClockMapper(ClockMapperConfig(latency_s=arm.latency_s)),
    }
    events = sorted(
        (r, kind, c, d, n)
        for kind, spec in (("camera", cam), ("ft", ft), ("arm", arm))
        for r, c, d, n in make_stream(rng, spec, duration_s)
    )
    inserted: dict[str, list[int]] = {k: [] for k in rings_}
    sync = Synchronizer(config, rings_["camera"], rings_["ft"], rings_["arm"])
    ticks = [int((HOST_T0_S + 0.5 + 0.1 * k) * S) for k in range(int((duration_s - 0.5) * 10))]
    results, e = [], 0
    for t_tick in ticks:
        while e < len(events) and events[e][0] <= t_tick:
            r, kind, _, d, n = events[e]
            e += 1
            # F/T has no device clock: the driver stamps receive time minus its known latency.
            t_cap = mappers[kind].update(d, r) if kind in mappers else r - int(ft.latency_s * S)
            ring = rings_[kind]
            if kind == "camera":
                ok = ring.put(
                    t_cap,
                    r,
                    d,
                    rgb=np.zeros((H, W, 3), np.uint8),
                    depth_m=np.zeros((H, W), np.float32),
                    frame_number=n,
                )
            elif kind == "ft":
                ok = ring.put(
                    t_cap,
                    r,
                    d,
                    wrench=np.full(6, float(n)),
                    finger_wrenches=np.zeros((2, 6)),
                    gripper_width_m=0.05,
                )
            else:
                ok = ring.put(
                    t_cap,
                    r,
                    d,
                    joint_positions_rad=np.full(6, float(n)),
                    joint_velocities_rad_s=np.zeros(6),
                    tcp_pose=np.full(6, 0.1),
                    tcp_speed=np.zeros(6),
                    robot_mode=7,
                    safety_mode=1,
                    runtime_state=2,
                )
            if ok:
                inserted[kind].append(t_cap)
        results.append(sync.tick(now=t_tick, copy_images=False))
    return results, rings_, inserted, sync


def brute_force_gap(times: list[int], lo_index: int, anchor: int, thr_ns: int, mode: str):
    window = times[lo_index:]
    t0 = max((t for t in window if t <= anchor), default=None)
    t1 = min((t for t in window if t > anchor), default=None)
    return choose(anchor, t0, t1, thr_ns, mode)


spec_st = {
    "camera": st.builds(
        Spec,
        rate_hz=st.floats(15, 60),
        jitter_s=st.floats(0, 0.002),
        latency_s=st.floats(0.005, 0.04),
        latency_jitter_s=st.floats(0, 0.005),
        drop_p=st.floats(0, 0.3),
        reorder_p=st.floats(0, 0.1),
        dup_p=st.floats(0, 0.3),
        drift_ppm=st.floats(-150, 150),
        offset_s=st.floats(-1e3, 1e3),
    ),
    "ft": st.builds(
        Spec,
        rate_hz=st.floats(50, 250),
        jitter_s=st.floats(0, 0.003),
        latency_s=st.floats(0.001, 0.01),
        latency_jitter_s=st.floats(0, 0.003),
        drop_p=st.floats(0, 0.3),
        reorder_p=st.floats(0, 0.1),
    ),
    "arm": st.builds(
        Spec,
        rate_hz=st.sampled_from([125.0, 500.0]),
        jitter_s=st.floats(0, 0.001),
        latency_s=st.floats(0.0005, 0.005),
        latency_jitter_s=st.floats(0, 0.002),
        drop_p=st.floats(0, 0.3),
        reorder_p=st.floats(0, 0.1),
        drift_ppm=st.floats(-150, 150),
        offset_s=st.floats(-1e3, 1e3),
    ),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    cam=spec_st["camera"],
    ft=spec_st["ft"],
    arm=spec_st["arm"],
    thr_ms=st.floats(2, 20),
    mode=st.sampled_from(["linear", "nearest"]),
)
def test_never_emits_beyond_threshold_nor_twice(seed, cam, ft, arm, thr_ms, mode) -> None:
    config = SyncConfig(
        ft_threshold_s=thr_ms / 1e3, arm_threshold_s=thr_ms / 1e3, interpolation=mode
    )
    results, rings_, inserted, sync = simulate(seed, cam, ft, arm, config)
    emitted = [o.frame_number for o in results if o.valid]
    assert len(emitted) == len(set(emitted)), "a frame was emitted twice"
    thr_ns = round(config.ft_threshold_s * S)
    for obs in results:
        if not obs.valid:
            assert obs.reason is not InvalidReason.OK and obs.detail
            continue
        assert obs.age_s <= config.max_age_s + 1e-9
        assert obs.ft_gap_s * S <= thr_ns + 1 and obs.arm_gap_s * S <= thr_ns + 1
    # The last tick's lookups agree with a brute-force scan of what was inserted.
    last = results[-1]
    if last.valid:
        for kind, gap in (("ft", last.ft_gap_s), ("arm", last.arm_gap_s)):
            ring = rings_[kind]
            c = brute_force_gap(
                inserted[kind], ring.oldest_readable(), last.t_anchor_ns, thr_ns, mode
            )
            assert c.use in ("before", "after", "both") and c.gap_ns == round(gap * S)
    stats = sync.stats()
    assert stats["ticks"] == len(results)
    assert stats["valid"] + sum(stats["invalid"].values()) == len(results)


healthy = {
    "camera": st.builds(
        Spec,
        rate_hz=st.floats(30, 60),
        jitter_s=st.floats(0, 0.0003),
        latency_s=st.floats(0.010, 0.013),
        latency_jitter_s=st.floats(0, 0.0003),
        drop_p=st.just(0.0),
        reorder_p=st.just(0.0),
        drift_ppm=st.floats(-100, 100),
        offset_s=st.floats(-1e3, 1e3),
    ),
    "ft": st.builds(
        Spec,
        rate_hz=st.floats(100, 250),
        jitter_s=st.floats(0, 0.0003),
        latency_s=st.floats(0.001, 0.002),
        latency_jitter_s=st.floats(0, 0.0003),
        drop_p=st.just(0.0),
        reorder_p=st.just(0.0),
    ),
    "arm": st.builds(
        Spec,
        rate_hz=st.sampled_from([125.0, 500.0]),
        jitter_s=st.floats(0, 0.0002),
        latency_s=st.floats(0.0005, 0.003),
        latency_jitter_s=st.floats(0, 0.0005),
        drop_p=st.just(0.0),
        reorder_p=st.just(0.0),
        drift_ppm=st.floats(-100, 100),
        offset_s=st.floats(-1e3, 1e3),
    ),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    cam=healthy["camera"],
    ft=healthy["ft"],
    arm=healthy["arm"],
    mode=st.sampled_from(["linear", "nearest"]),
)
def test_healthy_streams_always_give_a_valid_tick(seed, cam, ft, arm, mode) -> None:
    """Healthy: no loss or reordering, small jitter, camera >= 30 Hz with period + latency below
    max_age, F/T >= 100 Hz arriving faster than frames, arm at 125 or 500 Hz."""
    results, *_ = simulate(seed, cam, ft, arm, SyncConfig(interpolation=mode))
    bad = [(o.reason.value, o.detail) for o in results if not o.valid]
    assert not bad, bad[:3]
