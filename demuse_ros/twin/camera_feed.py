"""RealSense D435i frame path of the twin: shared-memory frames in, pyrealsense2 frames out.

* **Transport** (twin -> camera-driver process): :class:`FrameWriter` takes the
  plant's RGB (H, W, 3) uint8 and depth (H, W) float32 metres, converts depth to
  Z16 (0 = no return), stamps it with the camera's *hardware clock* (offset +
  ``hw_clock_drift_ppm`` against the host, the D435i's ~75 µs/s) and puts it in a
  shared-memory ring (:func:`camera_frame_schema`); :class:`FrameReader`
  attaches by name. Faults live on the writer: :meth:`FrameWriter.freeze`
  republishes the last frame (same number, stamp, pixels), :meth:`FrameWriter.drop`
  loses frames (the frame counter still advances, so a gap shows).
* :class:`SoftwareCamera` (in the driver process): a ``software_device`` that
  looks like a D435i, fed by :meth:`~SoftwareCamera.push`, read through an
  ``rs.syncer`` as ``(depth_frame, color_frame)`` pairs. (``add_to(ctx)`` +
  ``rs.pipeline`` does not work in 2.59.1.)
* :func:`record_db3` / :func:`play_db3`: ``rs.recorder`` to a ROS 2 ``.db3`` and
  back through ``rs.pipeline``: the offline route for pipeline-based code.

pyrealsense2 2.59.1 traps handled here (``hardware.md`` §3 plus what the tests
found): the syncer estimates a stream's rate as frame_number / timestamp unless
``actual_fps`` metadata (fps × 1000) is set, and with a hardware clock that does
not start at 0 the estimate is so low that depth and color are never paired;
the first push (and every repeated frame) still comes out as single-stream
framesets, paired here by frame number; ``depth_units`` is set on every depth
frame (``get_units()`` is 0 without it when the sensor has no ``depth_units``
option); playback must be made non-real-time *before* ``pipeline.start``.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.transport.ring_buffer import OverwrittenError, RingBuffer
from demuse_ros.transport.schema import RecordSchema


def _rs() -> Any:
    """pyrealsense2, imported on first use: the twin side (writer) does not need it."""
    import pyrealsense2

    return pyrealsense2


class _Closing:
    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class CameraFeedConfig:
    """The emulated D435i: streams, intrinsics, identity and hardware clock."""

    width: int = param(640, doc="Image width of both streams.", unit="px", range=(1, 4096))
    height: int = param(480, doc="Image height of both streams.", unit="px", range=(1, 4096))
    fps: int = param(30, doc="Frame rate both profiles announce.", unit="Hz", range=(1, 300))
    fx: float = param(615.0, doc="Focal length x (color intrinsics).", unit="px", range=(1, None))
    fy: float = param(615.0, doc="Focal length y (color intrinsics).", unit="px", range=(1, None))
    ppx: float = param(320.0, doc="Principal point x.", unit="px", range=(0, None))
    ppy: float = param(240.0, doc="Principal point y.", unit="px", range=(0, None))
    depth_units_m: float = param(0.001, doc="Metres per Z16 unit.", unit="m", range=(1e-6, 0.01))
    name: str = param("Intel RealSense D435I", doc="camera_info name.")
    serial_number: str = param("843112070000", doc="camera_info serial_number.")
    firmware_version: str = param("5.16.0.1", doc="camera_info firmware_version.")
    hw_clock_offset_ms: float = param(
        86_400.0, doc="Hardware clock reading at the first frame.", unit="ms", range=(0, None)
    )
    hw_clock_drift_ppm: float = param(
        75.0,
        doc="Hardware clock rate error vs. the host (+ = fast).",
        unit="ppm",
        range=(-1000, 1000),
    )
    exposure_us: float = param(
        8_000.0, doc="Exposure reported in metadata.", unit="us", range=(1, 1e6)
    )
    ring_capacity: int = param(8, doc="Frames the shared-memory ring holds.", range=(2, 1024))
    ring_name: str = param(
        "",
        doc="Shared-memory name of the frame ring the camera driver reads (its "
        "camera.frame_ring); empty: a fresh name per run. The ROS sim launch sets one, so "
        "camera_node, a separate process, knows it.",
    )

    def __post_init__(self) -> None:
        validate_fields(self)


def camera_frame_schema(width: int, height: int) -> RecordSchema:
    """Ring record of one camera frame (the stamps come with every record).

    ``t_capture_ns`` is the host-monotonic capture time, ``device_time_s`` the
    hardware-clock stamp in seconds (``hw_timestamp_ms`` / 1000).
    """
    return RecordSchema(
        {
            "color": ((height, width, 3), np.uint8),  # RGB
            "depth_z16": ((height, width), np.uint16),  # depth units, 0 = invalid
            "frame_number": ((), np.int64),
            "hw_timestamp_ms": ((), np.float64),
            "exposure_us": ((), np.float32),
        },
        name="camera",
    )


def depth_to_z16(depth_m: np.ndarray, depth_units_m: float = 0.001) -> np.ndarray:
    """float metres -> uint16 depth units, rounded; non-finite, <= 0 or too far -> 0."""
    d = np.asarray(depth_m, dtype=np.float64) / depth_units_m
    z = np.rint(np.where(np.isfinite(d), d, 0.0))
    z[(z <= 0) | (z > 65535)] = 0
    return z.astype(np.uint16)


@dataclass
class HardwareClock:
    """The camera's free-running clock: ``offset + (t - t_first) * (1 + drift)``, in ms."""

    offset_ms: float
    drift_ppm: float
    t_ref_ns: int | None = None

    def device_ms(self, t_host_ns: int) -> float:
        if self.t_ref_ns is None:
            self.t_ref_ns = int(t_host_ns)
        return self.offset_ms + (int(t_host_ns) - self.t_ref_ns) * 1e-6 * (
            1.0 + self.drift_ppm * 1e-6
        )


