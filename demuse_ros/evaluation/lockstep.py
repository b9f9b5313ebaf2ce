"""Closed-loop episodes in lockstep: the twin, the observation pipeline and a policy, no wall clock.

:class:`LockstepCell` advances the twin one controller period at a time and
plays the three drivers' parts in-process, with the drivers' own code where it
shapes what the policy sees:

* arm: every period, the controller's output record (actual q, qd, TCP pose and
  speed, modes) into an arm ring, as the arm driver writes the RTDE package;
* F/T: every 10 ms, the RG2-FT state registers decoded by the F/T driver's
  ``decode_state`` and combined by its :class:`WrenchProcessor` (clip, mean,
  Savitzky–Golay) into an F/T ring;
* camera: every 1/30 s, the twin's render (640×480 RGB + depth) into a camera
  ring, stamped at its simulated capture time.

Every 100 ms, right after a frame, the deployment :class:`Synchronizer` ticks
on those rings; every ``stride`` ticks the policy gets the observation and its
chunk is planned by the runtime's own :func:`plan_chunk` (action ``i`` at
``t_anchor + (i+1)·dt``, past-due waypoints dropped, seam blend, speed bound),
vetted by the arm driver's :class:`SafetyFilter` from the current servo target
and followed by a :class:`WaypointPlan` with ``servoL`` every period through
the controller's own command path. Gripper widths go to the
register bank when they change by more than the deadband. Time is simulated
time, so inference takes no time here: this mode measures the policy, the
real-time mode (``demuse eval --mode realtime``) the whole system.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from demuse_ros.drivers.arm_path import WaypointPlan, future_waypoints
from demuse_ros.drivers.ft import FTDriverConfig
from demuse_ros.drivers.ft_signal import STATE_COUNT, STATE_START, WrenchProcessor, decode_state
from demuse_ros.runtime.chunking import ChunkConfig, Waypoints, plan_chunk, validate_actions
from demuse_ros.runtime.policies import observation_state
from demuse_ros.safety.filter import SafetyConfig, SafetyFilter
from demuse_ros.sync.streams import arm_schema, camera_schema, ft_schema
from demuse_ros.sync.synchronizer import SyncConfig, Synchronizer
from demuse_ros.transport.ring_buffer import RingBuffer
from demuse_ros.twin.lockstep import InProcessGripper, InProcessURClient
from demuse_ros.twin.runner import Twin

NS_PER_S = 1_000_000_000
_UNIT = 65
#: the simulated clock starts here (ns), so stamps are positive and far from 0
T0_NS = 1_000 * NS_PER_S
#: :meth:`LockstepCell._new_chunk`'s answer when the safety filter refused the chunk
_HOLD = object()


@dataclass
class EpisodeRecord:
    """One evaluated episode."""

    seed: int
    success: bool
    reason: str
    time_to_done_s: float
    metrics: dict[str, float]
    ticks: int = 0
    invalid_ticks: int = 0
    chunks: int = 0
    chunks_refused: dict[str, int] = field(default_factory=dict)
    peak_force_n: float = math.nan


class TwinCalls:
    """The twin's privileged calls (``twin.call(name)``) on an in-process twin, for the expert."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin

    def call(self, name: str, *args: Any) -> Any:
        task = self.twin.plant.task
        if name == "plunger_top_pose":
            return task.plunger_top_pose().tolist()
        if name == "plunger_force_n":
            return task.force_n()
        if name == "task_status":
            return self.twin.plant.task_status().__dict__
        raise KeyError(f"lockstep twin has no call {name!r}")


