"""The synchronizer's output: one aligned observation per tick, valid or with a reason."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np


class InvalidReason(enum.Enum):
    """Why a tick produced no usable observation (``OK`` when it did)."""

    OK = "ok"
    NO_CAMERA_FRAME = "no_camera_frame"  # the camera ring is empty
    DUPLICATE_FRAME = "duplicate_frame"  # newest frame already emitted (same hardware frame number)
    STALE_CAMERA = "stale_camera"  # newest frame older than max_age_s
    FUTURE_CAMERA = "future_camera"  # capture time later than now: a clock-mapping fault
    FT_MISSING = "ft_missing"  # no force/torque sample at all
    FT_TOO_FAR = "ft_too_far"  # nearest F/T sample farther than ft_threshold_s from the anchor
    ARM_MISSING = "arm_missing"
    ARM_TOO_FAR = "arm_too_far"
    OVERWRITTEN = "overwritten"  # a record was overwritten while it was read (reader too slow)
    NON_FINITE = "non_finite"  # NaN/Inf in a wrench, pose or joint value


@dataclass
class Observation:
    """Camera frame (the anchor) with force/torque and arm state at its capture time.

    All ``t_*_ns`` are host ``CLOCK_MONOTONIC`` nanoseconds. ``*_gap_s`` is the
    largest distance between the anchor and a sample used for that modality
    (0 for an exact match); it never exceeds the modality's threshold in a valid
    observation. Arrays are copies owned by the observation (or the caller's
    preallocated buffers when the synchronizer was given ``out=``).
    """

    valid: bool
    reason: InvalidReason
    t_tick_ns: int
    detail: str = ""
    # anchor: the newest camera frame
    t_anchor_ns: int = 0
    t_camera_receive_ns: int = 0
    camera_device_time_s: float = math.nan
    frame_number: int = -1
    rgb: np.ndarray | None = None  # (H, W, 3) uint8
    depth_m: np.ndarray | None = None  # (H, W) float32, metres
    # force/torque and gripper at t_anchor_ns
    wrench: np.ndarray | None = None  # (6,) N, N·m
    gripper_width_m: float = math.nan
    ft_gap_s: float = math.nan
    # arm state at t_anchor_ns
    tcp_pose: np.ndarray | None = None  # (6,) m, rad rotation vector, base frame
    joint_positions_rad: np.ndarray | None = None  # (6,)
    arm_gap_s: float = math.nan

    @property
    def age_s(self) -> float:
        """How old the anchor frame was at the tick (s)."""
        return (self.t_tick_ns - self.t_anchor_ns) * 1e-9
