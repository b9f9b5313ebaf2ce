"""Alignment of one stream at an anchor time: pure functions, no I/O.

The synchronizer looks up, in each stream, the newest sample at or before the
anchor (``t0``) and the oldest sample after it (``t1``), then asks
:func:`choose` how to use them:

* ``linear``: both samples exist and each lies within ``threshold`` of the
  anchor, so interpolate at weight ``alpha = (anchor - t0) / (t1 - t0)``;
* otherwise (or in ``nearest`` mode) take the nearer sample if it lies within
  ``threshold``; never extrapolate;
* otherwise the stream cannot be aligned and the tick is invalid.

The reported gap is the largest distance between the anchor and a sample that
was used, so "no modality farther than its threshold" is checkable per tick.
Rotation vectors are interpolated on SO(3) (slerp), not component-wise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

Interpolation = Literal["nearest", "linear"]


class Choice(NamedTuple):
    """How to take a stream's value at the anchor.

    ``use`` is ``"before"``, ``"after"``, ``"both"`` (interpolate with ``alpha``),
    ``"missing"`` (no sample at all) or ``"too_far"`` (nearest beyond threshold).
    ``gap_ns`` is the largest |sample time - anchor| among the samples used (for
    ``too_far``: the distance to the nearest sample).
    """

    use: str
    alpha: float
    gap_ns: int


def choose(
    t_anchor_ns: int, t0_ns: int | None, t1_ns: int | None, threshold_ns: int, mode: Interpolation
) -> Choice:
    """Decide how to sample a stream at ``t_anchor_ns`` (see module docstring).

    Args:
        t_anchor_ns: anchor capture time.
        t0_ns: newest sample time ``<= t_anchor_ns`` or None.
        t1_ns: oldest sample time ``> t_anchor_ns`` or None.
        threshold_ns: largest allowed distance between a used sample and the anchor.
        mode: ``"linear"`` or ``"nearest"``.
    """
    d0 = t_anchor_ns - t0_ns if t0_ns is not None else None
    d1 = t1_ns - t_anchor_ns if t1_ns is not None else None
    if d0 is None and d1 is None:
        return Choice("missing", 0.0, 0)
    if (
        mode == "linear"
        and d0 is not None
        and d1 is not None
        and d0 <= threshold_ns
        and d1 <= threshold_ns
    ):
        return Choice("both", d0 / (d0 + d1), max(d0, d1))
    if d1 is None or (d0 is not None and d0 <= d1):
        use, gap = "before", d0
    else:
        use, gap = "after", d1
    assert gap is not None
    if gap > threshold_ns:
        return Choice("too_far", 0.0, gap)
    return Choice(use, 0.0 if use == "before" else 1.0, gap)


def _rotvec_to_quat(rx: float, ry: float, rz: float) -> tuple[float, float, float, float]:
    angle = math.sqrt(rx * rx + ry * ry + rz * rz)
    if angle < 1e-9:
        # sin(a/2)/a -> 1/2 as a -> 0
        return (1.0, 0.5 * rx, 0.5 * ry, 0.5 * rz)
    s = math.sin(0.5 * angle) / angle
    return (math.cos(0.5 * angle), rx * s, ry * s, rz * s)


def _quat_to_rotvec(w: float, x: float, y: float, z: float) -> tuple[float, float, float]:
    if w < 0.0:  # the shorter of the two equivalent rotations
        w, x, y, z = -w, -x, -y, -z
    n = math.sqrt(x * x + y * y + z * z)
    if n < 1e-9:
        return (2.0 * x, 2.0 * y, 2.0 * z)
    k = 2.0 * math.atan2(n, w) / n
    return (x * k, y * k, z * k)


def _slerp_quat(r0: list[float], r1: list[float], alpha: float) -> tuple[float, float, float]:
    w0, x0, y0, z0 = _rotvec_to_quat(r0[0], r0[1], r0[2])
    w1, x1, y1, z1 = _rotvec_to_quat(r1[0], r1[1], r1[2])
    dot = w0 * w1 + x0 * x1 + y0 * y1 + z0 * z1
    if dot < 0.0:
        w1, x1, y1, z1, dot = -w1, -x1, -y1, -z1, -dot
    if dot > 0.9995:  # nearly parallel: normalized lerp is exact to ~1e-7 rad
        k0, k1 = 1.0 - alpha, alpha
    else:
        theta = math.acos(min(dot, 1.0))
        sin_theta = math.sin(theta)
        k0 = math.sin((1.0 - alpha) * theta) / sin_theta
        k1 = math.sin(alpha * theta) / sin_theta
    w, x, y, z = k0 * w0 + k1 * w1, k0 * x0 + k1 * x1, k0 * y0 + k1 * y1, k0 * z0 + k1 * z1
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    return _quat_to_rotvec(w / norm, x / norm, y / norm, z / norm)


def slerp_rotvec(r0: np.ndarray, r1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation between two rotation vectors (rad), shortest path.

    Written with scalar ``math`` because at this size it is several times faster
    than numpy or ``scipy.spatial.transform`` (a few µs inside the synchronizer's
    50 µs tick budget); tests check it against scipy's Slerp.
    """
    return np.array(_slerp_quat(list(map(float, r0)), list(map(float, r1)), alpha))


def interpolate_pose(p0: Sequence[float], p1: Sequence[float], alpha: float) -> list[float]:
    """Interpolate ``[x, y, z, rx, ry, rz]`` poses: position linearly, rotation by slerp.

    Takes and returns plain sequences of floats (numpy arrays work as inputs).
    """
    a = p0.tolist() if isinstance(p0, np.ndarray) else p0
    b = p1.tolist() if isinstance(p1, np.ndarray) else p1
    rx, ry, rz = _slerp_quat(a[3:], b[3:], alpha)
    return [
        a[0] + alpha * (b[0] - a[0]),
        a[1] + alpha * (b[1] - a[1]),
        a[2] + alpha * (b[2] - a[2]),
        rx,
        ry,
        rz,
    ]
