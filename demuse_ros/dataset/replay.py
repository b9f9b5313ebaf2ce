"""Recorded episodes → training episodes, through the deployment synchronizer.

:func:`replay_episode` reads one MCAP episode (:mod:`demuse_ros.record`) and
plays its three device streams back into in-process rings *in the order they
arrived* (host receive time), then ticks the same
:class:`~demuse_ros.sync.synchronizer.Synchronizer` the runtime ticks, at the
same moments: on a camera frame's arrival, every ``1 / tick_hz`` (the runtime
re-phases its 10 Hz deadline onto the frames the same way). So a training
sample sees exactly the alignment, interpolation, thresholds and invalid-tick
rules the policy will see when it runs; ticks the synchronizer calls invalid
are skipped and counted by reason.

The action of tick ``k`` is what the arm was commanded to be at one tick after
the observation, ``t_anchor + 1 / tick_hz`` — the time the runtime gives a
chunk's first action. It is read from the recorded ``action_chunk`` waypoints
(the newest chunk sent before that time, interpolated: linear position,
slerped rotation) and ``action_chunk/gripper``. An episode without commanded
waypoints (a freedrive demonstration) uses the measured TCP pose and gripper
width at that time instead.

Images can be stored at the model's input size to keep a dataset in memory:
``image_size_px`` crops and resizes RGB with the model's own preprocessing
(``_resize_square``, so the trainer's later resize is the identity) and
``depth_grid`` area-pools depth to the model's latent grid (likewise).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.drivers.arm_path import interpolate_pose
from demuse_ros.model.data import Episode
from demuse_ros.runtime.policies import canonical_pose, observation_state
from demuse_ros.sync.streams import arm_schema, camera_schema, ft_schema
from demuse_ros.sync.synchronizer import SyncConfig, Synchronizer
from demuse_ros.transport.ring_buffer import RingBuffer

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
#: Arm fields the recorder does not write (controller mode codes): -1 = not recorded.
_UNRECORDED_ARM = {"robot_mode": -1, "safety_mode": -1, "runtime_state": -1}


@dataclass(frozen=True)
class ReplayConfig:
    """How episodes become training ticks."""

    tick_hz: float = param(10.0, doc="Control rate the policy runs at.", unit="Hz", range=(1, 100))
    tick_delay_s: float = param(
        0.001,
        doc="A tick happens this long after its camera frame arrived (the runtime wakes "
        "about 1 ms after a frame).",
        unit="s",
        range=(0.0, 0.1),
    )
    image_size_px: int = param(
        0, doc="Crop+resize RGB to this square size (0: keep full frames).", range=(0, 4096)
    )
    depth_grid: int = param(
        0, doc="Area-pool depth to this square grid (0: keep full frames).", range=(0, 4096)
    )
    task: int = param(
        0, doc="Task id the model is conditioned on for these episodes.", range=(0, 10_000)
    )
    sync: SyncConfig = field(default_factory=SyncConfig)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class ReplayStats:
    """What one replay saw: ticks, valid ones, invalid ones by reason, commanded chunks."""

    path: str
    task: str = ""
    ticks: int = 0
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    action_source: str = "action_chunk"
    records: dict[str, int] = field(default_factory=dict)


class CommandedPath:
    """The commanded TCP targets and gripper widths over time, from recorded chunks."""

    def __init__(self, chunks: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        #: (send time, waypoint times, values) sorted by send time
        self.chunks = sorted(chunks, key=lambda c: c[0])
        self._sent = np.array([c[0] for c in self.chunks], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.chunks)

    def at(self, t_ns: int) -> np.ndarray | None:
        """The value commanded at ``t_ns`` (None before the first chunk was sent).

        As the arm's servo plan does (:class:`~demuse_ros.drivers.arm_path.WaypointPlan`),
        the newest chunk sent before ``t_ns`` starts from the previous command's
        value at its send time and runs through its waypoints.
        """
        i = int(np.searchsorted(self._sent, t_ns, side="right")) - 1
        return None if i < 0 else self._value(i, int(t_ns))

    def _value(self, i: int, t_ns: int) -> np.ndarray:
        sent, times, values = self.chunks[i]
        if t_ns < times[0]:
            start = self._value(i - 1, sent) if i > 0 else values[0]
            times, values = np.r_[sent, times], np.vstack([start, values])
        if values.shape[1] == 6:
            return interpolate_pose(times, values, t_ns)[0]
        return np.array([np.interp(t_ns, times, values[:, 0])])


def _chunks(episode: Any, topic: str, key: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    if topic not in episode.topics:
        return []
    out = []
    for sample in episode.messages(topic):
        value = sample.value
        data = value[key] if key == "poses" else np.asarray(value[key], dtype=np.float64)
        out.append((sample.t_capture_ns, value["t_ns"], np.asarray(data, dtype=np.float64)))
    return out


def _fill(schema: Any, record: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    names = [f.name for f in schema.fields if f.name not in ("t_capture_ns", "t_receive_ns")]
    fields = {}
    for name in names:
        if name == "device_time_s":
            continue
        if name in record:
            fields[name] = record[name]
        elif name in defaults:
            fields[name] = defaults[name]
        else:
            raise ValueError(
                f"the recorded {schema.name} stream has no {name!r}: the file is from an "
                "incompatible recorder version"
            )
    return fields


def _put(ring: RingBuffer, record: dict[str, Any], defaults: dict[str, Any]) -> None:
    ring.put(
        int(record["t_capture_ns"]),
        int(record["t_receive_ns"]),
        float(record.get("device_time_s", math.nan)),
        **_fill(ring.schema, record, defaults),
    )


def _pool(depth: np.ndarray, grid: int) -> np.ndarray:
    """The model's depth preprocessing (centred square, area pool) down to ``grid``²."""
    import torch
    import torch.nn.functional as F

    from demuse_ros.model.policy import _center_square

    d = torch.as_tensor(_center_square(depth))[None, None]
    return F.adaptive_avg_pool2d(d, grid)[0, 0].numpy()


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    import torch

    from demuse_ros.model.policy import _resize_square

    return _resize_square(torch.as_tensor(rgb)[None], size)[0].numpy()


