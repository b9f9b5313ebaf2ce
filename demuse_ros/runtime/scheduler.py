"""The 10 Hz policy loop: synchronize → policy → chunk timing/seams → safety → arm.

One :class:`Runtime` cycle, on a deadline-based :class:`PeriodicLoop`:

1. ``sync``: :meth:`Synchronizer.tick` aligns F/T and arm state at the newest
   camera frame (the same code the recorder and the dataset loader use);
2. ``policy``: ``stride`` cycles after the running chunk's observation (or when
   no plan is running) the policy is asked for a chunk from this observation.
   A policy with ``submit`` (a model) computes it off the control thread: the
   cycle waits for it only until shortly before the next deadline, and a chunk
   that is not ready by then is collected by a later cycle, its waypoints
   still timed from its own observation. So inference never makes the loop
   miss a deadline; a chunk later than ``policy_budget_s`` is an overrun.
   Other policies (the scripted expert) run inline;
3. ``plan``: action ``i`` gets the time ``t_anchor + (i + 1)·dt``; waypoints
   before ``now + actuation_latency_s`` are dropped; the rest are merged into
   the running plan and speed-bounded (:mod:`~demuse_ros.runtime.chunking`);
4. ``send``: :meth:`Cell.send_chunk` — TCP waypoints through the arm's safety
   filter, gripper widths to the gripper.

Every stage is timed every cycle. An invalid observation, a policy that
overruns its budget, or a chunk the arm rejects makes the arm *hold*: the plan
is cut at the commit point, so the arm comes to rest at its current target
instead of continuing open-loop; each is counted by reason.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.runtime.chunking import ChunkConfig, Waypoints, plan_chunk, validate_actions
from demuse_ros.runtime.inference import InferenceConfig
from demuse_ros.runtime.policies import DoneRequest, Policy, observation_state
from demuse_ros.runtime.report import RunTrace
from demuse_ros.sync.synchronizer import SyncConfig, Synchronizer
from demuse_ros.timing.clock import NS_PER_S, now_ns
from demuse_ros.timing.loop import PeriodicLoop

log = logging.getLogger("demuse.runtime")

STAGES = ("sync", "policy", "plan", "send", "cycle")


@dataclass(frozen=True)
class RuntimeConfig:
    """The policy loop (``policy_node`` parameters; ``chunk``, ``sync`` and ``inference``
    are groups of their own)."""

    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    policy_budget_s: float = param(
        0.09,
        doc="A chunk not ready this long after its observation was handed to the policy is "
        "an overrun: it is dropped and the arm holds.",
        unit="s",
        range=(0.001, 10.0),
    )
    frame_wait_s: float = param(
        0.04,
        doc="After the deadline, wait this long at most for a new camera frame, so the "
        "observation is as fresh as the camera allows; the loop then re-phases onto the "
        "frames (0: tick on the deadline).",
        unit="s",
        range=(0.0, 0.2),
    )
    gripper_force_n: float = param(
        20.0, doc="Finger force for the gripper widths of a chunk.", unit="N", range=(0.0, 40.0)
    )
    realtime_priority: int = param(
        40,
        doc="SCHED_FIFO priority of the control thread (0 = off). It is light (a few ms "
        "a cycle) and must keep its deadlines; the inference worker stays at normal "
        "priority, the arm driver (50) and the twin (60) preempt it.",
        range=(0, 99),
    )

    def __post_init__(self) -> None:
        validate_fields(self)


#: A cycle that waits for a chunk stops waiting this long before the next deadline.
_DEADLINE_MARGIN_S = 0.005


class _Pending(NamedTuple):
    request: Any  # a ChunkRequest
    obs: Any  # the observation it was asked for
    t_submit_ns: int
    cycle: int


class _Timings:
    """Per-stage durations of the recent cycles (ms), preallocated."""

    def __init__(self, history: int = 4096) -> None:
        self.values = {s: np.full(history, np.nan) for s in STAGES}
        self.n = 0

    def add(self, durations_ns: dict[str, int]) -> None:
        i = self.n % len(self.values["cycle"])
        for stage, arr in self.values.items():
            arr[i] = durations_ns.get(stage, 0) / 1e6
        self.n += 1

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, arr in self.values.items():
            v = arr[: min(self.n, len(arr))]
            v = v[np.isfinite(v)]
            out[f"{stage}_ms_p50"] = float(np.percentile(v, 50)) if v.size else math.nan
            out[f"{stage}_ms_p99"] = float(np.percentile(v, 99)) if v.size else math.nan
        return out


class Runtime:
    """The loop over a started :class:`~demuse_ros.drivers.cell.Cell` (module docstring)."""

    def __init__(self, cell: Any, policy: Policy, config: RuntimeConfig | None = None) -> None:
        self.cell, self.policy = cell, policy
        self._observe = getattr(policy, "observe", None)  # optional: every valid tick
        self.config = config or RuntimeConfig()
        self.sync = Synchronizer(self.config.sync, cell.camera.ring, cell.ft.ring, cell.arm.ring)
        # No busy spin at the end of the sleep: 10 Hz needs no sub-ms wake precision, and
        # a spin holds the GIL the inference thread needs between its kernels.
        self.loop = PeriodicLoop(self.config.chunk.rate_hz, spin_s=0.0)
        self.plan: Waypoints | None = None
        self.timings = _Timings()
        self.trace = RunTrace()
        self.cycles = 0
        self.chunks_sent = 0
        self.waypoints_sent = 0
        self.waypoints_dropped_late = 0
        self.seam_clamps = 0
        self.holds: dict[str, int] = {
            "invalid_observation": 0,
            "overrun": 0,
            "bad_chunk": 0,
            "rejected_by_arm": 0,
        }
        self._arm_rejected = 0.0
        self.invalid: dict[str, int] = {}
        self._chunk_cycle = 0  # the cycle whose observation the running plan came from
        self._pending: _Pending | None = None
        self._abandoned: Any = None  # an overrun request still computing
        self._cycle_end_ns: int | None = None  # when cycle() runs: the next deadline
        self.rephases = 0
        self._started = False

    # ------------------------------------------------------------------ the cycle
    def cycle(self) -> None:
        """Wait for the next deadline (and a fresh camera frame), run one cycle."""
        self.loop.wait()
        self._wait_for_frame()
        self._cycle_end_ns = self.loop.next_deadline_ns
        self.step()

    def _wait_for_frame(self) -> None:
        """Wait (bounded) for the next frame; shift the loop's phase onto the frames."""
        wait_ns = round(self.config.frame_wait_s * NS_PER_S)
        if wait_ns <= 0:
            return
        ring = self.cell.camera.ring
        count, start = ring.count, now_ns()
        while ring.count == count and now_ns() - start < wait_ns:
            time.sleep(0.0005)  # a plain sleep releases the GIL (no spin)
        waited = now_ns() - start
        if ring.count != count and waited > 10_000_000:
            # Next deadlines ~1 ms before a frame is due (camera and loop rates are
            # commensurate: 30 and 10 Hz), so the following waits are short.
            self.loop.start(now_ns() - 1_000_000)
            self.rephases += 1

    def step(self) -> None:
        """One cycle: observe, ask for / collect a chunk, plan and send it (module docstring)."""
        t0 = now_ns()
        obs = self.sync.tick(t0)
        t1 = now_ns()
        durations = {"sync": t1 - t0}
        self.cycles += 1
        held_before = sum(self.holds.values())
        blocking_ms = math.nan
        rejected = self.cell.arm.stats()["chunks_rejected"]
        if rejected > self._arm_rejected:  # the arm's safety filter refused our last chunk
            self._arm_rejected = rejected
            self._hold("rejected_by_arm")
        if not obs.valid:
            self.invalid[obs.reason.value] = self.invalid.get(obs.reason.value, 0) + 1
            self._hold("invalid_observation")
            self._abandon()  # a chunk for an older observation must not restart the arm
        else:
            if self._started and self._observe is not None:
                self._observe(obs)  # every valid tick, chunk or not (a policy's history)
            if self._pending is None and self._due() and self._previous_finished():
                if not self._started:
                    self.policy.reset(obs)
                    self._started = True
                self._pending = _Pending(self._submit(obs), obs, t1, self.cycles)
            if self._pending is not None:
                blocking_ms = self._collect(durations)
        durations["cycle"] = now_ns() - t0
        self.timings.add(durations)
        self.trace.add(
            t_ns=t0,
            cycle_ms=durations["cycle"] / 1e6,
            policy_ms=durations.get("policy", math.nan * 1e6) / 1e6,
            blocking_ms=blocking_ms,
            force_n=float(np.linalg.norm(obs.wrench[:3])) if obs.wrench is not None else math.nan,
            held=float(sum(self.holds.values()) > held_before),
        )

    def _due(self) -> bool:
        """A new chunk is due: ``stride`` cycles after the last one's observation, or no plan."""
        return self.plan is None or self.cycles - self._chunk_cycle >= self.config.chunk.stride

    def _submit(self, obs: Any) -> Any:
        submit = getattr(self.policy, "submit", None)
        return submit(obs) if submit is not None else DoneRequest(self.policy, obs)

    def _previous_finished(self) -> bool:
        """An abandoned (overrun) request still computing blocks new ones: holding meanwhile."""
        if self._abandoned is not None and self._abandoned.wait(0.0):
            self._abandoned = None
        return self._abandoned is None

    def _abandon(self) -> None:
        if self._pending is not None:
            self._abandoned, self._pending = self._pending.request, None

    def _collect(self, durations: dict[str, int]) -> float:
        """Wait for the pending chunk, bounded so the cycle keeps its deadline; use it.

        Returns the chunk's blocking latency (ms), NaN while it is not ready.
        """
        cfg, pending = self.config, self._pending
        assert pending is not None
        t_wait = now_ns()
        budget_end = pending.t_submit_ns + round(cfg.policy_budget_s * NS_PER_S)
        limit = budget_end
        if self._cycle_end_ns is not None:
            limit = min(limit, self._cycle_end_ns - round(_DEADLINE_MARGIN_S * NS_PER_S))
        ready = pending.request.wait(max(0, limit - t_wait) / NS_PER_S)
        t_ready = now_ns()
        spent = t_ready - t_wait
        if pending.cycle == self.cycles:  # asked (or run inline) in this cycle
            spent += t_wait - pending.t_submit_ns
        durations["policy"] = spent
        if not ready:
            if t_ready >= budget_end:
                self._hold("overrun")
                self._abandon()
            return math.nan
        self._pending = None
        try:
            actions, blocking_ms = pending.request.result()
        except Exception as exc:
            log.warning("the policy failed: %s: %s", type(exc).__name__, exc)
            self._hold("bad_chunk")
            return math.nan
        if blocking_ms > cfg.policy_budget_s * 1e3:
            self._hold("overrun")
            return blocking_ms
        try:
            actions = validate_actions(actions)
        except ValueError as exc:
            log.warning("policy returned a bad chunk: %s", exc)
            self._hold("bad_chunk")
            return blocking_ms
        t_plan = now_ns()
        plan = self._plan(pending.obs.t_anchor_ns, actions, pending.obs)
        t_send = now_ns()
        durations["plan"] = t_send - t_plan
        if plan is not None:
            self._send(plan)
            durations["send"] = now_ns() - t_send
            self._chunk_cycle = pending.cycle
        return blocking_ms

    def _plan(self, t_anchor_ns: int, actions: np.ndarray, obs: Any) -> Waypoints | None:
        planned = plan_chunk(
            self.plan, t_anchor_ns, actions, observation_state(obs), now_ns(), self.config.chunk
        )
        self.waypoints_dropped_late += planned.dropped_late
        self.seam_clamps += planned.clamped
        return planned.plan

    def _send(self, plan: Waypoints) -> None:
        now = now_ns()
        ahead = plan.after(now)
        if len(ahead) == 0:
            return
        self.cell.send_chunk(
            ahead.t_ns,
            ahead.actions[:, :6],
            gripper_width_m=np.clip(ahead.actions[:, 6], 0.0, 0.1),
            gripper_force_n=self.config.gripper_force_n,
        )
        self.plan = plan
        self.chunks_sent += 1
        self.waypoints_sent += len(ahead)

    def _hold(self, reason: str) -> None:
        """Cut the plan at the commit point: the arm stops at its current target."""
        self.holds[reason] += 1
        if self.plan is None:
            return
        t_commit = now_ns() + round(self.config.chunk.actuation_latency_s * NS_PER_S)
        kept = self.plan.upto(t_commit)
        if len(kept) == len(self.plan):
            return  # nothing beyond the commit point: already holding
        self.plan = kept if len(kept) else None
        if len(kept.after(now_ns())):
            self._send(kept)
        else:
            self.cell.arm.stop_motion()

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, Any]:
        loop = self.loop.stats()
        return {
            "cycles": self.cycles,
            "tick_hz": loop.rate_hz,
            "deadline_misses": loop.overruns,
            "period_ms_p99": loop.period_s_p99 * 1e3,
            "chunks_sent": self.chunks_sent,
            "waypoints_sent": self.waypoints_sent,
            "waypoints_dropped_late": self.waypoints_dropped_late,
            "seam_clamps": self.seam_clamps,
            "rephases": self.rephases,
            "holds": dict(self.holds),
            "invalid_observations": dict(self.invalid),
            **self._blocking(),
            **self.timings.summary(),
        }

    def _blocking(self) -> dict[str, float]:
        values = self.trace.column("blocking_ms")
        values = values[np.isfinite(values)]
        if not values.size:
            return {"blocking_ms_p50": math.nan, "blocking_ms_p99": math.nan}
        p50, p99 = np.percentile(values, (50, 99))
        return {"blocking_ms_p50": float(p50), "blocking_ms_p99": float(p99)}


__all__ = ["STAGES", "Runtime", "RuntimeConfig"]
