"""Teleop commands → short waypoint chunks through the arm's safety filter, like the policy's.

:class:`TeleopController` runs on a started :class:`~demuse_ros.drivers.cell.Cell`.
Input devices hand it :class:`~demuse_ros.teleop.core.TeleopCommand`\\ s
(:meth:`~TeleopController.submit`, from any thread); :meth:`~TeleopController.step`,
called at ``rate_hz``, does one tick:

1. **Verdicts.** The arm driver's counters (``chunks_accepted``/``chunks_rejected``
   and ``rejected_<reason>``) say what became of the chunks sent so far. A refused
   chunk never runs: the controller re-anchors on the last *accepted* one (what the
   arm executes, then holds at its end), zeroes its twist and remembers the reason
   (``last_refusal``), so a command pushing out of the workspace leaves the arm at
   the last safe waypoint instead of building on a plan the arm never got.
2. **Deadman and staleness.** No command yet, ``enable`` off, or the newest command
   older than ``stale_timeout_s``: *hold* — once, on the transition, the plan is cut
   in the arm driver (``servoStop``, plan dropped); nothing is sent while held, the
   gripper included.
3. **Chunk.** The device twist is shaped (deadband, full-scale clip, speed scale,
   norm caps) and the commanded twist ramps toward it at the acceleration limits.
   From the pose the arm is commanded to be at *now* (the last accepted plan,
   interpolated as the driver does; the actual TCP pose from the arm ring when
   there is none), ``horizon_steps`` waypoints one period apart are integrated and
   sent with :meth:`Cell.send_chunk` — absolute target times ``now + k·period`` and
   the gripper target at every waypoint. The arm driver vets the chunk whole and its
   servo loop interpolates it, exactly as for the policy. If teleop stalls, the arm
   runs at most one horizon on and holds (the driver's watchdog then stops it).

:meth:`~TeleopController.add_chunk_listener` lets a recorder log every chunk sent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from demuse_ros.drivers.arm_config import REJECT_REASONS
from demuse_ros.drivers.arm_path import interpolate_pose
from demuse_ros.drivers.ft_signal import MAX_FORCE_N, MAX_WIDTH_M
from demuse_ros.teleop.core import (
    MIN_GRIP_FORCE_N,
    TeleopCommand,
    TeleopConfig,
    plan_horizon,
    shape_twist,
)
from demuse_ros.timing.clock import now_ns

log = logging.getLogger("demuse.teleop")

#: ``fn(t_send_ns, t_ns (N,), poses (N, 6), gripper_width_m (N,))``; widths are NaN
#: while the gripper width is unknown (no F/T data yet).
ChunkListener = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]

_Plan = tuple[np.ndarray, np.ndarray]  # (t_ns with the anchor first, poses)


class TeleopController:
    """Device commands → safety-filtered chunks on ``cell`` (see the module docstring).

    Args:
        cell: A started :class:`~demuse_ros.drivers.cell.Cell` (or anything with its
            ``send_chunk``, ``arm`` (``stats``, ``stop_motion``, ``ring``), ``ft.ring``
            and ``config.arm.safety``).
        config: Limits and steps; checked against the arm's safety limits
            (:meth:`TeleopConfig.check_against`).
    """

    def __init__(self, cell: Any, config: TeleopConfig | None = None) -> None:
        self.cell = cell
        self.config = config or TeleopConfig()
        self.config.check_against(cell.config.arm.safety)
        self._lock = threading.Lock()
        self._command: TeleopCommand | None = None
        self._listeners: list[ChunkListener] = []
        self._twist = np.zeros(6)  # commanded twist of the current step
        self._plan: _Plan | None = None  # what the arm should be executing now
        self._accepted: _Plan | None = None  # the newest plan the arm accepted
        self._pending: deque[_Plan] = deque()  # sent, verdict not seen yet
        self._marks = self._arm_counts()
        self.streaming = False
        self.hold_reason = "no input yet"
        self.last_refusal = ""
        self.refusals = 0
        self.chunks_sent = 0
        self.holds: Counter[str] = Counter()
        self.speed_scale = self.config.speed_scale
        self.gripper_width_m: float | None = None
        self.gripper_force_n = self.config.gripper_force_n

    # ------------------------------------------------------------------ inputs
    def submit(self, command: TeleopCommand) -> None:
        """The device's newest command (thread-safe; the next :meth:`step` uses it)."""
        with self._lock:
            self._command = command

    def add_chunk_listener(self, fn: ChunkListener) -> None:
        """Call ``fn(t_send_ns, t_ns, poses, gripper_width_m)`` for every chunk sent."""
        self._listeners.append(fn)

    # ------------------------------------------------------------------ the tick
    def step(self, t_now_ns: int | None = None) -> dict[str, Any]:
        """One tick (module docstring); returns :meth:`status`."""
        now = now_ns() if t_now_ns is None else int(t_now_ns)
        cfg = self.config
        self._read_verdicts()
        with self._lock:
            cmd = self._command
        if cmd is not None and cmd.speed_scale is not None:
            self.speed_scale = float(np.clip(cmd.speed_scale, 0.05, 1.0))
        if cmd is None:
            self.hold("no input yet")
        elif not cmd.enable:
            self.hold("disabled")
        elif now - cmd.t_ns > cfg.stale_timeout_s * 1e9:
            self.hold("stale input")
        else:
            self._stream(now, cmd)
        return self.status()

    def _stream(self, now: int, cmd: TeleopCommand) -> None:
        cfg = self.config
        if not self.streaming:  # enabled just now: start from where the arm is, at rest
            self._twist = np.zeros(6)
            self._plan = self._accepted = None
            if self.gripper_width_m is None:
                self.gripper_width_m = self._measured_width()
        if cmd.gripper_width_m is not None:
            self.gripper_width_m = float(np.clip(cmd.gripper_width_m, 0.0, MAX_WIDTH_M))
        if cmd.gripper_force_n is not None:
            self.gripper_force_n = float(
                np.clip(cmd.gripper_force_n, MIN_GRIP_FORCE_N, MAX_FORCE_N)
            )
        start = self._start_pose(now)
        if start is None:
            self.hold("no arm state")
            return
        target = shape_twist(cmd.twist, cfg, self.speed_scale)
        poses, twists = plan_horizon(start, self._twist, target, cfg)
        t_ns = now + np.arange(1, cfg.horizon_steps + 1, dtype=np.int64) * cfg.period_ns
        width = self.gripper_width_m
        widths = np.full(len(t_ns), np.nan if width is None else width)
        try:
            self.cell.send_chunk(
                t_ns, poses, None if width is None else widths, self.gripper_force_n
            )
        except (ValueError, RuntimeError) as exc:  # bad values, or the arm process restarting
            log.warning("teleop chunk not sent: %s", exc)
            self.hold(f"not sent: {exc}")
            return
        self.streaming = True
        self.hold_reason = ""
        self._twist = twists[0]
        plan = (np.concatenate([[now], t_ns]), np.vstack([start, poses]))
        self._plan = plan
        self._pending.append(plan)
        self.chunks_sent += 1
        for fn in self._listeners:
            try:
                fn(now, t_ns, poses, widths)
            except Exception:  # a listener's bug must not stop the arm's teleoperation
                log.exception("teleop chunk listener failed")

    def hold(self, reason: str) -> None:
        """Stop commanding: cut the arm's plan (``servoStop``) if teleop was streaming."""
        if self.streaming:
            with contextlib.suppress(RuntimeError):  # restarting: the new process has no plan
                self.cell.arm.stop_motion()
            self.holds[reason] += 1
            log.info("teleop hold: %s", reason)
        self.streaming = False
        self._twist = np.zeros(6)
        self._plan = self._accepted = None
        self._pending.clear()
        self.hold_reason = reason

    # ------------------------------------------------------------------ arm feedback
    def _arm_counts(self) -> dict[str, float]:
        st = self.cell.arm.stats()
        names = ("chunks_accepted", "chunks_rejected", *(f"rejected_{r}" for r in REJECT_REASONS))
        return {k: float(st.get(k, 0.0)) for k in names}

    def _read_verdicts(self) -> None:
        counts = self._arm_counts()
        delta = {k: counts[k] - self._marks[k] for k in counts}
        self._marks = counts
        accepted, rejected = int(delta["chunks_accepted"]), int(delta["chunks_rejected"])
        if rejected > 0:
            moved = (k for k, v in delta.items() if k.startswith("rejected_") and v > 0)
            reasons = [k[len("rejected_") :] for k in moved]
            self.last_refusal = ", ".join(reasons) or "unknown"
            self.refusals += rejected
            log.info("arm refused a teleop chunk: %s", self.last_refusal)
        n_done = min(accepted + rejected, len(self._pending))
        done = [self._pending.popleft() for _ in range(n_done)]
        if rejected > 0:
            # Verdicts come in send order; with one chunk per tick at most one is pending,
            # so the refused one is the newest and any before it were accepted.
            if len(done) > 1:
                self._accepted = done[-2]
            self._plan = self._accepted
            self._twist = np.zeros(6)
        elif done:
            self._accepted = done[-1]

    def _start_pose(self, now: int) -> np.ndarray | None:
        if self._plan is not None:
            return interpolate_pose(self._plan[0], self._plan[1], now)[0]
        return self.tcp_pose()

    def tcp_pose(self) -> np.ndarray | None:
        """The newest measured TCP pose (None before the arm's first record)."""
        ring = self.cell.arm.ring
        rec = ring.read_latest(("tcp_pose",)) if ring is not None else None
        return None if rec is None else np.asarray(rec["tcp_pose"], dtype=float)

    def _measured_width(self) -> float | None:
        ring = self.cell.ft.ring
        rec = ring.read_latest(("gripper_width_m",)) if ring is not None else None
        return None if rec is None else float(np.clip(rec["gripper_width_m"], 0.0, MAX_WIDTH_M))

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Enabled, why held, speed scale, gripper, last refusal, counters, TCP pose."""
        return {
            "enabled": self.streaming,
            "hold_reason": self.hold_reason,
            "speed_scale": self.speed_scale,
            "twist": self._twist.tolist(),
            "gripper_width_m": self.gripper_width_m,
            "gripper_force_n": self.gripper_force_n,
            "last_refusal": self.last_refusal,
            "refusals": self.refusals,
            "chunks_sent": self.chunks_sent,
            "holds": dict(self.holds),
        }


__all__ = ["ChunkListener", "TeleopController"]