class LockstepCell:
    """The twin plus in-process stand-ins of the three drivers (module docstring)."""

    def __init__(
        self,
        twin: Twin,
        *,
        chunk: ChunkConfig | None = None,
        sync: SyncConfig | None = None,
        safety: SafetyConfig | None = None,
        ft: FTDriverConfig | None = None,
        gripper_force_n: float = 20.0,
        gripper_deadband_m: float = 0.002,
    ) -> None:
        self.twin = twin
        self.chunk = chunk or ChunkConfig()
        self.sync_config = sync or SyncConfig()
        if safety is None:
            from demuse_ros.drivers.cell import CellConfig

            safety = CellConfig().arm.safety  # the arm driver's defaults
        self.safety = SafetyFilter(safety)
        self.ft_config = ft or FTDriverConfig()
        self.gripper_force_n = gripper_force_n
        self.gripper_deadband_m = gripper_deadband_m
        self._plan: Waypoints | None = None
        cam = twin.config.plant.camera
        self.camera_ring = RingBuffer.create(camera_schema(cam.width, cam.height), 8)
        self.ft_ring = RingBuffer.create(ft_schema(), 256)
        self.arm_ring = RingBuffer.create(arm_schema(), 1024)

    def close(self) -> None:
        for ring in (self.camera_ring, self.ft_ring, self.arm_ring):
            ring.close()

    def __enter__(self) -> LockstepCell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one episode
    def run_episode(self, policy: Any, seed: int, *, max_s: float | None = None) -> EpisodeRecord:
        """Reset the twin to ``seed`` and run ``policy`` until the task ends (or ``max_s``)."""
        twin = self.twin
        twin.reset(seed)
        arm, gripper = InProcessURClient(twin), InProcessGripper(twin)
        gripper.zero()
        processor = WrenchProcessor(self.ft_config)
        self.safety.reset()
        # fresh rings: the capture stamps restart with the episode
        self.close()
        cam = twin.config.plant.camera
        self.camera_ring = RingBuffer.create(camera_schema(cam.width, cam.height), 8)
        self.ft_ring = RingBuffer.create(ft_schema(), 256)
        self.arm_ring = RingBuffer.create(arm_schema(), 1024)
        sync = Synchronizer(
            self.sync_config, self.camera_ring, self.ft_ring, self.arm_ring, clock=self._now
        )
        dt_ns = round(twin.period_s * NS_PER_S)
        frame_ns = round(NS_PER_S / cam.fps)
        ft_ns = round(NS_PER_S / self.ft_config.rate_hz)
        tick_frames = max(1, round(cam.fps / self.chunk.rate_hz))
        timeout_s = max_s if max_s is not None else twin.plant.task.config.timeout_s + 1.0
        record = EpisodeRecord(seed, False, "unfinished", math.nan, {})
        refused: dict[str, int] = {}
        plan: WaypointPlan | None = None
        self._plan = None  # the runtime's plan (merged chunks)
        target = arm.actual_tcp_pose()
        gripper_sent: float | None = None
        next_frame = next_ft = self._now()
        frames, since_chunk, started = 0, math.inf, False
        status = twin.plant.task_status()
        observe = getattr(policy, "observe", None)
        while not status.done and twin.time_s < timeout_s:
            now = self._now()
            self._put_arm(now)
            if now >= next_ft:
                self._put_ft(now, processor)
                next_ft += ft_ns
            if now >= next_frame:
                rgb, depth = twin.plant.render()
                frames += 1
                self.camera_ring.put(
                    now, now, now / NS_PER_S, rgb=rgb, depth_m=depth, frame_number=frames
                )
                next_frame += frame_ns
                if frames % tick_frames == 1 or tick_frames == 1:
                    obs = sync.tick(now)
                    record.ticks += 1
                    since_chunk += 1
                    if not obs.valid:
                        record.invalid_ticks += 1
                    elif started and observe is not None:
                        observe(obs)  # as the runtime: every valid tick, chunk or not
                    if obs.valid and (since_chunk >= self.chunk.stride or plan is None):
                        if not started:
                            policy.reset(obs)
                            started = True
                        accepted = self._new_chunk(policy, obs, now, target, refused)
                        record.chunks += 1
                        if accepted is _HOLD:  # the arm refused it: hold the current target
                            plan = WaypointPlan(now, target, np.array([now + dt_ns]), target[None])
                        elif accepted is not None:
                            plan, widths = accepted
                            since_chunk = 0
                            width = float(np.clip(widths[0], 0.0, 0.1))
                            if gripper_sent is None or abs(width - gripper_sent) > (
                                self.gripper_deadband_m
                            ):
                                gripper.grip(width, self.gripper_force_n)
                                gripper_sent = width
            if plan is not None:
                target = plan.target(now + dt_ns)
                arm.servo_l(target, time_s=twin.period_s)
            twin.step()
            status = twin.plant.task_status()
            force = float(np.linalg.norm(self.ft_ring.read_latest(("wrench",))["wrench"][:3]))
            if not math.isfinite(record.peak_force_n) or force > record.peak_force_n:
                record.peak_force_n = force
        record.success, record.reason = status.success, status.reason or "timeout"
        record.time_to_done_s = twin.time_s if status.done else math.nan
        record.metrics = {
            k: (float(v) if math.isfinite(v) else math.nan) for k, v in status.metrics.items()
        }
        record.chunks_refused = refused
        return record

    # ------------------------------------------------------------------ pieces
    def _now(self) -> int:
        return T0_NS + round(self.twin.time_s * NS_PER_S)

    def _put_arm(self, now: int) -> None:
        v = self.twin.controller.snapshot().values
        self.arm_ring.put(
            now,
            now,
            float(v["timestamp"][0]),
            joint_positions_rad=v["actual_q"],
            joint_velocities_rad_s=v["actual_qd"],
            tcp_pose=v["actual_TCP_pose"],
            tcp_speed=v["actual_TCP_speed"],
            robot_mode=int(v["robot_mode"][0]),
            safety_mode=int(v["safety_mode"][0]),
            runtime_state=int(v["runtime_state"][0]),
        )

    def _put_ft(self, now: int, processor: WrenchProcessor) -> None:
        words = self.twin.gripper.read(_UNIT, STATE_START, STATE_COUNT)
        fingers, width_m, _ = decode_state(words)
        self.ft_ring.put(
            now,
            now,
            math.nan,
            wrench=processor(fingers),
            finger_wrenches=fingers,
            gripper_width_m=width_m,
        )

    def _new_chunk(
        self, policy: Any, obs: Any, now: int, target: np.ndarray, refused: dict[str, int]
    ) -> tuple[WaypointPlan, np.ndarray] | object | None:
        """Ask the policy; plan its chunk as the runtime does (:func:`plan_chunk`: timing,
        past-due drop, seam blend, speed bound) and vet what would be sent as the arm
        driver does. Returns the servo plan and the gripper widths, ``_HOLD`` when the
        safety filter refused the chunk, or None (nothing to send; the plan goes on)."""
        try:
            actions = validate_actions(policy.predict(obs))
        except ValueError:
            refused["bad_chunk"] = refused.get("bad_chunk", 0) + 1
            return None
        planned = plan_chunk(
            self._plan, obs.t_anchor_ns, actions, observation_state(obs), now, self.chunk
        )
        if planned.plan is None:
            return None
        ahead = planned.plan.after(now)
        if not len(ahead):
            return None
        t_ns, poses = future_waypoints(now, ahead.t_ns, ahead.actions[:, :6])
        verdict = self.safety.check_chunk(target, now, t_ns, poses)
        if not verdict.ok:
            refused[verdict.reason] = refused.get(verdict.reason, 0) + 1
            # as the runtime on the arm's refusal: it holds, its plan cut at the commit point
            t_commit = now + round(self.chunk.actuation_latency_s * NS_PER_S)
            kept = self._plan.upto(t_commit) if self._plan is not None else None
            self._plan = kept if kept is not None and len(kept) else None
            return _HOLD
        self._plan = planned.plan
        return WaypointPlan(now, target, t_ns, poses), ahead.actions[:, 6]


__all__ = ["EpisodeRecord", "LockstepCell", "TwinCalls"]
