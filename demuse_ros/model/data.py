"""Training data: the sample/episode interface, a synthetic generator, normalization statistics.

Numpy only. The recorder (a later issue) plugs in by producing :class:`Episode`
objects (one demonstration at the 10 Hz control rate, as the synchronizer aligns
it); :class:`EpisodeWindows` turns any sequence of episodes into the
:class:`PolicyDataset` the trainer reads. :func:`synthetic_episodes` makes
episodes of a small, fully determined task so training can be tested end to end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

NORMALIZATION_FORMAT = "demuse-normalization"
#: Version 2 added ``action_encoding``; version 1 files (absolute actions) still load.
NORMALIZATION_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: How a chunk's TCP positions (action dims 0..2) are represented to the model:
#: ``absolute`` base-frame targets, or ``delta``: each target minus the one before it,
#: the first minus the observed TCP position (state dims 0..2).
ACTION_ENCODINGS = ("absolute", "delta")
_POSITION = slice(0, 3)
_SCALE_FLOOR = 1e-6  # a constant dimension normalizes to 0 instead of dividing by 0


@dataclass
class PolicySample:
    """One training example at control tick k (SI units, raw: not normalized).

    ``rgb[0]`` is the frame at tick k, ``rgb[j]`` the frame at ``k + j·frame_stride``;
    ``actions[i]`` is the command issued at tick ``k + i``.
    """

    rgb: np.ndarray  # (1 + F, H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32 metres, at tick k
    wrench: np.ndarray  # (6·K,) N, N·m at ticks k-K+1 .. k, oldest first (K = wrench_history)
    state: np.ndarray  # (state_dim,) TCP xyz m, rotvec rad, gripper m at tick k
    actions: np.ndarray  # (H, action_dim) future commands
    task: int


class PolicyDataset(Protocol):
    """What the trainer reads: indexable :class:`PolicySample` objects."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> PolicySample: ...


@dataclass
class Episode:
    """One recorded demonstration at the control rate (what the recorder writes)."""

    rgb: np.ndarray  # (T, H, W, 3) uint8
    depth_m: np.ndarray  # (T, H, W) float32 metres
    wrench: np.ndarray  # (T, 6) N, N·m
    state: np.ndarray  # (T, state_dim)
    actions: np.ndarray  # (T, action_dim) command issued at each tick
    task: int

    def __post_init__(self) -> None:
        n = len(self.rgb)
        for name in ("depth_m", "wrench", "state", "actions"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Episode.{name} has {len(getattr(self, name))} ticks but rgb has {n}; "
                    "every stream must be aligned to the same ticks"
                )
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise ValueError(f"Episode.rgb must be (T, H, W, 3) uint8, got {self.rgb.shape}")