class FrameWriter(_Closing):
    """Twin side: publishes rendered frames into a shared-memory ring.

    Args:
        config: the camera; size, depth units, clock and ring capacity.
        name: shared-memory name (random when None); readers attach with it.
        shared: False keeps the ring in process memory (single-process tests).
    """

    def __init__(
        self, config: CameraFeedConfig | None = None, *, name: str | None = None, shared=True
    ):
        self.config = cfg = config or CameraFeedConfig()
        self.schema = camera_frame_schema(cfg.width, cfg.height)
        self.ring = RingBuffer.create(self.schema, cfg.ring_capacity, shared=shared, name=name)
        self.clock = HardwareClock(cfg.hw_clock_offset_ms, cfg.hw_clock_drift_ppm)
        self.frame_counter = 0  # the camera's counter: advances on every write()
        self.dropped = 0
        self.frozen = 0
        self._freeze_left = 0
        self._drop_left = 0
        self._last: dict[str, Any] | None = None

    @property
    def name(self) -> str | None:
        return self.ring.name

    def freeze(self, n_frames: int) -> None:
        """The next ``n_frames`` writes republish the last frame (number, stamp, pixels)."""
        self._freeze_left = max(0, int(n_frames))

    def drop(self, n_frames: int) -> None:
        """The next ``n_frames`` writes are lost (their frame numbers are skipped)."""
        self._drop_left = max(0, int(n_frames))

    def write(
        self,
        color: np.ndarray,
        depth_m: np.ndarray,
        t_capture_ns: int,
        t_receive_ns: int | None = None,
        exposure_us: float | None = None,
    ) -> int | None:
        """Publish one frame; returns the frame number published, None if dropped."""
        cfg = self.config
        if color.shape != (cfg.height, cfg.width, 3) or depth_m.shape != (cfg.height, cfg.width):
            raise ValueError(
                f"frame shapes {color.shape}/{depth_m.shape} do not match the "
                f"{cfg.width}x{cfg.height} camera"
            )
        self.frame_counter += 1
        hw_ms = self.clock.device_ms(t_capture_ns)
        t_receive_ns = t_capture_ns if t_receive_ns is None else t_receive_ns
        if self._drop_left > 0:
            self._drop_left -= 1
            self.dropped += 1
            return None
        if self._freeze_left > 0 and self._last is not None:
            self._freeze_left -= 1
            self.frozen += 1
            last = self._last
            self.ring.put(last["t_capture_ns"], t_receive_ns, last["device_time_s"], **last["f"])
            return int(last["f"]["frame_number"])
        fields = {
            "color": color,
            "depth_z16": depth_to_z16(depth_m, cfg.depth_units_m),
            "frame_number": self.frame_counter,
            "hw_timestamp_ms": hw_ms,
            "exposure_us": cfg.exposure_us if exposure_us is None else exposure_us,
        }
        if not self.ring.put(t_capture_ns, t_receive_ns, hw_ms * 1e-3, **fields):
            raise ValueError(f"frame {self.frame_counter}: capture time went backwards")
        self._last = {"t_capture_ns": t_capture_ns, "device_time_s": hw_ms * 1e-3, "f": fields}
        return self.frame_counter

    def close(self) -> None:
        self.ring.close()


