"""Action chunks to timed waypoints: latency-aware timing, seam blending, speed bounds.

An action is an absolute TCP target in the base frame plus a gripper width,
``(x, y, z, rx, ry, rz, width)`` in m / rad / m. A chunk is ``H`` actions at the
control rate predicted from the observation anchored at ``t_obs_ns`` (the
camera frame's capture time): action ``i`` is the target for the tick after
``i`` ticks, so its time is ``t_obs_ns + (i + 1) · dt`` (DESIGN §8; the data
loader builds training samples the same way).

The chunk is ready only after inference; waypoints whose time is already past
(plus the arm's actuation latency) are dropped, never executed late. The
remaining ones are merged into the plan the arm is executing
(:func:`merge_chunk`), prefix-consistently as in real-time chunking:

* waypoints of the current plan up to ``t_commit_ns`` (what the arm executes
  while the new plan travels to it) stay exactly as they are;
* the next ``blend_steps`` waypoints cross-fade from the old plan to the new
  chunk (linear weights, slerp for rotations), so the arm never "steps back" to
  where an older observation thought it was;
* after that the new chunk alone, up to ``horizon`` waypoints past the commit
  point: the arm never runs further open-loop than that, and holds at the end
  (its watchdog stops it) if no newer chunk arrives.

Finally :func:`bound_speed` walks the merged path and pulls each waypoint back
along its segment where reaching it would exceed the seam speed limits, so a
large disagreement between chunks becomes a bounded ramp instead of a jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.drivers.arm_path import interpolate_pose
from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix
from demuse_ros.timing.clock import NS_PER_S

#: Action layout: TCP position (3), rotation vector (3), gripper width (1).
ACTION_DIM = 7


@dataclass(frozen=True)
class ChunkConfig:
    """How chunks become waypoints (``policy_node`` parameters ``chunk.*``)."""

    rate_hz: float = param(10.0, doc="Control rate of the actions.", unit="Hz", range=(1.0, 100.0))
    stride: int = param(
        8, doc="Actions executed from each chunk before the next one takes over.", range=(1, 256)
    )
    blend_steps: int = param(
        3, doc="Waypoints over which a new chunk cross-fades in from the old plan.", range=(0, 64)
    )
    horizon: int = param(
        10,
        doc="Most waypoints sent past the commit point (open-loop limit).",
        range=(1, 256),
    )
    actuation_latency_s: float = param(
        0.02,
        doc="From sending waypoints to the arm following them (queue + servo lookahead).",
        unit="s",
        range=(0.0, 1.0),
    )
    max_seam_speed_m_s: float = param(
        0.15, doc="TCP speed bound along the merged path.", unit="m/s", range=(0.001, 3.0)
    )
    max_seam_angular_speed_rad_s: float = param(
        0.8, doc="TCP angular speed bound along the merged path.", unit="rad/s", range=(0.001, 3.14)
    )

    def __post_init__(self) -> None:
        validate_fields(self)

    @property
    def dt_ns(self) -> int:
        return round(NS_PER_S / self.rate_hz)


def chunk_times(t_obs_ns: int, n: int, rate_hz: float) -> np.ndarray:
    """Target times of ``n`` actions predicted from the observation at ``t_obs_ns``."""
    dt = round(NS_PER_S / rate_hz)
    return t_obs_ns + dt * np.arange(1, n + 1, dtype=np.int64)


def validate_actions(actions: np.ndarray) -> np.ndarray:
    """``(H, 7)`` finite float64, or ValueError saying what is wrong."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != ACTION_DIM or len(a) == 0:
        raise ValueError(
            f"actions must have shape (H, {ACTION_DIM}) (xyz m, rotvec rad, gripper m), "
            f"got {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ValueError("actions contain NaN or Inf")
    return a


@dataclass
class Waypoints:
    """Timed targets: ``t_ns`` (N,) strictly increasing, ``actions`` (N, 7)."""

    t_ns: np.ndarray
    actions: np.ndarray

    def __len__(self) -> int:
        return len(self.t_ns)

    def after(self, t_ns: int) -> Waypoints:
        keep = self.t_ns > t_ns
        return Waypoints(self.t_ns[keep], self.actions[keep])

    def upto(self, t_ns: int) -> Waypoints:
        keep = self.t_ns <= t_ns
        return Waypoints(self.t_ns[keep], self.actions[keep])


def action_at(plan: Waypoints, t_ns: int) -> np.ndarray:
    """The plan's action at ``t_ns`` (pose interpolated, gripper linear), clamped to its ends."""
    pose, _ = interpolate_pose(plan.t_ns, plan.actions[:, :6], t_ns)
    width = float(np.interp(t_ns, plan.t_ns, plan.actions[:, 6]))
    return np.r_[pose, width]


def _mix(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """``(1 - w) a + w b`` for positions and width, slerp for the rotation."""
    out = a + w * (b - a)
    r0 = rotvec_to_matrix(a[3:6])
    rel = matrix_to_rotvec(rotvec_to_matrix(b[3:6]) @ r0.T)
    out[3:6] = matrix_to_rotvec(rotvec_to_matrix(w * rel) @ r0)
    return out


def merge_chunk(
    current: Waypoints | None,
    chunk: Waypoints,
    t_commit_ns: int,
    config: ChunkConfig,
) -> Waypoints:
    """The plan to send: ``current`` up to ``t_commit_ns``, a cross-fade, then ``chunk``.

    ``chunk`` waypoints at or before ``t_commit_ns`` are dropped (too late to
    execute). Without a current plan (or one that ends before the commit point)
    the chunk starts as it is. Returns at most ``config.horizon`` waypoints after
    the commit point, plus the committed prefix.
    """
    fresh = chunk.after(t_commit_ns)
    if current is None or len(current) == 0:
        prefix = Waypoints(np.zeros(0, np.int64), np.zeros((0, ACTION_DIM)))
        blended = fresh.actions.copy()
    else:
        prefix = current.upto(t_commit_ns)
        blended = fresh.actions.copy()
        old_end = int(current.t_ns[-1])
        for j in range(min(config.blend_steps, len(fresh))):
            t = int(fresh.t_ns[j])
            if t > old_end:
                break  # the old plan says nothing this far out
            w = (j + 1) / (config.blend_steps + 1)
            blended[j] = _mix(action_at(current, t), fresh.actions[j], w)
    n = min(len(fresh), config.horizon)
    return Waypoints(
        np.concatenate([prefix.t_ns, fresh.t_ns[:n]]),
        np.vstack([prefix.actions, blended[:n]]),
    )


def bound_speed(
    plan: Waypoints, t_start_ns: int, start: np.ndarray, config: ChunkConfig
) -> tuple[Waypoints, int]:
    """Pull waypoints back along their segments so no step exceeds the speed bounds.

    ``start`` is the action at ``t_start_ns`` (the arm's last commanded target).
    Returns the bounded plan and how many waypoints were moved.
    """
    out = plan.actions.copy()
    prev_t, prev = t_start_ns, np.asarray(start, dtype=np.float64)
    moved = 0
    for i, t in enumerate(plan.t_ns):
        dt_s = max(int(t) - prev_t, 1) / NS_PER_S
        step = out[i, :3] - prev[:3]
        dist = float(np.linalg.norm(step))
        r_prev = rotvec_to_matrix(prev[3:6])
        rel = matrix_to_rotvec(rotvec_to_matrix(out[i, 3:6]) @ r_prev.T)
        angle = float(np.linalg.norm(rel))
        scale = min(
            1.0,
            config.max_seam_speed_m_s * dt_s / dist if dist > 0 else 1.0,
            config.max_seam_angular_speed_rad_s * dt_s / angle if angle > 0 else 1.0,
        )
        if scale < 1.0:
            out[i, :3] = prev[:3] + scale * step
            out[i, 3:6] = matrix_to_rotvec(rotvec_to_matrix(scale * rel) @ r_prev)
            moved += 1
        prev_t, prev = int(t), out[i]
    return Waypoints(plan.t_ns.copy(), out), moved


class PlannedChunk(NamedTuple):
    plan: Waypoints | None  # the new plan (None: nothing left ahead of the commit point)
    dropped_late: int  # waypoints of the chunk before the commit point
    clamped: int  # waypoints the seam speed bound moved


def plan_chunk(
    plan: Waypoints | None,
    t_anchor_ns: int,
    actions: np.ndarray,
    state: np.ndarray,
    now_ns: int,
    cfg: ChunkConfig,
) -> PlannedChunk:
    """A chunk predicted from the observation at ``t_anchor_ns``, merged into ``plan``.

    Action ``i`` is timed at ``t_anchor + (i + 1)·dt``; waypoints before the commit
    point ``now + actuation_latency_s`` are dropped; the rest are merged into the
    running plan (:func:`merge_chunk`) and speed-bounded from where the arm will be
    commanded at the commit point (from the last target of a plan that has ended,
    from ``state``, the observed pose, when there is no plan). The runtime and the
    lockstep evaluator both plan with this.
    """
    chunk = Waypoints(chunk_times(t_anchor_ns, len(actions), cfg.rate_hz), actions)
    t_commit = now_ns + round(cfg.actuation_latency_s * 1e9)
    late = len(chunk.t_ns) - len(chunk.after(t_commit))
    merged = merge_chunk(plan, chunk, t_commit, cfg)
    fresh = merged.after(t_commit)
    if len(fresh) == 0:
        return PlannedChunk(None, late, 0)
    if plan is not None and len(plan) and plan.t_ns[-1] > now_ns:
        t_start, start = t_commit, action_at(plan, t_commit)
    elif plan is not None and len(plan):
        # The plan has ended: the arm holds its last target (the pose its filter vets
        # from); the observed state lags it, or differs from it in contact.
        t_start, start = now_ns, plan.actions[-1]
    else:
        t_start, start = now_ns, state
    bounded, moved = bound_speed(fresh, t_start, start, cfg)
    keep = merged.upto(t_commit)
    new = Waypoints(
        np.concatenate([keep.t_ns, bounded.t_ns]), np.vstack([keep.actions, bounded.actions])
    )
    return PlannedChunk(new, late, moved)


__all__ = [
    "ACTION_DIM",
    "ChunkConfig",
    "PlannedChunk",
    "Waypoints",
    "action_at",
    "bound_speed",
    "chunk_times",
    "merge_chunk",
    "plan_chunk",
    "validate_actions",
]
