"""RealSense D435i driver: RGB + colour-aligned depth (metres) into a shared-memory ring.

Runs inside a :class:`~demuse_ros.drivers.process.DriverProcess`; the pyrealsense2
objects are created in that child. Sources (``CameraDriverConfig.source``):

* ``"twin"``: the digital twin's :class:`~demuse_ros.twin.camera_feed.FrameWriter`
  ring, read by a :class:`~demuse_ros.twin.camera_feed.FrameReader` and pushed
  through a :class:`~demuse_ros.twin.camera_feed.SoftwareCamera` (a
  ``software_device`` + ``rs.syncer``), so the record path sees real
  ``rs.depth_frame``/``rs.video_frame`` objects. The twin renders depth already
  aligned to colour (identity extrinsics), so no ``rs.align`` runs here.
* ``"realsense"``: ``rs.pipeline`` on the camera with ``serial_number`` (the first
  camera found when empty), depth Z16 + colour RGB8 at ``width``×``height``@``fps``,
  ``global_time_enabled`` on, ``rs.align(rs.stream.color)``, optional librealsense
  filters on the aligned depth. Device loss (no frames for ``frame_timeout_s`` or
  an SDK error) -> reconnect with exponential backoff until ``reconnect_timeout_s``,
  then the driver fails (the parent sees why).
* ``"playback"``: the same pipeline code on a ``.db3`` recording
  (``enable_device_from_file``, non-real-time, no repeat): the offline test of the
  pipeline path. The driver idles (``connected`` = 0) when the file ends.

Record path (every source): frame number -> duplicates (number not above the last
written: not written, counted) and drops (gaps, counted); RGB uint8 (H, W, 3);
depth Z16 × ``depth_frame.get_units()`` -> float32 metres (0 = no return); optional
median filter (``median_kernel``; 3 uses a 19-exchange sorting network, ~5 ms at
640×480, other sizes ``scipy.ndimage.median_filter``, ~45 ms at size 3, so too slow
for 30 Hz at full size); the ring stamps:

* ``device_time_s``: the camera's timestamp, ``get_timestamp()`` / 1000. For the
  ``global_time`` domain that value is already host wall-clock, so the hardware
  ``frame_timestamp`` metadata (µs, device clock) is stored instead when present.
* ``t_receive_ns``: host monotonic time when the driver got the frame pair.
* ``t_capture_ns``: per timestamp domain:

  - ``hardware_clock``: :class:`~demuse_ros.timing.clock_mapper.ClockMapper`
    (offset + drift fit of receive time vs. device time, minus ``latency_s``).
  - ``global_time`` (librealsense already maps the device clock to the host wall
    clock) and ``system_time`` (host wall clock at arrival): wall-clock ms converted
    to host monotonic with the current ``monotonic - realtime`` offset; ``latency_s``
    is subtracted for ``system_time`` only (it stamps arrival, not capture). A step of
    that offset above ``clock_mapper.jump_threshold_s`` (NTP step) counts as a clock jump.

  Always clamped to at most ``t_receive_ns``.

Counters (``STATS``): ``frames`` written, ``fps`` achieved (last ~1 s of written
frames), ``duplicates``, ``dropped``, ``clock_jumps``, ``latency_ms_p50``
(median of ``t_receive - t_capture`` over the last 90 frames: the mapped latency,
which with ``latency_s`` = 0 is the jitter above the minimum, *not* a measured
capture-to-host latency), ``connected`` (1/0), ``reconnects``, ``out_of_order``
(records the ring refused: capture time went backwards, e.g. after a clock jump),
``process_ms_p50`` (frame pair in hand -> record in ring) and, for the twin only,
``twin_latency_ms_p50`` (the writer's capture stamp -> record in ring: the honest
end-to-end latency through the shared ring, software device and driver), and the
colour stream's intrinsics as the device reports them (``intrinsics_*``: the ROS
camera node announces them on ``camera_info``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from demuse_ros.config.schema import ConfigError, param, validate_fields
from demuse_ros.drivers.process import Driver
from demuse_ros.sync.streams import camera_schema
from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.clock_mapper import ClockMapper, ClockMapperConfig
from demuse_ros.transport.schema import RecordSchema, capacity_for

#: The colour stream's intrinsics as the device reports them (px; Brown-Conrady k1, k2,
#: p1, p2, k3), published as gauges so the parent (the ROS camera node) can announce them.
INTRINSICS_STATS = (
    "intrinsics_width",
    "intrinsics_height",
    "intrinsics_fx",
    "intrinsics_fy",
    "intrinsics_ppx",
    "intrinsics_ppy",
    *(f"intrinsics_d{i}" for i in range(5)),
)

#: librealsense post-processing filters the hardware path can apply (in this order).
RS_FILTERS = ("spatial", "temporal", "hole_filling")

# Paeth's 19 compare-exchanges: index 4 holds the median of 9 afterwards.
_MEDIAN9 = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)  # fmt: skip


def _rs() -> Any:
    import pyrealsense2

    return pyrealsense2


@dataclass(frozen=True)
class CameraDriverConfig:
    """The D435i driver: source, streams, depth filtering, timing and reconnection."""

    source: str = param("twin", doc="Frame source.", choices=("twin", "realsense", "playback"))
    serial_number: str = param(
        "", doc="Camera serial number (realsense); empty = the first camera found."
    )
    width: int = param(640, doc="Image width of both streams.", unit="px", range=(1, 4096))
    height: int = param(480, doc="Image height of both streams.", unit="px", range=(1, 4096))
    fps: int = param(30, doc="Frame rate of both streams.", unit="Hz", range=(1, 300))
    frame_ring: str = param("", doc="Shared-memory name of the twin's frame ring (twin).")
    playback_path: str = param("", doc="Recording to play back, a .db3 file (playback).")
    median_kernel: int = param(
        0, doc="Depth median filter size (odd); 0 or 1 = off.", unit="px", range=(0, 15)
    )
    rs_filters: tuple[str, ...] = param(
        (), doc="librealsense depth filters (realsense/playback), in order.", choices=RS_FILTERS
    )
    latency_s: float = param(
        0.0,
        doc="Known capture-to-receive latency subtracted from mapped capture times.",
        unit="s",
        range=(0.0, 1.0),
    )
    frame_timeout_s: float = param(
        1.0, doc="No frames for this long = device lost.", unit="s", range=(0.05, 60.0)
    )
    reconnect_timeout_s: float = param(
        10.0,
        doc="Give up (driver fails) after this long without a device.",
        unit="s",
        range=(0.1, 3600.0),
    )
    reconnect_backoff_s: float = param(
        0.2, doc="First reconnect delay; doubles per attempt.", unit="s", range=(0.01, 60.0)
    )
    reconnect_backoff_max_s: float = param(
        2.0, doc="Longest reconnect delay.", unit="s", range=(0.01, 600.0)
    )
    read_budget_s: float = param(
        0.5, doc="How far behind a ring reader may fall (sizes the ring).", unit="s",
        range=(0.05, 60.0),
    )  # fmt: skip
    clock_mapper: ClockMapperConfig = param(
        default_factory=ClockMapperConfig,
        doc="Device-to-host clock fit (its latency_s is replaced by this latency_s).",
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        k = self.median_kernel
        if k > 1 and k % 2 == 0:
            raise ConfigError(f"= {k} must be odd (or 0/1 = off)", key="median_kernel")
        if self.source == "twin" and not self.frame_ring:
            raise ConfigError("is empty; set the twin FrameWriter's ring name", key="frame_ring")
        if self.source == "playback" and not self.playback_path.endswith(".db3"):
            raise ConfigError(
                f"= {self.playback_path!r} is not a .db3 file (pyrealsense2 2.59 plays .db3)",
                key="playback_path",
            )
        if len(set(self.rs_filters)) != len(self.rs_filters):
            raise ConfigError(f"= {self.rs_filters!r} repeats a filter", key="rs_filters")
        if self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise ConfigError(
                f"= {self.reconnect_backoff_max_s!r} must be >= reconnect_backoff_s",
                key="reconnect_backoff_max_s",
            )

    def mapper_config(self) -> ClockMapperConfig:
        return dataclasses.replace(self.clock_mapper, latency_s=self.latency_s)


def median_filter_depth(depth: np.ndarray, kernel: int) -> np.ndarray:
    """Median filter of a (H, W) depth image, edges replicated; ``kernel`` <= 1: unchanged."""
    if kernel <= 1:
        return depth
    if kernel == 3:
        h, w = depth.shape
        p = np.pad(depth, 1, mode="edge")
        v = [p[i : i + h, j : j + w].copy() for i in range(3) for j in range(3)]
        for a, b in _MEDIAN9:
            lo = np.minimum(v[a], v[b])
            np.maximum(v[a], v[b], out=v[b])
            v[a] = lo
        return v[4]
    from scipy import ndimage

    return ndimage.median_filter(depth, size=kernel, mode="nearest")


class _Lost(Exception):
    """The device stopped delivering frames (reconnect)."""


class _Rolling:
    def __init__(self, n: int) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=n)

    def add(self, v: float) -> float:
        self.values.append(v)
        return float(np.median(self.values))


class CameraDriver(Driver):
    """D435i (or its twin) -> :func:`~demuse_ros.sync.streams.camera_schema` records."""

    STATS: ClassVar[tuple[str, ...]] = (
        "frames",
        "fps",
        "duplicates",
        "dropped",
        "clock_jumps",
        "latency_ms_p50",
        "connected",
        "reconnects",
        "out_of_order",
        "process_ms_p50",
        "twin_latency_ms_p50",
        *INTRINSICS_STATS,
    )

    @classmethod
    def schema(cls, config: CameraDriverConfig) -> RecordSchema:
        return camera_schema(config.width, config.height)

    @classmethod
    def capacity(cls, config: CameraDriverConfig) -> int:
        return capacity_for(config.fps, config.read_budget_s)

    def __init__(
        self, config: CameraDriverConfig, ring: Any, stats: Any, commands: Any = None
    ) -> None:
        super().__init__(config, ring, stats, commands)
        self.mapper = ClockMapper(config.mapper_config(), name="camera")
        self._last_n: int | None = None
        self._recv: collections.deque[int] = collections.deque(maxlen=max(2, config.fps))
        self._lat = _Rolling(90)
        self._proc = _Rolling(90)
        self._twin_lat = _Rolling(90)
        self._wall_offset_ns: int | None = None
        self._ready: Any = None
        self.twin_capture_ns: dict[int, int] = {}  # twin: frame number -> writer's stamp
        self._intrinsics_known = False

    # ------------------------------------------------------------------ loop
    def run(self, stop: Any, ready: Any) -> None:
        self._ready = ready
        self.set("connected", 0.0)
        serve = self._serve_twin if self.config.source == "twin" else self._serve_pipeline
        lost_since = time.monotonic()
        backoff = self.config.reconnect_backoff_s
        first = True
        while not stop.is_set():
            try:
                if not first:
                    self.count("reconnects")
                first = False
                self._intrinsics_known = False  # a new device (or stream) may differ
                serve(stop)  # returns only on stop or end of playback
                if self.config.source == "playback":
                    stop.wait()  # the recording ended: idle until stopped
                return
            except _Lost as exc:
                reason = str(exc)
            except RuntimeError as exc:  # pyrealsense2 errors are RuntimeError subclasses
                reason = f"{type(exc).__name__}: {exc}"
            except FileNotFoundError as exc:  # twin ring not there (yet)
                reason = f"{type(exc).__name__}: {exc}"
            if self.stats_value("connected"):
                lost_since = time.monotonic()
                backoff = self.config.reconnect_backoff_s
            self.set("connected", 0.0)
            if time.monotonic() - lost_since > self.config.reconnect_timeout_s:
                raise RuntimeError(
                    f"camera ({self.config.source}): no device for "
                    f"{self.config.reconnect_timeout_s} s; last error: {reason}"
                )
            if stop.wait(backoff):
                return
            backoff = min(2.0 * backoff, self.config.reconnect_backoff_max_s)

    def stats_value(self, name: str) -> float:
        return float(self._stats[self._index[name]])

    def _serve_twin(self, stop: Any) -> None:
        from demuse_ros.twin.camera_feed import CameraFeedConfig, FrameReader, SoftwareCamera

        cfg = self.config
        reader = FrameReader(cfg.frame_ring, cfg.width, cfg.height)
        cam = None
        try:
            feed = CameraFeedConfig(width=cfg.width, height=cfg.height, fps=cfg.fps)
            cam = SoftwareCamera(feed)
            last_frame = time.monotonic()
            while not stop.is_set():
                for record in reader.wait_new(0.02, poll_s=0.0005):
                    n = int(record["frame_number"])
                    self.twin_capture_ns.setdefault(n, int(record["t_capture_ns"]))
                    cam.push(record)
                while (pair := cam.poll()) is not None:
                    last_frame = time.monotonic()
                    self.handle(*pair, now_ns())
                while len(self.twin_capture_ns) > 64:
                    self.twin_capture_ns.pop(next(iter(self.twin_capture_ns)))
                if time.monotonic() - last_frame > cfg.frame_timeout_s:
                    self.set("connected", 0.0)  # the twin paused: stay attached, not an error
        finally:
            if cam is not None:
                cam.close()
            reader.close()

    def _serve_pipeline(self, stop: Any) -> None:
        rs = _rs()
        cfg = self.config
        pipe = rs.pipeline()
        rcfg = rs.config()
        playback = cfg.source == "playback"
        if playback:
            rcfg.enable_device_from_file(cfg.playback_path, repeat_playback=False)
            # Non-real-time before start (see twin.camera_feed.play_db3).
            rcfg.resolve(pipe).get_device().as_playback().set_real_time(False)
        else:
            if cfg.serial_number:
                rcfg.enable_device(cfg.serial_number)
            rcfg.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, cfg.fps)
            rcfg.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
        profile = pipe.start(rcfg)
        try:
            device = profile.get_device()
            if playback:
                pb = device.as_playback()
                pb.set_real_time(False)
            else:
                pb = None
                for sensor in device.query_sensors():
                    if sensor.supports(rs.option.global_time_enabled):
                        sensor.set_option(rs.option.global_time_enabled, 1.0)
            align = rs.align(rs.stream.color)
            filters = [
                {
                    "spatial": rs.spatial_filter,
                    "temporal": rs.temporal_filter,
                    "hole_filling": rs.hole_filling_filter,
                }[name]()
                for name in cfg.rs_filters
            ]
            timeout_ms = max(1, round(cfg.frame_timeout_s * 1000))
            while not stop.is_set():
                ok, fs = pipe.try_wait_for_frames(timeout_ms)
                t_recv = now_ns()
                if not ok:
                    if pb is not None and pb.current_status() == rs.playback_status.stopped:
                        self.set("connected", 0.0)
                        return
                    raise _Lost(f"no frames for {cfg.frame_timeout_s} s")
                fs = align.process(fs)
                dfr, cfr = fs.get_depth_frame(), fs.get_color_frame()
                if not dfr or not cfr:
                    continue
                for f in filters:
                    dfr = f.process(dfr).as_depth_frame()
                self.handle(dfr, cfr, t_recv)
        finally:
            pipe.stop()

    # ------------------------------------------------------------------ record path
    def handle(self, dfr: Any, cfr: Any, t_receive_ns: int) -> bool:
        """One (depth, color) pair -> one ring record. Returns whether it was written."""
        rs = _rs()
        cfg = self.config
        self.set("connected", 1.0)
        n = int(dfr.get_frame_number())
        last = self._last_n
        if last is not None and n <= last:
            self.count("duplicates")
            return False
        if last is not None and n > last + 1:
            self.count("dropped", n - last - 1)
        ts_ms = float(dfr.get_timestamp())
        domain = dfr.get_frame_timestamp_domain()
        t_capture_ns, device_s = self._capture_time(rs, dfr, domain, ts_ms, t_receive_ns)
        if not self._intrinsics_known:
            self._publish_intrinsics(cfr)
        rgb = np.asanyarray(cfr.get_data())
        if cfr.get_profile().format() == rs.format.bgr8:
            rgb = rgb[..., ::-1]
        z16 = np.asanyarray(dfr.get_data())
        if rgb.shape != (cfg.height, cfg.width, 3) or z16.shape != (cfg.height, cfg.width):
            raise RuntimeError(
                f"frame {n}: got rgb {rgb.shape} / depth {z16.shape}, configured "
                f"{cfg.width}x{cfg.height}"
            )
        depth = z16.astype(np.float32) * np.float32(dfr.get_units())
        depth = median_filter_depth(depth, cfg.median_kernel)
        self._last_n = n
        if not self.ring.put(
            t_capture_ns, t_receive_ns, device_s, rgb=rgb, depth_m=depth, frame_number=n
        ):
            self.count("out_of_order")
            return False
        t_done = now_ns()
        self.count("frames")
        self._recv.append(t_receive_ns)
        if len(self._recv) >= 2 and self._recv[-1] > self._recv[0]:
            self.set("fps", (len(self._recv) - 1) * 1e9 / (self._recv[-1] - self._recv[0]))
        self.set("latency_ms_p50", self._lat.add((t_receive_ns - t_capture_ns) * 1e-6))
        self.set("process_ms_p50", self._proc.add((t_done - t_receive_ns) * 1e-6))
        t_twin = self.twin_capture_ns.get(n)
        if t_twin is not None:
            self.set("twin_latency_ms_p50", self._twin_lat.add((t_done - t_twin) * 1e-6))
        if self._ready is not None:
            self._ready.set()
        return True

    def _publish_intrinsics(self, cfr: Any) -> None:
        """The colour profile's intrinsics into the stats (once per connection)."""
        try:
            intr = cfr.get_profile().as_video_stream_profile().get_intrinsics()
            values = (intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy, *intr.coeffs)
        except (RuntimeError, AttributeError):  # a profile without intrinsics: none announced
            values = (0.0,) * len(INTRINSICS_STATS)
        for name, value in zip(INTRINSICS_STATS, values, strict=False):
            self.set(name, float(value))
        self._intrinsics_known = True

    def _capture_time(
        self, rs: Any, dfr: Any, domain: Any, ts_ms: float, t_receive_ns: int
    ) -> tuple[int, float]:
        cfg = self.config
        if domain == rs.timestamp_domain.hardware_clock:
            jumps = self.mapper.stats()["jumps"]
            t_capture_ns = self.mapper.update(ts_ms * 1e-3, t_receive_ns)
            if self.mapper.stats()["jumps"] != jumps:
                self.count("clock_jumps")
            return min(t_capture_ns, t_receive_ns), ts_ms * 1e-3
        # Host wall-clock ms (global_time: device clock mapped by librealsense).
        offset_ns = time.monotonic_ns() - time.time_ns()
        prev = self._wall_offset_ns
        threshold_ns = cfg.clock_mapper.jump_threshold_s * 1e9
        if prev is not None and abs(offset_ns - prev) > threshold_ns:
            self.count("clock_jumps")
        self._wall_offset_ns = offset_ns
        t_capture_ns = round(ts_ms * 1e6) + offset_ns
        if domain == rs.timestamp_domain.system_time:
            t_capture_ns -= round(cfg.latency_s * 1e9)
        device_s = ts_ms * 1e-3
        md = rs.frame_metadata_value.frame_timestamp
        if domain == rs.timestamp_domain.global_time and dfr.supports_frame_metadata(md):
            device_s = dfr.get_frame_metadata(md) * 1e-6
        if not math.isfinite(device_s):
            device_s = math.nan
        return min(t_capture_ns, t_receive_ns), device_s