class FrameReader(_Closing):
    """Driver side: attaches to a :class:`FrameWriter`'s ring and returns new records."""

    def __init__(self, name: str, width: int = 640, height: int = 480) -> None:
        self.ring = RingBuffer.attach(name, camera_frame_schema(width, height))
        self._next = 0
        self.skipped = 0  # records overwritten before this reader got to them

    def read_new(self) -> list[dict[str, Any]]:
        """Every record written since the last call, oldest first (lapped ones skipped)."""
        out = []
        while self._next < self.ring.count:
            oldest = self.ring.oldest_readable()
            if self._next < oldest:
                self.skipped += oldest - self._next
                self._next = oldest
            try:
                out.append(self.ring.read(self._next))
            except OverwrittenError:
                self.skipped += 1
            self._next += 1
        return out

    def wait_new(self, timeout_s: float, poll_s: float = 0.001) -> list[dict[str, Any]]:
        """:meth:`read_new`, waiting up to ``timeout_s`` for at least one record."""
        deadline = time.monotonic() + timeout_s
        while not (records := self.read_new()) and time.monotonic() < deadline:
            time.sleep(poll_s)
        return records

    def close(self) -> None:
        self.ring.close()


@dataclass
class _Device:
    dev: Any
    depth_sensor: Any
    color_sensor: Any
    depth_profile: Any
    color_profile: Any


def _build_device(cfg: CameraFeedConfig) -> _Device:
    """A software_device with a D435i's identity, depth and color sensors and 1 profile each."""
    rs = _rs()
    dev = rs.software_device()
    for info, value in (
        (rs.camera_info.name, cfg.name),
        (rs.camera_info.serial_number, cfg.serial_number),
        (rs.camera_info.firmware_version, cfg.firmware_version),
        (rs.camera_info.product_line, "D400"),
        (rs.camera_info.product_id, "0B3A"),
    ):
        dev.register_info(info, value)
    ds = dev.add_sensor("Stereo Module")
    cs = dev.add_sensor("RGB Camera")
    ds.add_read_only_option(rs.option.depth_units, cfg.depth_units_m)
    intr = rs.intrinsics()
    intr.width, intr.height = cfg.width, cfg.height
    intr.fx, intr.fy, intr.ppx, intr.ppy = cfg.fx, cfg.fy, cfg.ppx, cfg.ppy
    intr.model = rs.distortion.brown_conrady
    intr.coeffs = [0.0] * 5
    profiles = []
    for sensor, stream, uid, bpp, fmt in (
        (ds, rs.stream.depth, 0, 2, rs.format.z16),
        (cs, rs.stream.color, 1, 3, rs.format.rgb8),
    ):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = stream, 0, uid
        vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = cfg.width, cfg.height, cfg.fps, bpp, fmt
        vs.intrinsics = intr
        profiles.append(sensor.add_video_stream(vs, True))
    ext = rs.extrinsics()  # depth is rendered aligned to color: identity
    ext.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    ext.translation = [0.0, 0.0, 0.0]
    profiles[0].register_extrinsics_to(profiles[1], ext)
    dev.create_matcher(rs.matchers.default)
    return _Device(dev, ds, cs, profiles[0], profiles[1])


