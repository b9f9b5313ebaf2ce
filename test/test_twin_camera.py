"""D435i frame path of the twin: shared-memory ring -> pyrealsense2 software device, and .db3."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import time

import numpy as np
import pytest

from demuse_ros.twin.camera_feed import (
    CameraFeedConfig,
    FrameReader,
    FrameWriter,
    HardwareClock,
    SoftwareCamera,
    depth_to_z16,
    play_db3,
    record_db3,
)

try:
    import pyrealsense2 as rs
except ImportError:  # no "sim" extra: the transport tests still run
    rs = None

needs_rs = pytest.mark.skipif(rs is None, reason="needs pyrealsense2 2.59 (pip install '.[sim]')")
PERIOD_NS = 33_333_333
T0_NS = 5_000_000_000


def make_frame(n: int, height: int = 480, width: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic content of frame ``n``: RGB uint8 and depth float32 metres."""
    yy, xx = np.mgrid[0:height, 0:width]
    depth = (0.3 + 0.0005 * n + 0.0011 * xx + 0.0007 * yy).astype(np.float32)
    depth[::37, ::41] = 0.0  # no return
    depth[min(5, height - 1), min(5, width - 1)] = np.nan  # invalid too
    color = np.stack([(xx + n) % 256, (yy + 2 * n) % 256, (xx + yy + 3 * n) % 256], axis=-1)
    return color.astype(np.uint8), depth


def _consumer(name: str, cfg: CameraFeedConfig, n_pairs: int, progress, results) -> None:
    """The camera-driver process: ring -> SoftwareCamera -> (depth, color) pairs."""
    out = []
    reader = FrameReader(name, cfg.width, cfg.height)
    cam = SoftwareCamera(cfg)
    try:
        deadline = time.monotonic() + 30.0
        while len(out) < n_pairs and time.monotonic() < deadline:
            for record in reader.wait_new(0.05):
                cam.push(record)
                progress.value += 1
            while (pair := cam.poll()) is not None:
                dfr, cfr = pair
                n = dfr.get_frame_number()
                color, depth = make_frame(n, cfg.height, cfg.width)
                z16 = np.asanyarray(dfr.get_data())
                truth = np.nan_to_num(depth, nan=0.0)
                probes = [(0, 0), (5, 5), (10, 10), (639, 479), (321, 240), (100, 400)]
                dist_err = max(abs(dfr.get_distance(x, y) - float(truth[y, x])) for x, y in probes)
                md = rs.frame_metadata_value
                out.append(
                    {
                        "n_depth": n,
                        "n_color": cfr.get_frame_number(),
                        "ts_depth": dfr.get_timestamp(),
                        "ts_color": cfr.get_timestamp(),
                        "domains": {
                            str(dfr.get_frame_timestamp_domain()),
                            str(cfr.get_frame_timestamp_domain()),
                        },
                        "units": dfr.get_units(),
                        "dist_err": dist_err,
                        "z16_equal": bool(np.array_equal(z16, depth_to_z16(depth))),
                        "z16_mm_err": float(np.max(np.abs(z16 * 0.001 - truth))),
                        "color_equal": bool(np.array_equal(np.asanyarray(cfr.get_data()), color)),
                        "counter": [f.get_frame_metadata(md.frame_counter) for f in pair],
                        "frame_ts_us": dfr.get_frame_metadata(md.frame_timestamp),
                        "arrival": all(f.supports_frame_metadata(md.time_of_arrival) for f in pair),
                    }
                )
    finally:
        merged = cam.merged_pairs
        cam.close()
        reader.close()
        results.put((out, merged))


