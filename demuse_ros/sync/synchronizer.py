"""The 10 Hz synchronizer of DESIGN §4 over the camera, F/T and arm ring buffers.

Each tick anchors on the newest camera frame and takes force/torque and arm
state at that frame's capture time (see :mod:`demuse_ros.sync.align`). A tick
that cannot produce an observation says why, and every reason is counted. The
same class feeds the policy, the recorder and the dataset loader, so training
and deployment see the same alignment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from demuse_ros.config import param, validate_fields
from demuse_ros.sync.align import Choice, choose, interpolate_pose
from demuse_ros.sync.observation import InvalidReason, Observation
from demuse_ros.timing.clock import now_ns
from demuse_ros.transport.ring_buffer import Around, OverwrittenError, RingBuffer

_FT_FIELDS = ("wrench", "gripper_width_m")
_ARM_FIELDS = ("tcp_pose", "joint_positions_rad")


@dataclass(frozen=True)
class SyncConfig:
    """Synchronizer thresholds (``policy_node: ros__parameters: sync:`` in the YAML)."""

    max_age_s: float = param(
        0.1,
        doc="A newest camera frame older than this at the tick makes the tick invalid "
        "(stale_camera). A D435i frame reaches the host ~35-60 ms after capture at 30 Hz; "
        "the twin's render-to-ring latency rises to 30-80 ms on a loaded 2-core machine.",
        unit="s",
        range=(0.001, 1.0),
    )
    ft_threshold_s: float = param(
        0.010,
        doc="Largest distance between the anchor and a force/torque sample used for it.",
        unit="s",
        range=(0.0, 0.5),
    )
    arm_threshold_s: float = param(
        0.010,
        doc="Largest distance between the anchor and an arm state sample used for it.",
        unit="s",
        range=(0.0, 0.5),
    )
    interpolation: Literal["nearest", "linear"] = param(
        "linear",
        doc="How F/T and arm samples are taken at the anchor time: linear interpolates "
        "between the samples around it when both are within threshold, else the nearest.",
        choices=("nearest", "linear"),
    )
    future_tolerance_s: float = param(
        0.002,
        doc="A camera capture time later than the tick by "
        "more than this is a clock fault (future_camera).",
        unit="s",
        range=(0.0, 0.1),
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class SyncStats:
    """Counters since construction (or :meth:`Synchronizer.reset_stats`)."""

    ticks: int = 0
    valid: int = 0
    invalid: dict[str, int] | None = None
    max_ft_gap_s: float = 0.0
    max_arm_gap_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ticks": self.ticks,
            "valid": self.valid,
            "invalid": dict(self.invalid or {}),
            "max_ft_gap_s": self.max_ft_gap_s,
            "max_arm_gap_s": self.max_arm_gap_s,
        }


class Synchronizer:
    """Aligns the streams at the newest camera frame.

    Args:
        config: thresholds.
        camera: ring of :func:`~demuse_ros.sync.streams.camera_schema` records (required).
        ft: ring of :func:`~demuse_ros.sync.streams.ft_schema` records, or None for a rig
            without force/torque (the observation's wrench stays None).
        arm: ring of :func:`~demuse_ros.sync.streams.arm_schema` records, or None.
        clock: host monotonic clock in ns (injectable for tests and replay).
    """

    def __init__(
        self,
        config: SyncConfig,
        camera: RingBuffer,
        ft: RingBuffer | None = None,
        arm: RingBuffer | None = None,
        *,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.config = config
        self.camera, self.ft, self.arm = camera, ft, arm
        self._clock = clock
        self._max_age_ns = round(config.max_age_s * 1e9)
        self._future_ns = round(config.future_tolerance_s * 1e9)
        self._ft_thr_ns = round(config.ft_threshold_s * 1e9)
        self._arm_thr_ns = round(config.arm_threshold_s * 1e9)
        self._last_index = -1
        self._last_frame_number: int | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self._stats = SyncStats(
            invalid={r.value: 0 for r in InvalidReason if r is not InvalidReason.OK}
        )

    def stats(self) -> dict[str, Any]:
        """Tick counts, invalid ticks by reason, largest gaps, and rings' rejected records."""
        out = self._stats.as_dict()
        out["rejected_out_of_order"] = {
            name: ring.rejected_out_of_order
            for name, ring in (("camera", self.camera), ("ft", self.ft), ("arm", self.arm))
            if ring is not None
        }
        return out

    # ------------------------------------------------------------------ the tick
    def tick(
        self,
        now: int | None = None,
        *,
        copy_images: bool = True,
        out: Mapping[str, np.ndarray] | None = None,
    ) -> Observation:
        """Produce the observation for this tick.

        Args:
            now: tick time (host monotonic ns); defaults to the clock.
            copy_images: copy RGB and depth out of the ring (False leaves them None:
                for callers that only need the aligned low-dimensional state).
            out: preallocated ``{"rgb": ..., "depth_m": ...}`` buffers to copy into.
        """
        t_tick = self._clock() if now is None else now
        obs = self._tick(t_tick, copy_images, out)
        st = self._stats
        st.ticks += 1
        if obs.valid:
            st.valid += 1
            self._last_index = self._pending_index
            self._last_frame_number = obs.frame_number
            if obs.ft_gap_s > st.max_ft_gap_s:
                st.max_ft_gap_s = obs.ft_gap_s
            if obs.arm_gap_s > st.max_arm_gap_s:
                st.max_arm_gap_s = obs.arm_gap_s
        else:
            st.invalid[obs.reason.value] += 1  # type: ignore[index]
        return obs

    def _tick(
        self, t_tick: int, copy_images: bool, out: Mapping[str, np.ndarray] | None
    ) -> Observation:
        index = self.camera.count - 1
        if index < 0:
            return Observation(False, InvalidReason.NO_CAMERA_FRAME, t_tick, "camera ring is empty")
        try:
            frame = self.camera.read(index, ("frame_number",))
        except OverwrittenError as exc:
            return Observation(False, InvalidReason.OVERWRITTEN, t_tick, str(exc))
        t_anchor = frame["t_capture_ns"]
        obs = Observation(
            False,
            InvalidReason.OK,
            t_tick,
            t_anchor_ns=t_anchor,
            t_camera_receive_ns=frame["t_receive_ns"],
            camera_device_time_s=frame["device_time_s"],
            frame_number=frame["frame_number"],
        )
        self._pending_index = index
        if index == self._last_index or frame["frame_number"] == self._last_frame_number:
            return self._invalid(
                obs,
                InvalidReason.DUPLICATE_FRAME,
                f"frame {frame['frame_number']} was already emitted",
            )
        age = t_tick - t_anchor
        if age > self._max_age_ns:
            return self._invalid(
                obs,
                InvalidReason.STALE_CAMERA,
                f"newest frame is {age * 1e-6:.1f} ms old > max_age "
                f"{self._max_age_ns * 1e-6:.1f} ms",
            )
        if -age > self._future_ns:
            return self._invalid(
                obs,
                InvalidReason.FUTURE_CAMERA,
                f"frame capture time is {-age * 1e-6:.1f} ms after the tick",
            )
        try:
            if self.ft is not None:
                reason = self._align_ft(obs, t_anchor)
                if reason is not None:
                    return reason
            if self.arm is not None:
                reason = self._align_arm(obs, t_anchor)
                if reason is not None:
                    return reason
            if copy_images:
                images = self.camera.read(index, ("rgb", "depth_m"), out)
                obs.rgb, obs.depth_m = images["rgb"], images["depth_m"]
        except OverwrittenError as exc:
            return self._invalid(obs, InvalidReason.OVERWRITTEN, str(exc))
        obs.valid = True
        return obs

    @staticmethod
    def _invalid(obs: Observation, reason: InvalidReason, detail: str) -> Observation:
        obs.reason, obs.detail = reason, detail
        return obs

    def _sample(
        self, ring: RingBuffer, t_anchor: int, threshold_ns: int, fields: tuple[str, ...]
    ) -> tuple[Choice, Around | None]:
        """Look up the samples around the anchor and decide how to use them."""
        around = ring.around(t_anchor, fields)
        if around is None:
            return Choice("missing", 0.0, 0), None
        return choose(
            t_anchor, around.t_before_ns, around.t_after_ns, threshold_ns, self.config.interpolation
        ), around

    def _align_ft(self, obs: Observation, t_anchor: int) -> Observation | None:
        choice, around = self._sample(self.ft, t_anchor, self._ft_thr_ns, _FT_FIELDS)  # type: ignore[arg-type]
        if choice.use == "missing":
            return self._invalid(obs, InvalidReason.FT_MISSING, "no force/torque sample yet")
        if choice.use == "too_far":
            return self._invalid(
                obs,
                InvalidReason.FT_TOO_FAR,
                f"nearest F/T sample is {choice.gap_ns * 1e-6:.1f} ms from the "
                f"anchor > {self._ft_thr_ns * 1e-6:.1f} ms",
            )
        wrench = _take(choice, around, "wrench")  # type: ignore[arg-type]
        width = _take_scalar(choice, around, "gripper_width_m")  # type: ignore[arg-type]
        # One sum tests all seven values: NaN and Inf survive addition.
        if not math.isfinite(sum(wrench) + width):
            return self._invalid(
                obs, InvalidReason.NON_FINITE, "non-finite wrench or gripper width"
            )
        obs.wrench, obs.gripper_width_m = np.array(wrench), width
        obs.ft_gap_s = choice.gap_ns * 1e-9
        return None

    def _align_arm(self, obs: Observation, t_anchor: int) -> Observation | None:
        choice, around = self._sample(self.arm, t_anchor, self._arm_thr_ns, _ARM_FIELDS)  # type: ignore[arg-type]
        if choice.use == "missing":
            return self._invalid(obs, InvalidReason.ARM_MISSING, "no arm state sample yet")
        if choice.use == "too_far":
            return self._invalid(
                obs,
                InvalidReason.ARM_TOO_FAR,
                f"nearest arm sample is {choice.gap_ns * 1e-6:.1f} ms from the "
                f"anchor > {self._arm_thr_ns * 1e-6:.1f} ms",
            )
        if choice.use == "both":
            poses = around.values["tcp_pose"]  # type: ignore[union-attr]
            pose = interpolate_pose(poses[0], poses[1], choice.alpha)
        else:
            pose = _take(choice, around, "tcp_pose")  # type: ignore[arg-type]
        joints = _take(choice, around, "joint_positions_rad")  # type: ignore[arg-type]
        if not math.isfinite(sum(pose) + sum(joints)):
            return self._invalid(obs, InvalidReason.NON_FINITE, "non-finite TCP pose or joints")
        obs.tcp_pose, obs.joint_positions_rad = np.array(pose), np.array(joints)
        obs.arm_gap_s = choice.gap_ns * 1e-9
        return None


def _take(choice: Choice, around: Around, name: str) -> list[float]:
    """A vector field's value at the anchor: one row, or the two rows interpolated.

    Plain Python floats: for 6-vectors this beats numpy's per-call overhead.
    """
    rows = around.values[name]
    if choice.use == "before":
        return rows[around.row_before]  # type: ignore[index]
    if choice.use == "after":
        return rows[around.row_after]  # type: ignore[index]
    a = choice.alpha
    return [x + a * (y - x) for x, y in zip(rows[0], rows[1], strict=True)]


def _take_scalar(choice: Choice, around: Around, name: str) -> float:
    rows = around.values[name]
    if choice.use == "before":
        return rows[around.row_before]  # type: ignore[index]
    if choice.use == "after":
        return rows[around.row_after]  # type: ignore[index]
    return rows[0] + choice.alpha * (rows[1] - rows[0])