def replay_episode(
    path: str | os.PathLike[str], config: ReplayConfig | None = None
) -> tuple[Episode, ReplayStats]:
    """One episode file → an aligned :class:`~demuse_ros.model.data.Episode` (module docstring).

    Raises:
        demuse_ros.record.reader.EpisodeError: the file is missing, not an episode,
            truncated (run ``demuse record --recover``) or lacks a stream.
        ValueError: the episode has no valid tick at all.
    """
    from demuse_ros.record.reader import open_episode

    cfg = config or ReplayConfig()
    stats = ReplayStats(path=str(path))
    period_ns = round(NS_PER_S / cfg.tick_hz)
    with open_episode(path) as ep:
        stats.task = str(ep.metadata.get("task", ""))
        poses = CommandedPath(_chunks(ep, "action_chunk", "poses"))
        widths = CommandedPath(_chunks(ep, "action_chunk/gripper", "positions"))
        stats.chunks = len(poses)
        ft_records = list(ep.records("ft"))
        arm_records = list(ep.records("arm"))
        stats.records = {"ft": len(ft_records), "arm": len(arm_records)}
        camera_iter = ep.records("camera")
        first = next(camera_iter, None)
        if first is None:
            raise ValueError(f"{path}: the episode has no camera frame")
        h, w = first["rgb"].shape[:2]
        rings = {
            "camera": RingBuffer.create(camera_schema(w, h), 8),
            "ft": RingBuffer.create(ft_schema(), 1024),
            "arm": RingBuffer.create(arm_schema(), 4096),
        }
        try:
            episode = _replay(
                cfg, stats, rings, first, camera_iter, ft_records, arm_records, period_ns
            )
        finally:
            for ring in rings.values():
                ring.close()
    rgb, depth, wrench, state, t_anchor = episode
    if not len(rgb):
        raise ValueError(
            f"{path}: no valid tick in {stats.ticks} ({stats.invalid}); the synchronizer's "
            "thresholds (sync.*) refuse every observation of this recording"
        )
    actions = _actions(np.asarray(t_anchor) + period_ns, poses, widths, arm_records, ft_records)
    if not len(poses):
        stats.action_source = "measured (no commanded waypoints)"
    return (
        Episode(
            rgb=np.stack(rgb),
            depth_m=np.stack(depth).astype(np.float32),
            wrench=np.stack(wrench),
            state=np.stack(state),
            actions=actions,
            task=cfg.task,
        ),
        stats,
    )


