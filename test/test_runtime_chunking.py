"""Chunk timing and seams on crafted chunk pairs (no robot needed)."""

from __future__ import annotations

import numpy as np
import pytest

from demuse_ros.runtime.chunking import (
    ChunkConfig,
    Waypoints,
    bound_speed,
    chunk_times,
    merge_chunk,
    plan_chunk,
    validate_actions,
)

MS = 1_000_000
CFG = ChunkConfig(rate_hz=10.0, blend_steps=3, horizon=10)


def _line(t0_ns: int, n: int, x0: float, vx_m_s: float) -> Waypoints:
    """n waypoints every 100 ms from t0 + 100 ms moving along x at vx."""
    t = chunk_times(t0_ns, n, 10.0)
    a = np.zeros((n, 7))
    a[:, 0] = x0 + vx_m_s * (t - t0_ns) / 1e9
    a[:, 3:6] = [np.pi, 0.0, 0.0]  # tool pointing down
    a[:, 6] = 0.05
    return Waypoints(t, a)


def _speeds(plan: Waypoints, t0: int, start: np.ndarray) -> np.ndarray:
    t = np.r_[t0, plan.t_ns] / 1e9
    x = np.vstack([start[None, :3], plan.actions[:, :3]])
    return np.linalg.norm(np.diff(x, axis=0), axis=1) / np.diff(t)


def test_chunk_times_follow_the_observation() -> None:
    assert chunk_times(1000, 3, 10.0).tolist() == [
        1000 + 100 * MS,
        1000 + 200 * MS,
        1000 + 300 * MS,
    ]


def test_actions_are_validated() -> None:
    with pytest.raises(ValueError, match=r"shape \(H, 7\)"):
        validate_actions(np.zeros((4, 6)))
    with pytest.raises(ValueError, match="NaN"):
        validate_actions(np.full((4, 7), np.nan))


def test_prefix_is_kept_and_past_due_waypoints_are_dropped() -> None:
    old = _line(0, 16, 0.0, 0.1)
    new = _line(250 * MS, 16, 0.03, 0.1)  # predicted later, slightly different
    commit = 480 * MS
    merged = merge_chunk(old, new, commit, CFG)
    prefix = old.upto(commit)
    assert np.array_equal(merged.t_ns[: len(prefix)], prefix.t_ns)
    assert np.array_equal(merged.actions[: len(prefix)], prefix.actions)
    assert np.all(np.diff(merged.t_ns) > 0)  # no new waypoint at or before the commit point
    assert len(merged.after(commit)) == CFG.horizon
    # past the blend the new chunk is used as it is
    tail = merged.after(commit).actions[CFG.blend_steps :]
    assert np.allclose(tail, new.after(commit).actions[CFG.blend_steps : CFG.horizon])


def test_a_chunk_from_an_older_view_does_not_step_back() -> None:
    # The arm moves +x at 0.1 m/s; the new chunk (from a stale observation) is 2 cm behind.
    old = _line(0, 16, 0.0, 0.1)
    new = _line(300 * MS, 16, 0.03 - 0.02, 0.1)
    commit = 450 * MS
    merged = merge_chunk(old, new, commit, CFG)
    start_t = int(old.upto(commit).t_ns[-1])
    start = old.upto(commit).actions[-1]
    bounded, _ = bound_speed(merged.after(start_t), start_t, start, CFG)
    x = np.r_[start[0], bounded.actions[:, 0]]
    # Without blending the first new waypoint would be 2 cm behind the last committed one.
    assert new.after(commit).actions[0, 0] < start[0]
    assert np.all(np.diff(x) > -1e-9), np.diff(x)


def test_seam_speed_bound_holds_for_a_large_jump() -> None:
    old = _line(0, 16, 0.0, 0.05)
    new = _line(300 * MS, 16, 0.20, 0.05)  # 17 cm disagreement
    commit = 450 * MS
    merged = merge_chunk(old, new, commit, CFG)
    start_t = int(old.upto(commit).t_ns[-1])
    start = old.upto(commit).actions[-1]
    bounded, moved = bound_speed(merged.after(start_t), start_t, start, CFG)
    speeds = _speeds(bounded, start_t, start)
    assert moved > 0 and speeds.max() <= CFG.max_seam_speed_m_s + 1e-9
    # and it converges onto the new chunk instead of lagging forever
    unbounded_speeds = _speeds(merged.after(start_t), start_t, start)
    assert unbounded_speeds.max() > CFG.max_seam_speed_m_s


def test_rotation_bound_and_blend_stay_on_the_geodesic() -> None:
    old = _line(0, 8, 0.0, 0.0)
    new = _line(0, 8, 0.0, 0.0)
    new.actions[:, 3:6] = [0.0, np.pi, 0.0]  # a 180° flip about z relative to the old
    merged = merge_chunk(old, new, 150 * MS, CFG)
    start = old.actions[0]
    bounded, moved = bound_speed(merged.after(100 * MS), 100 * MS, start, CFG)
    from demuse_ros.kinematics.ur import matrix_to_rotvec, rotvec_to_matrix

    prev = start
    for a in bounded.actions:
        rel = matrix_to_rotvec(rotvec_to_matrix(a[3:6]) @ rotvec_to_matrix(prev[3:6]).T)
        assert np.linalg.norm(rel) <= CFG.max_seam_angular_speed_rad_s * 0.1 + 1e-9
        prev = a
    assert moved > 0


def test_no_current_plan_starts_the_chunk_as_is() -> None:
    new = _line(0, 16, 0.0, 0.1)
    merged = merge_chunk(None, new, 250 * MS, CFG)
    assert merged.t_ns[0] == 300 * MS and np.array_equal(merged.actions, new.actions[2:12])


def test_after_a_plan_ends_the_bound_starts_at_its_held_target() -> None:
    """The arm holds the last target of an ended plan and its filter vets the next chunk
    from there; the observed pose may lag it (or differ from it in contact). The speed
    bound must start at the held target, or the first segment the arm sees is too fast."""
    old = _line(0, 4, 0.0, 0.1)  # ends at x = 0.04 m, t = 400 ms
    held = old.actions[-1]
    observed = held.copy()
    observed[0] += 0.01  # 1 cm off the target (e.g. pushed back in contact)
    chunk = _line(600 * MS, 8, 0.07, 0.1)  # 3 cm ahead of the held target
    planned = plan_chunk(old, 600 * MS, chunk.actions, observed, 600 * MS, CFG)
    first = planned.plan.after(600 * MS)
    step_from_held = np.linalg.norm(first.actions[0, :3] - held[:3])
    dt_s = (first.t_ns[0] - 600 * MS) / 1e9
    assert step_from_held / dt_s <= CFG.max_seam_speed_m_s + 1e-9
    # without a plan the observed pose is all there is
    fresh = plan_chunk(None, 600 * MS, chunk.actions, observed, 600 * MS, CFG)
    step = np.linalg.norm(fresh.plan.after(600 * MS).actions[0, :3] - observed[:3])
    assert step / dt_s <= CFG.max_seam_speed_m_s + 1e-9