@needs_rs
def test_frames_reach_a_software_camera_in_another_process() -> None:
    cfg = CameraFeedConfig(ring_capacity=6)
    ctx = mp.get_context("spawn")
    progress, results = ctx.Value("q", 0), ctx.Queue()
    # 1..8 normal, 9..10 frozen (repeat 8), 11..14 normal, 15..16 dropped, 17..20 normal.
    expected = [*range(1, 9), 8, 8, *range(11, 15), *range(17, 21)]
    with FrameWriter(cfg) as writer:
        proc = ctx.Process(
            target=_consumer, args=(writer.name, cfg, len(expected), progress, results)
        )
        proc.start()
        try:
            published = 0
            for i in range(1, 21):
                if i == 9:
                    writer.freeze(2)
                if i == 15:
                    writer.drop(2)
                deadline = time.monotonic() + 20.0  # back-pressure: never lap the reader
                while published - progress.value >= cfg.ring_capacity - 2:
                    assert time.monotonic() < deadline and proc.is_alive()
                    time.sleep(0.002)
                color, depth = make_frame(i)
                if writer.write(color, depth, T0_NS + i * PERIOD_NS) is not None:
                    published += 1
            assert writer.dropped == 2 and writer.frozen == 2
            pairs, merged = results.get(timeout=30.0)
            proc.join(10.0)
        finally:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    assert proc.exitcode == 0
    # The syncer itself pairs depth and color (actual_fps metadata set); only the
    # first push and the two repeated frames come out single-stream.
    assert merged == 3
    assert [p["n_depth"] for p in pairs] == expected
    assert all(p["n_color"] == p["n_depth"] for p in pairs)
    assert all(p["ts_color"] == p["ts_depth"] for p in pairs)
    assert all(p["domains"] == {"timestamp_domain.hardware_clock"} for p in pairs)
    assert all(p["units"] == pytest.approx(0.001) for p in pairs)
    assert all(p["dist_err"] <= 0.001 and p["z16_mm_err"] <= 0.0005 + 1e-6 for p in pairs)
    assert all(p["z16_equal"] and p["color_equal"] for p in pairs)
    assert all(p["counter"] == [p["n_depth"]] * 2 and p["arrival"] for p in pairs)
    assert all(p["frame_ts_us"] == round(p["ts_depth"] * 1000) for p in pairs)
    # Timestamps: strictly increasing where the frame number increases, equal on a freeze,
    # on the camera's drifting clock (75 ppm fast), with a gap where frames were dropped.
    period_ms = PERIOD_NS * 1e-6 * (1 + 75e-6)
    for prev, cur in itertools.pairwise(pairs):
        steps = cur["n_depth"] - prev["n_depth"]
        assert steps >= 0
        assert cur["ts_depth"] - prev["ts_depth"] == pytest.approx(steps * period_ms, abs=1e-6)
        if steps:
            assert cur["ts_depth"] > prev["ts_depth"]
    assert pairs[0]["ts_depth"] == pytest.approx(cfg.hw_clock_offset_ms)


def test_writer_faults_are_visible_in_the_ring() -> None:
    cfg = CameraFeedConfig(width=8, height=4, ring_capacity=16)
    with FrameWriter(cfg, shared=False) as writer:
        for i in range(1, 9):
            if i == 3:
                writer.freeze(2)
            if i == 6:
                writer.drop(1)
            color, depth = make_frame(i, 4, 8)
            writer.write(
                color, depth, T0_NS + i * PERIOD_NS, t_receive_ns=T0_NS + i * PERIOD_NS + 7
            )
        ring = writer.ring
        records = [ring.read(k) for k in range(ring.count)]
    assert [r["frame_number"] for r in records] == [1, 2, 2, 2, 5, 7, 8]
    np.testing.assert_array_equal(records[2]["color"], records[1]["color"])
    assert records[2]["hw_timestamp_ms"] == records[1]["hw_timestamp_ms"]
    assert records[2]["t_receive_ns"] > records[1]["t_receive_ns"]  # re-sent later
    assert records[5]["device_time_s"] == pytest.approx(records[5]["hw_timestamp_ms"] / 1000)


def test_reader_skips_frames_it_was_lapped_on() -> None:
    cfg = CameraFeedConfig(width=8, height=4, ring_capacity=4)
    with FrameWriter(cfg) as writer, FrameReader(writer.name, 8, 4) as reader:
        for i in range(1, 11):
            writer.write(*make_frame(i, 4, 8), T0_NS + i * PERIOD_NS)
        got = [r["frame_number"] for r in reader.read_new()]
        assert got == list(range(8, 11)) and reader.skipped == 7
        writer.write(*make_frame(11, 4, 8), T0_NS + 11 * PERIOD_NS)
        assert [r["frame_number"] for r in reader.wait_new(0.1)] == [11]
        assert reader.wait_new(0.01) == []