class EpisodeWindows:
    """A :class:`PolicyDataset` over episodes: one sample per tick of every episode.

    Past the end of an episode the last frame and the last action repeat (the arm
    holds), as in Diffusion Policy's sequence sampler; before its start the first
    wrench repeats (the runtime pads its wrench history the same way after a reset).
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        action_horizon: int,
        n_future_frames: int,
        frame_stride: int = 4,
        wrench_history: int = 1,
    ) -> None:
        if wrench_history < 1:
            raise ValueError(f"wrench_history = {wrench_history}: must be >= 1")
        if not episodes:
            raise ValueError("EpisodeWindows needs at least one episode")
        self.episodes = list(episodes)
        self.action_horizon, self.n_future_frames = action_horizon, n_future_frames
        self.frame_stride = frame_stride
        self.wrench_history = wrench_history
        self._index = [(e, k) for e, ep in enumerate(self.episodes) for k in range(len(ep.rgb))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> PolicySample:
        e, k = self._index[index]
        ep = self.episodes[e]
        last = len(ep.rgb) - 1
        frames = [min(k + j * self.frame_stride, last) for j in range(self.n_future_frames + 1)]
        steps = [min(k + i, last) for i in range(self.action_horizon)]
        past = [max(k - j, 0) for j in range(self.wrench_history - 1, -1, -1)]
        return PolicySample(
            rgb=ep.rgb[frames],
            depth_m=ep.depth_m[k],
            wrench=ep.wrench[past].reshape(-1),
            state=ep.state[k],
            actions=ep.actions[steps],
            task=ep.task,
        )


# ------------------------------------------------------------ synthetic data
def synthetic_episodes(
    n_episodes: int,
    image_size_px: int,
    n_tasks: int = 4,
    ticks: int = 24,
    seed: int = 0,
) -> list[Episode]:
    """Episodes of a small reach-and-press task whose actions follow from the observation.

    The TCP starts at a random point above a table and moves at ≤ 2 cm per tick
    toward its task's goal (one of ``n_tasks`` points), turning its yaw toward the
    task's yaw and closing the gripper on arrival; it presses 1 cm into the table
    there, so the wrench shows a contact force (1 N/mm). A top-down camera sees the
    TCP as a disc (brighter and larger the higher it is) and the goal as a square
    whose colour encodes the task; depth is the table at 1 m with the TCP in front.
    The command at each tick is the next state, so actions are a deterministic
    function of (state, task): a model can fit them exactly.
    """
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(n_tasks) / n_tasks
    goals = np.stack([0.15 * np.cos(angles), 0.15 * np.sin(angles), np.full(n_tasks, -0.01)], 1)
    yaws = np.linspace(-1.0, 1.0, n_tasks) if n_tasks > 1 else np.zeros(1)
    episodes = []
    for i in range(n_episodes):
        task = i % n_tasks
        pos = np.array([*rng.uniform(-0.2, 0.2, 2), rng.uniform(0.05, 0.15)])
        yaw, grip = 0.0, 0.08
        states = []
        for _ in range(ticks + 1):
            states.append([*pos, 0.0, 0.0, yaw, grip])
            pos = pos + np.clip(goals[task] - pos, -0.02, 0.02)
            yaw = yaw + np.clip(yaws[task] - yaw, -0.2, 0.2)
            near = np.linalg.norm(goals[task][:2] - pos[:2]) < 0.01
            grip = max(0.0, grip - 0.02) if near else grip
        states = np.asarray(states, dtype=np.float32)  # (T + 1, 7)
        rgb, depth, wrench = zip(
            *(_render(s, goals[task], task, n_tasks, image_size_px) for s in states[:-1]),
            strict=True,
        )
        episodes.append(
            Episode(
                rgb=np.stack(rgb),
                depth_m=np.stack(depth),
                wrench=np.stack(wrench),
                state=states[:-1],
                actions=states[1:],
                task=task,
            )
        )
    return episodes


def _render(
    state: np.ndarray, goal: np.ndarray, task: int, n_tasks: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-down camera over a ±0.25 m table: (RGB uint8, depth m, wrench N/N·m)."""
    px = (np.arange(size) + 0.5) / size * 0.5 - 0.25  # pixel centres in metres
    yy, xx = np.meshgrid(px, px, indexing="ij")
    img = np.empty((size, size, 3), dtype=np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 0.3 + xx, 0.3 + yy, 0.35  # table gradient
    hue = task / max(n_tasks, 1)
    square = (np.abs(xx - goal[0]) < 0.03) & (np.abs(yy - goal[1]) < 0.03)
    img[square] = (hue, 1.0 - hue, 0.9)
    height = max(float(state[2]), 0.0)
    radius = 0.025 + 0.15 * height
    disc = (xx - state[0]) ** 2 + (yy - state[1]) ** 2 < radius**2
    img[disc] = 0.5 + 3.0 * height
    rgb = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    depth = np.full((size, size), 1.0, dtype=np.float32)
    depth[disc] = 1.0 - max(float(state[2]), -0.01) - 0.05
    press_mm = max(0.0, -float(state[2])) * 1000.0
    wrench = np.array([0.0, 0.0, -press_mm, 0.0, 0.0, 0.0], dtype=np.float32)  # 1 N/mm
    return rgb, depth, wrench


#: data source name -> factory(n_episodes, image_size_px, n_tasks, ticks, seed) (STYLE §6).
DATASETS: dict[str, Callable[..., list[Episode]]] = {"synthetic": synthetic_episodes}


# ------------------------------------------------------------ normalization
@dataclass(frozen=True)
class Stat:
    """A per-dimension affine normalization ``(x − offset) / scale``.

    ``zscore``: offset = mean, scale = standard deviation (force/torque and depth,
    paper C.2). ``minmax``: offset = mid-range, scale = half-range, so the data spans
    [−1, 1] (state and actions, as in Diffusion Policy: a bounded target that DDIM's
    x0 clipping can rely on; Z-scores put rare gripper moves at 10+ σ).
    """

    kind: str
    offset: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def zscore(cls, values: np.ndarray) -> Stat:
        v = np.asarray(values, dtype=np.float64)
        return cls("zscore", tuple(v.mean(0).ravel().tolist()), tuple(v.std(0).ravel().tolist()))

    @classmethod
    def minmax(cls, values: np.ndarray) -> Stat:
        v = np.asarray(values, dtype=np.float64)
        lo, hi = v.min(0).ravel(), v.max(0).ravel()
        return cls("minmax", tuple(((hi + lo) / 2).tolist()), tuple(((hi - lo) / 2).tolist()))

    def normalize(self, x: Any) -> Any:
        """``(x − offset) / scale`` on the last axis; numpy or torch (same type back)."""
        offset, scale = self._arrays(x)
        return (x - offset) / scale

    def unnormalize(self, x: Any) -> Any:
        offset, scale = self._arrays(x)
        return x * scale + offset

    def _arrays(self, like: Any) -> tuple[Any, Any]:
        offset = np.asarray(self.offset, dtype=np.float32)
        scale = np.maximum(np.asarray(self.scale, dtype=np.float32), _SCALE_FLOOR)
        if isinstance(like, np.ndarray):
            return offset, scale
        return like.new_tensor(offset), like.new_tensor(scale)  # torch


#: Floor of a latent element's standard deviation in :func:`latent_stat`, relative to
#: the standard deviation of all latents (1 after the autoencoder's scaling).
LATENT_STD_FLOOR = 0.1


def latent_stat(latents: np.ndarray) -> Stat:
    """Per-element Z-score of ``(N, C, h, w)`` latents; each element's standard deviation
    is floored at :data:`LATENT_STD_FLOOR` × the overall one, so the nearly constant
    background is centred, not blown up into noise."""
    z = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    floor = LATENT_STD_FLOOR * float(z.std())
    return Stat("zscore", tuple(z.mean(0).tolist()), tuple(np.maximum(z.std(0), floor).tolist()))


@dataclass(frozen=True)
class NormalizationStats:
    """Normalization stored next to a checkpoint (DESIGN §5, paper C.2).

    State and actions are min-max normalized to [−1, 1]; wrench and depth are
    global Z-scores (``depth_m`` one scalar over all pixels, metres).
    ``rgb_latent`` (optional) is a per-element Z-score of the autoencoder's latents
    (``C·h·w`` values, see :func:`latent_stat`): the static scene becomes ~0 and what
    moves in it (a small button, the gripper) stands out instead of being a small
    perturbation of large, constant latents.

    ``action_encoding`` ``delta`` makes the TCP positions of a chunk steps (see
    :data:`ACTION_ENCODINGS`): a step is at most a few centimetres where the whole
    workspace is tens, so the same normalized error is several times fewer millimetres
    (pressing to a force band needs about one). :meth:`encode_actions` and
    :meth:`decode_actions` convert, given the observed state.
    """

    state: Stat
    actions: Stat
    wrench: Stat
    depth_m: Stat
    rgb_latent: Stat | None = None
    action_encoding: str = "absolute"

    def __post_init__(self) -> None:
        if self.action_encoding not in ACTION_ENCODINGS:
            raise ValueError(
                f"action_encoding {self.action_encoding!r}: choose one of "
                + ", ".join(ACTION_ENCODINGS)
            )

    @classmethod
    def compute(
        cls,
        dataset: PolicyDataset,
        max_samples: int = 4096,
        seed: int = 0,
        action_encoding: str = "absolute",
    ) -> NormalizationStats:
        """Statistics over up to ``max_samples`` samples (all when the dataset is smaller);
        the actions' in their ``action_encoding``."""
        n = len(dataset)
        if n == 0:
            raise ValueError("cannot compute normalization statistics of an empty dataset")
        idx = np.arange(n)
        if n > max_samples:
            idx = np.random.default_rng(seed).choice(n, max_samples, replace=False)
        samples = [dataset[int(i)] for i in idx]
        actions = np.stack([s.actions for s in samples]).astype(np.float64)  # (N, H, A)
        state = np.stack([s.state for s in samples]).astype(np.float64)
        if action_encoding == "delta":
            actions = _to_deltas(actions, state)
        depth = np.concatenate([s.depth_m.reshape(-1, 1) for s in samples])
        return cls(
            state=Stat.minmax(state),
            actions=Stat.minmax(actions.reshape(-1, actions.shape[-1])),  # every future action
            # per axis over every tick of the history: (6,), applied to each tick alike
            wrench=Stat.zscore(np.concatenate([s.wrench.reshape(-1, 6) for s in samples])),
            depth_m=Stat.zscore(depth),
            action_encoding=action_encoding,
        )

    def encode_actions(self, actions: Any, state: Any) -> Any:
        """Absolute ``(…, H, A)`` actions → the model's normalized targets, given the
        observed ``(…, S)`` state they follow (numpy or torch, same type back)."""
        if self.action_encoding == "delta":
            actions = _to_deltas(actions, state)
        return self.actions.normalize(actions)

    def decode_actions(self, x: Any, state: Any) -> Any:
        """The model's normalized ``(…, H, A)`` output → absolute actions, given the
        observed ``(…, S)`` state (unnormalized) the chunk starts from."""
        actions = self.actions.unnormalize(x)
        if self.action_encoding == "delta":
            actions = _from_deltas(actions, state)
        return actions

    def to_json(self) -> dict[str, Any]:
        body = {
            k: {"kind": s.kind, "offset": list(s.offset), "scale": list(s.scale)}
            for k, s in self._items()
        }
        return {
            "format": NORMALIZATION_FORMAT,
            "version": NORMALIZATION_VERSION,
            "action_encoding": self.action_encoding,
            **body,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<dict>") -> NormalizationStats:
        if data.get("format") != NORMALIZATION_FORMAT:
            raise ValueError(f"{source}: not a {NORMALIZATION_FORMAT} file")
        if data.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"{source}: normalization version {data.get('version')!r}; this code reads "
                f"versions {', '.join(map(str, _READABLE_VERSIONS))}"
            )
        try:
            stats = {
                k: Stat(
                    str(data[k]["kind"]),
                    tuple(map(float, data[k]["offset"])),
                    tuple(map(float, data[k]["scale"])),
                )
                for k in ("state", "actions", "wrench", "depth_m", "rgb_latent")
                if k in data
            }
            return cls(**stats, action_encoding=str(data.get("action_encoding", "absolute")))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: malformed normalization statistics ({err!r})") from err

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NormalizationStats:
        return cls.from_json(json.loads(Path(path).read_text()), str(path))

    def _items(self) -> list[tuple[str, Stat]]:
        keys = ("state", "actions", "wrench", "depth_m", "rgb_latent")
        return [(k, getattr(self, k)) for k in keys if getattr(self, k) is not None]


def _to_deltas(actions: Any, state: Any) -> Any:
    """Positions of ``(…, H, A)`` actions as steps: each minus the previous, the first
    minus the state's position (numpy or torch)."""
    out = actions.copy() if isinstance(actions, np.ndarray) else actions.clone()
    pos = actions[..., _POSITION]
    out[..., 0, _POSITION] = pos[..., 0, :] - state[..., _POSITION]
    out[..., 1:, _POSITION] = pos[..., 1:, :] - pos[..., :-1, :]
    return out


def _from_deltas(actions: Any, state: Any) -> Any:
    """Inverse of :func:`_to_deltas`: positions are the state's plus the running sum."""
    out = actions.copy() if isinstance(actions, np.ndarray) else actions.clone()
    steps = actions[..., _POSITION]
    cumsum = np.cumsum(steps, axis=-2) if isinstance(steps, np.ndarray) else steps.cumsum(-2)
    out[..., _POSITION] = state[..., None, _POSITION] + cumsum
    return out