def _replay(cfg, stats, rings, first, camera_iter, ft_records, arm_records, period_ns):
    """Feed the rings in arrival order and tick on frames, ``period_ns`` apart."""
    sync = Synchronizer(cfg.sync, rings["camera"], rings["ft"], rings["arm"])
    delay = round(cfg.tick_delay_s * NS_PER_S)
    # F/T and arm records in arrival order (the rings take them in capture order; a
    # record arriving out of capture order is rejected by the ring, as live).
    small = sorted(
        [(r["t_receive_ns"], "ft", r) for r in ft_records]
        + [(r["t_receive_ns"], "arm", r) for r in arm_records],
        key=lambda x: x[0],
    )
    j = 0
    rgb, depth, wrench, state, t_anchor = [], [], [], [], []
    last_anchor = None
    half_frame = period_ns // 6  # a 30 Hz frame period is a third of a 10 Hz tick
    for frame in _chain(first, camera_iter):
        t_tick = int(frame["t_receive_ns"]) + delay
        while j < len(small) and small[j][0] <= t_tick:
            _, name, record = small[j]
            _put(rings[name], record, _UNRECORDED_ARM)
            j += 1
        _put(rings["camera"], frame, {})
        if last_anchor is not None and frame["t_capture_ns"] < last_anchor + period_ns - half_frame:
            continue
        obs = sync.tick(t_tick)
        stats.ticks += 1
        last_anchor = int(frame["t_capture_ns"])  # the 10 Hz grid goes on, valid or not
        if not obs.valid:
            reason = obs.reason.value
            stats.invalid[reason] = stats.invalid.get(reason, 0) + 1
            continue
        stats.valid += 1
        t_anchor.append(obs.t_anchor_ns)
        rgb.append(_resize(obs.rgb, cfg.image_size_px) if cfg.image_size_px else obs.rgb)
        depth.append(_pool(obs.depth_m, cfg.depth_grid) if cfg.depth_grid else obs.depth_m)
        wrench.append(np.asarray(obs.wrench, dtype=np.float64))
        state.append(observation_state(obs))
    return rgb, depth, wrench, state, t_anchor


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def _actions(t_ns, poses, widths, arm_records, ft_records) -> np.ndarray:
    """Commanded TCP target + gripper width at each time (measured where none commanded)."""
    arm_t = np.array([r["t_capture_ns"] for r in arm_records], dtype=np.int64)
    arm_pose = np.array([r["tcp_pose"] for r in arm_records])
    ft_t = np.array([r["t_capture_ns"] for r in ft_records], dtype=np.int64)
    ft_w = np.array([r["gripper_width_m"] for r in ft_records], dtype=np.float64)
    out = np.empty((len(t_ns), 7))
    for k, t in enumerate(t_ns):
        pose = poses.at(int(t))
        if pose is None:
            pose = interpolate_pose(arm_t, arm_pose, int(t))[0]
        width = widths.at(int(t))
        out[k, :6] = pose
        out[k, 6] = width[0] if width is not None else np.interp(t, ft_t, ft_w)
    return canonical_pose(out)  # the state's rotation representation


def episode_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Episode files named directly or found (``*.mcap``) in folders, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.mcap"))
            if not found:
                raise FileNotFoundError(
                    f"no episode (*.mcap) in {p} (an unfinished *.mcap.part needs "
                    "`demuse record --recover` first)"
                )
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    if not out:
        raise FileNotFoundError("no episode paths given")
    return out


def load_episodes(
    paths: Iterable[str | os.PathLike[str]],
    config: ReplayConfig | None = None,
    *,
    successful_only: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[Episode], list[ReplayStats]]:
    """Every episode under ``paths`` (files or folders), replayed (:func:`replay_episode`).

    ``successful_only`` keeps episodes whose metadata marks them successful.
    ``cache_dir`` keeps each replayed episode as ``.npz``, keyed by the file's
    path, size and modification time and by the replay config, so a second
    training run skips the replay (a changed file or config replays again).
    """
    from demuse_ros.record.reader import open_episode

    episodes, stats = [], []
    for path in episode_files(paths):
        if successful_only:
            with open_episode(path) as ep:
                if ep.metadata.get("success") is not True:
                    log.info("%s: not marked successful, skipped", path)
                    continue
        cached = _cache_path(cache_dir, path, config) if cache_dir else None
        if cached is not None and cached.is_file():
            episode, s = _load_cached(cached)
        else:
            episode, s = replay_episode(path, config)
            if cached is not None:
                _save_cached(cached, episode, s)
        episodes.append(episode)
        stats.append(s)
    return episodes, stats


def default_cache_dir() -> Path:
    """``$DEMUSE_CACHE_DIR/replay`` (default ``~/.cache/demuse_ros/replay``)."""
    root = os.environ.get("DEMUSE_CACHE_DIR", str(Path.home() / ".cache" / "demuse_ros"))
    return Path(root) / "replay"


def _cache_path(cache_dir: Any, path: Path, config: ReplayConfig | None) -> Path:
    import hashlib
    import json

    from demuse_ros.config import to_dict

    st = Path(path).stat()
    key = json.dumps(
        [str(Path(path).resolve()), st.st_size, st.st_mtime_ns, to_dict(config or ReplayConfig())],
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{Path(path).stem}-{digest}.npz"


def _save_cached(cached: Path, episode: Episode, stats: ReplayStats) -> None:
    import dataclasses
    import json

    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        rgb=episode.rgb,
        depth_m=episode.depth_m,
        wrench=episode.wrench,
        state=episode.state,
        actions=episode.actions,
        task=np.int64(episode.task),
        stats=np.array(json.dumps(dataclasses.asdict(stats))),
    )
    os.replace(tmp, cached)


def _load_cached(cached: Path) -> tuple[Episode, ReplayStats]:
    import json

    with np.load(cached, allow_pickle=False) as z:
        episode = Episode(
            rgb=z["rgb"],
            depth_m=z["depth_m"],
            wrench=z["wrench"],
            state=z["state"],
            actions=z["actions"],
            task=int(z["task"]),
        )
        stats = ReplayStats(**json.loads(str(z["stats"])))
    return episode, stats


__all__ = [
    "CommandedPath",
    "ReplayConfig",
    "ReplayStats",
    "default_cache_dir",
    "episode_files",
    "load_episodes",
    "replay_episode",
]