def _inject(d: _Device, cfg: CameraFeedConfig, record: dict[str, Any]) -> None:
    """Push one record's depth and color frames into the software sensors."""
    rs = _rs()
    md = rs.frame_metadata_value
    depth, color = record["depth_z16"], record["color"]
    if depth.shape != (cfg.height, cfg.width) or color.shape != (cfg.height, cfg.width, 3):
        raise ValueError(f"record shapes {depth.shape}/{color.shape} do not match the camera")
    n = int(record["frame_number"])
    ts_ms = float(record["hw_timestamp_ms"])
    exposure = float(record.get("exposure_us", cfg.exposure_us))
    arrival_ms = int(time.time() * 1000)
    for sensor, profile, pixels, bpp in (
        (d.depth_sensor, d.depth_profile, depth, 2),
        (d.color_sensor, d.color_profile, color, 3),
    ):
        for key, value in (
            (md.frame_counter, n),
            (md.frame_timestamp, round(ts_ms * 1000.0)),
            (md.sensor_timestamp, round(ts_ms * 1000.0 - exposure / 2)),
            (md.time_of_arrival, arrival_ms),
            (md.actual_fps, cfg.fps * 1000),
            (md.actual_exposure, round(exposure)),
        ):
            sensor.set_metadata(key, int(value))
        f = rs.software_video_frame()
        f.pixels = np.ascontiguousarray(pixels)  # pyrealsense2 copies the buffer
        f.stride, f.bpp = cfg.width * bpp, bpp
        f.timestamp = ts_ms
        f.domain = rs.timestamp_domain.hardware_clock
        f.frame_number = n
        f.profile = profile.as_video_stream_profile()
        if bpp == 2:
            f.depth_units = cfg.depth_units_m  # on every depth frame
        sensor.on_video_frame(f)


class SoftwareCamera(_Closing):
    """A D435i look-alike ``software_device`` in the consumer process, read through a syncer."""

    def __init__(self, config: CameraFeedConfig | None = None, *, max_ready: int = 16) -> None:
        self.config = config or CameraFeedConfig()
        self._d = d = _build_device(self.config)
        self.device, self.depth_sensor, self.color_sensor = d.dev, d.depth_sensor, d.color_sensor
        self.syncer = _rs().syncer(8)
        self._pending: tuple[dict, dict] = ({}, {})  # unpaired depth / color by frame number
        self._ready: collections.deque = collections.deque(maxlen=max_ready)
        self.pushed = 0
        self.merged_pairs = 0  # pairs assembled here from single-stream framesets
        self._started = False
        for sensor, profile in (
            (self._d.depth_sensor, self._d.depth_profile),
            (self._d.color_sensor, self._d.color_profile),
        ):
            sensor.open(profile)
            sensor.start(self.syncer)
        self._started = True

    def push(self, record: dict[str, Any]) -> None:
        """Inject one ring record (depth + color) as hardware-clock frames."""
        _inject(self._d, self.config, record)
        self.pushed += 1

    def push_from(self, reader: FrameReader) -> int:
        """Push every new record of ``reader``; returns how many."""
        records = reader.read_new()
        for record in records:
            self.push(record)
        return len(records)

    def _take(self, fs: Any) -> None:
        dfr, cfr = fs.get_depth_frame(), fs.get_color_frame()
        if dfr and cfr and dfr.get_frame_number() == cfr.get_frame_number():
            self._ready.append((dfr, cfr))
            return
        for index, frame in ((0, dfr), (1, cfr)):
            if not frame:
                continue
            n = frame.get_frame_number()
            other = self._pending[1 - index]
            if n in other:
                pair = (frame, other.pop(n)) if index == 0 else (other.pop(n), frame)
                self._ready.append(pair)
                self.merged_pairs += 1
                continue
            mine = self._pending[index]
            mine[n] = frame
            while len(mine) > 4:  # a partner that never came
                mine.pop(next(iter(mine)))

    def poll(self) -> tuple[Any, Any] | None:
        """The oldest complete (depth_frame, color_frame) pair, or None (never blocks)."""
        while fs := self.syncer.poll_for_frames():
            self._take(fs)
        return self._ready.popleft() if self._ready else None

    def wait(self, timeout_s: float = 1.0) -> tuple[Any, Any] | None:
        """Like :meth:`poll`, waiting up to ``timeout_s`` (frames pushed from another thread)."""
        deadline = time.monotonic() + timeout_s
        while (pair := self.poll()) is None:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return None
            ok, fs = self.syncer.try_wait_for_frames(min(left_ms, 100))
            if ok:
                self._take(fs)
        return pair

    def close(self) -> None:
        """Stop and close the sensors; frames already returned stay valid."""
        if not self._started:
            return
        self._started = False
        self._pending[0].clear()
        self._pending[1].clear()
        for sensor in (self._d.depth_sensor, self._d.color_sensor):
            try:
                sensor.stop()
            finally:
                sensor.close()


