"""Policies the runtime can run: observation in, an action chunk ``(H, 7)`` out.

* :class:`ExpertPolicy`: the twin's scripted expert at the runtime's rate,
  through the same scheduler, safety filter and servo path as a learned
  policy. It reads privileged task state from the twin (plunger position and
  force), so it exists only with ``--sim``.
* :class:`~demuse_ros.runtime.inference.ModelPolicy`: a trained DeMUSE
  checkpoint, synchronous or speculative, fed from the observation by the same
  encoder training uses.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Protocol

import numpy as np

from demuse_ros.kinematics.ur import canonical_rotvec
from demuse_ros.runtime.chunking import ACTION_DIM
from demuse_ros.sync.observation import Observation


class Policy(Protocol):
    """What the runtime needs from a policy.

    A policy may also offer ``submit(obs) -> ChunkRequest``: the chunk is then
    computed off the control thread and the loop keeps its deadlines while it
    waits (:class:`~demuse_ros.runtime.inference.ModelPolicy` does). Without
    ``submit``, ``predict`` runs inline in the cycle. A policy that keeps a history
    (the force token's past wrenches) may offer ``observe(obs)``: the runtime and the
    lockstep evaluation hand it every valid observation after ``reset``, chunk or not.
    """

    name: str
    horizon: int  # actions per chunk

    def reset(self, obs: Observation) -> None:
        """Start of an episode (the first valid observation)."""

    def predict(self, obs: Observation) -> np.ndarray:
        """``(horizon, 7)`` absolute TCP targets + gripper widths for the ticks after ``obs``."""


class ChunkRequest(Protocol):
    """A chunk being computed for one observation."""

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for the chunk; True once it is ready."""

    def result(self) -> tuple[np.ndarray, float]:
        """The chunk and its blocking latency (observation handed over → ready, ms).

        Raises whatever the computation raised.
        """


class DoneRequest:
    """A chunk computed inline by :meth:`Policy.predict` (the call's duration is its latency)."""

    def __init__(self, policy: Policy, obs: Observation) -> None:
        t0 = time.perf_counter_ns()
        self._actions: np.ndarray | None = None
        self._error: BaseException | None = None
        try:
            self._actions = policy.predict(obs)
        except Exception as exc:  # handed to result(), like a worker's error
            self._error = exc
        self.blocking_ms = (time.perf_counter_ns() - t0) / 1e6

    def wait(self, timeout_s: float) -> bool:
        return True

    def result(self) -> tuple[np.ndarray, float]:
        if self._error is not None:
            raise self._error
        assert self._actions is not None
        return self._actions, self.blocking_ms


#: Rotation vectors the model sees are the representation nearest this one: the
#: tool pointing down (π about a horizontal axis, the twin's home yaw). The sign
#: ambiguity at |r| = π then sits at a yaw 90° away from it (see canonical_rotvec).
ROTVEC_REFERENCE_RAD = np.array([-np.pi / np.sqrt(2.0), -np.pi / np.sqrt(2.0), 0.0])


def canonical_pose(pose: np.ndarray) -> np.ndarray:
    """``(..., 6+)`` poses with their rotation vectors in the model's representation."""
    out = np.array(pose, dtype=np.float64, copy=True)
    out[..., 3:6] = canonical_rotvec(out[..., 3:6], ROTVEC_REFERENCE_RAD)
    return out


def observation_state(obs: Observation) -> np.ndarray:
    """The proprio state the model sees: TCP pose (6, canonical rotation vector) and
    gripper width (1)."""
    return np.r_[canonical_pose(obs.tcp_pose), obs.gripper_width_m]


class ExpertPolicy:
    """The scripted dispense expert, rolled out ``horizon`` steps per chunk (privileged)."""

    name = "expert"

    def __init__(self, twin: Any, rate_hz: float, horizon: int = 4, config: Any = None) -> None:
        from demuse_ros.twin.expert import DispenseExpert

        self.twin, self.dt_s, self.horizon = twin, 1.0 / rate_hz, horizon
        self.expert = DispenseExpert(config or self.default_config())
        self._t_s = 0.0
        self._target: np.ndarray | None = None

    @staticmethod
    def default_config(**changes: Any) -> Any:
        """The expert at the runtime's 10 Hz: a contact is seen up to a tick late, so it
        descends slower than at 125 Hz; ``changes`` override fields."""
        from demuse_ros.twin.expert import ExpertConfig

        return ExpertConfig(**{"descend_speed_m_s": 0.01, **changes})

    def reset(self, obs: Observation) -> None:
        top = np.asarray(self.twin.call("plunger_top_pose"))[:3]
        self._t_s = 0.0
        self.expert.reset(self._t_s, np.asarray(obs.tcp_pose), top)
        self._target = None

    @property
    def done(self) -> bool:
        return self.expert.done

    def predict(self, obs: Observation) -> np.ndarray:
        force = float(self.twin.call("plunger_force_n"))
        pose = np.asarray(obs.tcp_pose, dtype=np.float64)
        # Advance the real expert one tick; roll a copy forward for the rest of the chunk
        # (same force: the expert's open-loop guess, as a chunk is).
        chunk = np.empty((self.horizon, ACTION_DIM))
        action = self.expert.act(self._t_s, self.dt_s, pose, force)
        self._t_s += self.dt_s
        chunk[0] = np.r_[action.tcp_target, action.gripper_width_m]
        ghost = copy.deepcopy(self.expert)
        t = self._t_s
        for i in range(1, self.horizon):
            action = ghost.act(t, self.dt_s, chunk[i - 1, :6], force)
            chunk[i] = np.r_[action.tcp_target, action.gripper_width_m]
            t += self.dt_s
        return chunk


class EpisodeEnd:
    """When an automatic episode ends: the task says it is done, or the policy has been
    done for ``grace_cycles`` cycles.

    A policy is done when it has *sent* its last command; the arm executes it a tick or
    two later and the task observes the result after that (the scripted expert's lift
    ends the press, and only then does the task count a success). Stopping at the
    policy's word cut such episodes short under load: recorded as failures, or failing
    the closed-loop test.
    """

    def __init__(self, grace_cycles: int = 20) -> None:
        self.grace_cycles = grace_cycles
        self._policy_done_at: int | None = None

    def reached(self, cycles: int, task: dict[str, Any], policy: Any) -> bool:
        if task.get("done"):
            return True
        if not getattr(policy, "done", False):
            self._policy_done_at = None
            return False
        if self._policy_done_at is None:
            self._policy_done_at = cycles
        return cycles - self._policy_done_at >= self.grace_cycles


__all__ = [
    "ROTVEC_REFERENCE_RAD",
    "ChunkRequest",
    "DoneRequest",
    "EpisodeEnd",
    "ExpertPolicy",
    "Policy",
    "canonical_pose",
    "observation_state",
]
