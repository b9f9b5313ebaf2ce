"""RG2-FT register map and wrench processing (paper appendix C): pure functions.

Registers of unit 65 from ``hardware.md`` §2.2; the fingertip frames and the
processing steps are described in :mod:`demuse_ros.drivers.ft`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Unit 65 registers (hardware.md §2.2).
REG_ZERO = 0
REG_TARGET_FORCE = 2  # 0.1 N; 2..4 are written in one FC16
REG_CONTROL = 4
STATE_START = 257
STATE_COUNT = 26
_I_STATUS = (0, 9)  # 257, 266
_I_FT = (2, 11)  # 259..264, 268..273
_I_WIDTH = 23  # 280
_FT_SCALE = np.array([0.1, 0.1, 0.1, 0.01, 0.01, 0.01])  # register unit -> N, N·m

MAX_WIDTH_M = 0.1
MAX_FORCE_N = 40.0

# Twin convention (see the module docstring): 2π/3 about (1, -1, 1)/√3 and (-1, -1, -1)/√3.
_A = 2.0 * math.pi / (3.0 * math.sqrt(3.0))
TWIN_LEFT_ROTVEC = (_A, -_A, _A)
TWIN_RIGHT_ROTVEC = (-_A, -_A, -_A)


def _rotvec_matrix(rotvec: Any) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64)).as_matrix()


def decode_state(words: Any) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The 26 unsigned words of block 257..282 -> (finger wrenches (2, 6), width m, statuses)."""
    raw = np.asarray(words, dtype=np.uint16)
    if raw.shape != (STATE_COUNT,):
        raise ValueError(f"expected {STATE_COUNT} registers, got {raw.shape}")
    signed = raw.view(np.int16).astype(np.float64)
    fingers = np.stack([signed[i : i + 6] for i in _I_FT]) * _FT_SCALE
    width_m = float(signed[_I_WIDTH]) * 1e-4
    return fingers, width_m, (int(raw[_I_STATUS[0]]), int(raw[_I_STATUS[1]]))


class WrenchProcessor:
    """Per-sample wrench processing: rotate, mean, clip, causal Savitzky–Golay.

    The filter is ``scipy.signal.savgol_coeffs(window, polyorder, pos=window-1,
    use="dot")`` applied to the last ``window`` clipped means: the least-squares
    polynomial through the window evaluated at its newest sample (causal, O(window)
    per sample). Until ``window`` samples have been seen the clipped mean passes
    through unsmoothed; :meth:`reset` (after a lost connection) starts over.
    """

    def __init__(self, config: Any) -> None:
        self.rotations = (
            np.stack(
                [
                    _rotvec_matrix(config.left_sensor_rotvec),
                    _rotvec_matrix(config.right_sensor_rotvec),
                ]
            )
            if config.rotate_to_tool
            else None
        )
        self.limit = np.array([config.clip_force_n] * 3 + [config.clip_torque_nm] * 3)
        self.window = config.savgol_window
        if self.window > 1:
            from scipy.signal import savgol_coeffs

            self.coeffs = savgol_coeffs(
                self.window, config.savgol_polyorder, pos=self.window - 1, use="dot"
            )
        else:
            self.coeffs = np.ones(1)
        self._history = np.zeros((self.window, 6))
        self._seen = 0

    def reset(self) -> None:
        self._seen = 0

    def combine(self, fingers: np.ndarray) -> np.ndarray:
        """(2, 6) fingertip wrenches -> clipped mean (6,), before smoothing."""
        if self.rotations is not None:
            forces = np.einsum("kij,kj->ki", self.rotations, fingers[:, :3])
            torques = np.einsum("kij,kj->ki", self.rotations, fingers[:, 3:])
            mean = np.concatenate([forces.mean(axis=0), torques.mean(axis=0)])
        else:
            mean = fingers.mean(axis=0)
        return np.clip(mean, -self.limit, self.limit)

    def __call__(self, fingers: np.ndarray) -> np.ndarray:
        x = self.combine(fingers)
        if self.window == 1:
            return x
        hist = self._history
        hist[:-1] = hist[1:]
        hist[-1] = x
        self._seen += 1
        if self._seen < self.window:
            return x
        return self.coeffs @ hist


__all__ = [
    "MAX_FORCE_N",
    "MAX_WIDTH_M",
    "TWIN_LEFT_ROTVEC",
    "TWIN_RIGHT_ROTVEC",
    "WrenchProcessor",
    "decode_state",
]
