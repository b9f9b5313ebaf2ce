"""Pure alignment functions: choice of samples and SO(3) interpolation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation, Slerp

from demuse_ros.sync.align import choose, interpolate_pose, slerp_rotvec

MS = 1_000_000


@pytest.mark.parametrize(
    ("t0", "t1", "mode", "use", "alpha", "gap"),
    [
        (95 * MS, 105 * MS, "linear", "both", 0.5, 5 * MS),
        (92 * MS, 111 * MS, "linear", "before", 0.0, 8 * MS),  # t1 beyond threshold: nearest
        (92 * MS, 104 * MS, "nearest", "after", 1.0, 4 * MS),
        (85 * MS, 103 * MS, "linear", "after", 1.0, 3 * MS),  # t0 beyond threshold: nearest
        (95 * MS, None, "linear", "before", 0.0, 5 * MS),  # never extrapolates
        (None, 106 * MS, "linear", "after", 1.0, 6 * MS),
        (80 * MS, 120 * MS, "linear", "too_far", 0.0, 20 * MS),
        (None, None, "nearest", "missing", 0.0, 0),
    ],
)
def test_choose_cases(t0, t1, mode, use, alpha, gap) -> None:
    c = choose(100 * MS, t0, t1, 10 * MS, mode)
    assert (c.use, c.gap_ns) == (use, gap)
    assert c.alpha == pytest.approx(alpha)


@given(
    d0=st.one_of(st.none(), st.integers(0, 50 * MS)),
    d1=st.one_of(st.none(), st.integers(1, 50 * MS)),
    thr=st.integers(0, 30 * MS),
    mode=st.sampled_from(["linear", "nearest"]),
)
def test_choose_never_uses_a_sample_beyond_threshold(d0, d1, thr, mode) -> None:
    anchor = 10**12
    c = choose(
        anchor, None if d0 is None else anchor - d0, None if d1 is None else anchor + d1, thr, mode
    )
    if c.use in ("before", "after", "both"):
        assert c.gap_ns <= thr
        used = {"before": [d0], "after": [d1], "both": [d0, d1]}[c.use]
        assert max(used) == c.gap_ns
    elif c.use == "too_far":
        assert c.gap_ns == min(d for d in (d0, d1) if d is not None) > thr
    else:
        assert d0 is None and d1 is None
    if mode == "nearest":
        assert c.use != "both"


rotvecs = st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3).map(np.array)


@settings(max_examples=200)
@given(r0=rotvecs, r1=rotvecs, alpha=st.floats(0.0, 1.0))
def test_slerp_rotvec_matches_scipy(r0, r1, alpha) -> None:
    ours = Rotation.from_rotvec(slerp_rotvec(r0, r1, alpha))
    ref = Slerp([0.0, 1.0], Rotation.from_rotvec([r0, r1]))([alpha])[0]
    assert (ours.inv() * ref).magnitude() < 1e-6


def test_interpolate_pose_crosses_pi_without_unwinding() -> None:
    # Two orientations near +pi and -pi about z are 0.02 rad apart; a component-wise
    # lerp of the rotation vectors would swing through 0 (a full turn the other way).
    p0 = np.array([0.0, 0.0, 0.0, 0.0, 0.0, np.pi - 0.01])
    p1 = np.array([1.0, 2.0, 3.0, 0.0, 0.0, -np.pi + 0.01])
    mid = interpolate_pose(p0, p1, 0.5)
    np.testing.assert_allclose(mid[:3], [0.5, 1.0, 1.5])
    angle = Rotation.from_rotvec(mid[3:]).magnitude()
    assert angle == pytest.approx(np.pi, abs=1e-6)
    assert interpolate_pose(p0, p1, 0.0)[5] == pytest.approx(p0[5])
