"""Safety filter: every rejection reason, step clamping, latched holds, counting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demuse_ros.config import ConfigError
from demuse_ros.kinematics import matrix_to_rotvec, rotvec_to_matrix
from demuse_ros.safety import SafetyConfig, SafetyFilter

MS = 1_000_000
HOME = np.array([-0.6, -0.15, 0.25, np.pi, 0.0, 0.0])


def chunk(n: int = 8, dx_m: float = 0.005, dt_ms: int = 100, start: np.ndarray = HOME):
    """n waypoints moving +x by dx per waypoint, dt apart, starting dt after now (t=0)."""
    t = np.arange(1, n + 1) * dt_ms * MS
    poses = np.tile(start, (n, 1))
    poses[:, 0] += dx_m * np.arange(1, n + 1)
    return t, poses


def test_a_gentle_chunk_passes() -> None:
    f = SafetyFilter()
    t, poses = chunk()
    assert f.check_chunk(HOME, 0, t, poses).ok
    assert sum(f.stats().values()) == 0


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda t, p: (t, np.where(np.arange(p.size).reshape(p.shape) == 9, np.nan, p)),
            "non_finite",
        ),
        (lambda t, p: (t[::-1].copy(), p), "bad_stamps"),
        (lambda t, p: (t - 10**9, p), "bad_stamps"),  # waypoints in the past
        (lambda t, p: (t, p + [0, 0, -0.3, 0, 0, 0]), "workspace"),  # below the table
        (lambda t, p: (t, p + [0, 2.0, 0, 0, 0, 0]), "workspace"),
        (lambda t, p: (t // 10, p), "speed"),  # the same path 10x faster: 0.5 m/s
        (lambda t, p: (t, _rotated(p, 0.2)), "angular_speed"),  # 0.2 rad per 100 ms = 2 rad/s
    ],
)
def test_unsafe_chunks_are_rejected_and_counted(mutate, reason) -> None:
    f = SafetyFilter()
    t, poses = mutate(*chunk())
    verdict = f.check_chunk(HOME, 0, t, poses)
    assert not verdict.ok and verdict.reason == reason and verdict.detail
    assert f.stats()[reason] == 1


def _rotated(poses: np.ndarray, step_rad: float) -> np.ndarray:
    out = poses.copy()
    for i in range(len(out)):
        out[i, 3:] = matrix_to_rotvec(
            rotvec_to_matrix([0, 0, step_rad * (i + 1)]) @ rotvec_to_matrix(out[i, 3:])
        )
    return out


def test_acceleration_limit() -> None:
    f = SafetyFilter(SafetyConfig(max_tcp_accel_m_s2=0.5))
    t, poses = chunk(n=3, dx_m=0.0, dt_ms=100)
    poses[2, 0] += 0.02  # 0 → 0.2 m/s within 100 ms = 2 m/s²
    verdict = f.check_chunk(HOME, 0, t, poses)
    assert verdict.reason == "accel"


def test_force_limit_latches_a_hold_until_reset() -> None:
    f = SafetyFilter(SafetyConfig(max_force_n=20.0))
    assert not f.observe_wrench([0, 0, 10, 0, 0, 0])
    assert f.observe_wrench([0, 0, 25, 0, 0, 0])
    assert f.observe_wrench([0, 0, 0, 0, 0, 0])  # still latched
    t, poses = chunk()
    assert f.check_chunk(HOME, 0, t, poses).reason == "protective_hold"
    f.reset()
    assert f.check_chunk(HOME, 0, t, poses).ok
    assert f.observe_wrench([np.nan] * 6)


def test_limit_step_clamps_translation_and_rotation() -> None:
    f = SafetyFilter(SafetyConfig(max_step_m=0.002, max_step_rad=0.01))
    target = HOME + [0.01, 0, 0, 0, 0, 0]
    out, clamped = f.limit_step(HOME, target)
    assert clamped and np.linalg.norm(out[:3] - HOME[:3]) == pytest.approx(0.002)
    rot_target = HOME.copy()
    rot_target[3:] = matrix_to_rotvec(rotvec_to_matrix([0, 0, 0.1]) @ rotvec_to_matrix(HOME[3:]))
    out, clamped = f.limit_step(HOME, rot_target)
    angle = np.linalg.norm(
        matrix_to_rotvec(rotvec_to_matrix(out[3:]) @ rotvec_to_matrix(HOME[3:]).T)
    )
    assert clamped and angle == pytest.approx(0.01)
    out, clamped = f.limit_step(HOME, HOME + [0.001, 0, 0, 0, 0, 0])
    assert not clamped
    out, clamped = f.limit_step(HOME, HOME * np.nan)
    assert clamped and np.array_equal(out, HOME)
    assert f.stats()["step_clamped"] == 2 and f.stats()["non_finite"] == 1


@settings(max_examples=200, deadline=None)
@given(target=st.lists(st.floats(-3, 3), min_size=6, max_size=6).map(np.array))
def test_limit_step_never_exceeds_the_step(target) -> None:
    f = SafetyFilter()
    c = f.config
    out, _ = f.limit_step(HOME, target)
    assert np.linalg.norm(out[:3] - HOME[:3]) <= c.max_step_m + 1e-12
    angle = np.linalg.norm(
        matrix_to_rotvec(rotvec_to_matrix(out[3:]) @ rotvec_to_matrix(HOME[3:]).T)
    )
    assert angle <= c.max_step_rad + 1e-9


def test_config_rejects_an_inverted_box() -> None:
    with pytest.raises(ConfigError, match="workspace_min_m"):
        SafetyConfig(workspace_min_m=(0.5, 0.0, 0.0), workspace_max_m=(0.0, 1.0, 1.0))