def record_db3(path: str | Path, records: Any, config: CameraFeedConfig | None = None) -> int:
    """Write ring-style ``records`` (dicts) to a ROS 2 ``.db3`` via ``rs.recorder``.

    Overwrites ``path``. Returns the number of frame pairs written.
    """
    cfg = config or CameraFeedConfig()
    path = Path(path)
    if path.suffix != ".db3":
        raise ValueError(f"{path}: pyrealsense2 2.59 records only .db3 files")
    path.unlink(missing_ok=True)
    d = _build_device(cfg)
    recorder = _rs().recorder(str(path), d.dev)
    sensors = recorder.query_sensors()
    count = 0
    try:
        for sensor in sensors:
            sensor.open(sensor.get_stream_profiles()[0])
            sensor.start(lambda _frame: None)
        try:
            for record in records:
                _inject(d, cfg, record)
                count += 1
        finally:
            for sensor in sensors:
                sensor.stop()
                sensor.close()
    finally:
        del sensors, recorder  # the recorder writes the file out when it is destroyed
    return count


def play_db3(path: str | Path, *, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Read a ``.db3`` back through ``rs.pipeline`` (non-real-time, no repeat).

    Returns one dict per frameset: ``frame_number``, ``timestamp_ms``, ``domain``,
    ``depth_units``, ``depth_z16``, ``color`` (either image None if missing).
    """
    rs = _rs()
    pipe = rs.pipeline()
    cfg = rs.config()
    cfg.enable_device_from_file(str(path), repeat_playback=False)
    # Non-real-time before start (the pipeline starts the device resolve() made): set
    # after start, the first frames play in real time and the 1-deep queue loses some.
    cfg.resolve(pipe).get_device().as_playback().set_real_time(False)
    profile = pipe.start(cfg)
    out: list[dict[str, Any]] = []
    try:
        playback = profile.get_device().as_playback()
        playback.set_real_time(False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok, fs = pipe.try_wait_for_frames(100)
            if not ok:
                if playback.current_status() == rs.playback_status.stopped:
                    break
                continue
            dfr, cfr = fs.get_depth_frame(), fs.get_color_frame()
            first = dfr or cfr
            out.append(
                {
                    "frame_number": first.get_frame_number(),
                    "timestamp_ms": first.get_timestamp(),
                    "domain": first.get_frame_timestamp_domain(),
                    "depth_units": dfr.get_units() if dfr else None,
                    "depth_z16": np.asanyarray(dfr.get_data()).copy() if dfr else None,
                    "color": np.asanyarray(cfr.get_data()).copy() if cfr else None,
                }
            )
    finally:
        pipe.stop()
    return out