def test_depth_conversion_and_clock_drift() -> None:
    depth = np.array([0.0, -1.0, np.nan, np.inf, 0.0004, 0.0006, 1.2345, 65.535, 65.6])
    assert depth_to_z16(depth).tolist() == [0, 0, 0, 0, 0, 1, 1234, 65535, 0]
    clock = HardwareClock(offset_ms=1000.0, drift_ppm=75.0)
    assert clock.device_ms(T0_NS) == 1000.0
    # 100 s of host time read 100.0075 s on the camera: 75 µs/s.
    assert clock.device_ms(T0_NS + 100_000_000_000) == pytest.approx(1000.0 + 100_007.5)


@needs_rs
def test_software_camera_looks_like_a_d435i() -> None:
    cfg = CameraFeedConfig(serial_number="111122223333", fx=600.5, ppx=318.0)
    with SoftwareCamera(cfg) as cam:
        dev = cam.device
        assert dev.get_info(rs.camera_info.name) == "Intel RealSense D435I"
        assert dev.get_info(rs.camera_info.serial_number) == "111122223333"
        assert dev.get_info(rs.camera_info.firmware_version) == cfg.firmware_version
        assert cam.depth_sensor.as_depth_sensor().get_depth_scale() == pytest.approx(0.001)
        dprof = cam.depth_sensor.get_stream_profiles()[0].as_video_stream_profile()
        cprof = cam.color_sensor.get_stream_profiles()[0].as_video_stream_profile()
        assert (dprof.format(), cprof.format()) == (rs.format.z16, rs.format.rgb8)
        assert (cprof.width(), cprof.height(), cprof.fps()) == (640, 480, 30)
        intr = cprof.get_intrinsics()
        assert (intr.fx, intr.ppx, intr.model) == (600.5, 318.0, rs.distortion.brown_conrady)
        ext = dprof.get_extrinsics_to(cprof)
        assert (
            list(ext.rotation) == [1, 0, 0, 0, 1, 0, 0, 0, 1] and list(ext.translation) == [0] * 3
        )
        assert cam.poll() is None and cam.wait(0.05) is None  # nothing pushed yet


@needs_rs
def test_db3_record_then_pipeline_playback(tmp_path) -> None:
    cfg = CameraFeedConfig()
    with FrameWriter(cfg, shared=False) as writer:
        for i in range(1, 9):
            writer.write(*make_frame(i), T0_NS + i * PERIOD_NS)
        records = [writer.ring.read(k) for k in range(writer.ring.count)]
    path = tmp_path / "twin.db3"
    assert record_db3(path, records, cfg) == 8
    played = play_db3(path)
    assert [p["frame_number"] for p in played] == [r["frame_number"] for r in records]
    for p, r in zip(played, records, strict=True):
        assert p["timestamp_ms"] == pytest.approx(r["hw_timestamp_ms"], abs=1e-3)
        assert p["domain"] == rs.timestamp_domain.hardware_clock
        assert p["depth_units"] == pytest.approx(0.001)
        np.testing.assert_array_equal(p["depth_z16"], r["depth_z16"])
        np.testing.assert_array_equal(p["color"], r["color"])
    with pytest.raises(ValueError, match="db3"):
        record_db3(tmp_path / "twin.bag", records, cfg)


def test_scale_camera_keeps_the_view_and_passes_the_cross_check() -> None:
    from demuse_ros.twin.sim_config import SimConfig, scale_camera

    base = SimConfig()
    small = scale_camera(base, 0.25)  # SimConfig's __post_init__ re-checks the intrinsics
    assert (small.camera.width, small.camera.height) == (160, 120)
    # the same field of view: focal length over width is unchanged
    assert small.plant.camera.fx / small.plant.camera.width == pytest.approx(
        base.plant.camera.fx / base.plant.camera.width
    )
    assert small.camera.ppx == pytest.approx(base.camera.ppx / 4)
    with pytest.raises(ValueError, match="camera scale"):
        scale_camera(base, 2.0)
