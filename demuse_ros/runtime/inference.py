"""Model inference for the runtime: off the control thread, synchronous or speculative.

:class:`ModelPolicy` runs a DeMUSE checkpoint in an :class:`InferenceWorker`
thread (torch and onnxruntime release the GIL inside their kernels, so the
control thread stays responsive). At a chunk boundary the control thread hands
the real observation over (:meth:`ModelPolicy.submit`) and collects the chunk
when it is ready (:mod:`~demuse_ros.runtime.scheduler` never waits past its
next deadline). The time from handing it over to the chunk being ready —
encoding the observation included — is the *blocking latency*.

* ``sync``: all ``n`` denoising steps run on the real observation.
* ``sai`` (speculative asynchronous inference, seed ``004`` §4.5): right after
  chunk ``k`` is produced, the worker starts chunk ``k + 1`` on a *predicted*
  observation and runs steps ``[0, s_mid)`` while chunk ``k`` executes. The
  prediction is what the model itself expects at the next boundary: its own
  predicted future RGB latent, the proprio state of chunk ``k``'s waypoint at
  the boundary, and the last measured force and depth. When the real
  observation arrives, it replaces the prediction and steps ``[s_mid, n)``
  finish the chunk, so only those block. ``sai_steps = s_mid = 0`` is exactly
  synchronous inference (tested), and so is any ``s_mid`` when the prediction
  equals the real observation.

Both modes draw the initial noise of chunk ``k`` from a generator seeded with
``(seed, k)``, so a sync run and an SAI run see the same noise per chunk and
their actions can be compared (``sai_action_dev``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from demuse_ros.config.schema import param, validate_fields
from demuse_ros.runtime.policies import observation_state
from demuse_ros.sync.observation import Observation
from demuse_ros.timing.realtime import set_normal_priority, set_realtime_priority

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceConfig:
    """How the model runs (``policy_node`` parameters ``inference.*``)."""

    mode: str = param("sai", doc="sync or sai (speculative asynchronous)", choices=("sync", "sai"))
    backend: str = param(
        "onnxruntime",
        doc="Denoiser backend: torch, torch-compile, onnxruntime or tensorrt "
        "(demuse bench policy compares them; onnxruntime is 2-3x torch eager on a CPU).",
    )
    sai_steps: int = param(
        6,
        doc="s_mid: denoising steps run speculatively on the predicted observation "
        "(0 = synchronous; at most the sampler's steps).",
        range=(0, 1000),
    )
    task: int = param(0, doc="Task id the policy is conditioned on.", range=(0, 10_000))
    seed: int = param(0, doc="Seed of the per-chunk initial noise.", range=(0, 2**31 - 1))
    device: str = param("cpu", doc="torch device of the model.")
    threads: int = param(
        1,
        doc="torch intra-op threads of the observation encoder (0: torch's default, one per "
        "core). One is faster in the loop: the drivers share the cores, and a second "
        "OpenMP thread waits at every barrier for a core (bench loop: encode p50 8.4 ms "
        "with 1 thread, 12.6 ms with 2).",
        range=(0, 256),
    )

    realtime_priority: int = param(
        30,
        doc="SCHED_FIFO priority of the worker while it computes a chunk the control "
        "thread waits for (encode + the blocking denoising steps; 0 = off). Speculation "
        "runs at normal priority: it has a whole stride of slack.",
        range=(0, 99),
    )

    def __post_init__(self) -> None:
        validate_fields(self)


class InferenceWorker:
    """One thread that runs submitted callables in order; results come back as futures."""

    def __init__(self, name: str = "inference") -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> _Future:
        future = _Future()
        self._jobs.put((fn, future))
        return future

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fn, future = item
            try:
                future.set(fn(), None)
            except BaseException as exc:  # handed to the waiting thread
                future.set(None, exc)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5.0)


class _Future:
    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error = value, error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s``; True once the result is set."""
        return self._done.wait(timeout_s)

    def result(self, timeout_s: float | None = None) -> Any:
        if not self._done.wait(timeout_s):
            raise TimeoutError("inference did not finish in time")
        if self._error is not None:
            raise self._error
        return self._value


class ModelPolicy:
    """A DeMUSE checkpoint as a runtime policy (sync or SAI; see the module docstring).

    ``submit`` returns a future of ``(actions, blocking_ms)``; ``predict``
    waits for it. ``last_blocking_ms`` and ``blocking_ms`` keep the latencies,
    ``speculations_late`` counts boundaries at which the speculative half was
    not finished yet.
    """

    def __init__(self, folder: str, config: InferenceConfig | None = None, *, stride: int = 8):
        import torch

        from demuse_ros.backends.policy import BackendPolicy

        self.config = cfg = config or InferenceConfig()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.policy = BackendPolicy.load(folder, backend=cfg.backend, device=cfg.device)
        self.denoiser = self.policy.denoiser
        self.encoder = self.policy.encoder
        self.norm = self.policy.checkpoint.normalization
        self.horizon = self.policy.checkpoint.config.model.action_horizon
        #: (anchor time ns, wrench) of the latest valid observations, for the force token
        self.wrench_history = self.policy.checkpoint.config.model.wrench_history
        self._wrenches: collections.deque[tuple[int, np.ndarray]] = collections.deque(
            maxlen=self.wrench_history
        )
        self.name = f"{cfg.mode}:{cfg.backend}:{folder}"
        self.stride = stride
        n = self.n_steps = self.policy.n_steps
        self.s_mid = 0 if cfg.mode == "sync" else min(cfg.sai_steps, n)
        self.denoiser.check_range(0, self.s_mid)  # DUST: the split must fall on q
        # Build graphs/sessions for both halves now, not in the first real-time cycle.
        self.policy.prepare([(0, self.s_mid), (self.s_mid, n)] if self.s_mid else [])
        self.worker = InferenceWorker()
        self._priority_warned = False
        self.chunk_index = 0
        self.blocking_ms: list[float] = []
        #: (queued, encode, denoise) ms of every chunk, the parts of its blocking latency
        self.stage_ms: list[tuple[float, float, float]] = []
        self.last_blocking_ms = float("nan")
        self.speculations_late = 0
        #: (chunk index, future) of the speculative half queued for that chunk
        self._speculation: tuple[int, _Future] | None = None
        #: keep (conditions, chunk index, actions) of every chunk for action_deviation_m()
        self.record = False
        self._records: list[tuple[Any, int, np.ndarray]] = []

    # ------------------------------------------------------------------ policy API
    def reset(self, obs: Observation) -> None:
        self.chunk_index = 0
        self._speculation = None
        self._wrenches.clear()  # an episode's history starts at its first tick (as in training)
        self.observe(obs)

    def observe(self, obs: Observation) -> None:
        """Every valid control tick's observation, chunk or not: the force token sees the
        wrenches of the last ``model.wrench_history`` ticks. Repeats of an anchor are ignored."""
        if obs.wrench is None:
            return
        if self._wrenches and obs.t_anchor_ns <= self._wrenches[-1][0]:
            return
        self._wrenches.append((obs.t_anchor_ns, np.array(obs.wrench, dtype=np.float64)))

    def wrench_window(self, obs: Observation) -> np.ndarray | None:
        """``(6·K,)``: the last K observed wrenches up to ``obs``, oldest first; before K
        ticks have been seen the oldest repeats (training pads an episode's start alike)."""
        if obs.wrench is None:
            return None
        k = self.wrench_history
        earlier = [w for t, w in self._wrenches if t < obs.t_anchor_ns]
        earlier = earlier[-(k - 1) :] if k > 1 else []
        self.observe(obs)
        window = [*earlier, np.asarray(obs.wrench, dtype=np.float64)]
        return np.concatenate([window[0]] * (k - len(window)) + window)

    def submit(self, obs: Observation) -> _Future:
        """Hand the observation to the worker; the future yields ``(actions, blocking_ms)``.

        The worker encodes the observation, finishes the chunk (from the
        speculative half when there is one for this chunk), and in SAI mode
        queues the speculation for the next chunk right behind it.
        """
        t0 = time.perf_counter_ns()
        k = self.chunk_index
        self.chunk_index += 1
        pending, self._speculation = self._speculation, None
        speculation = pending[1] if pending is not None and pending[0] == k else None
        if speculation is not None and not speculation.done():
            self.speculations_late += 1
        wrench = self.wrench_window(obs)  # now, on the caller's thread: the history moves on
        return self.worker.submit(lambda: self._chunk(obs, wrench, speculation, k, t0))

    def predict(self, obs: Observation) -> np.ndarray:
        """:meth:`submit` and wait: the chunk for ``obs``."""
        return self.submit(obs).result()[0]

    def close(self) -> None:
        self.worker.close()

    def blocking_parts_ms(self) -> dict[str, float]:
        """p50 of the parts of the blocking latency: queued, encode, denoise (ms)."""
        if not self.stage_ms:
            return {}
        parts = np.median(np.asarray(self.stage_ms), axis=0)
        names = ("queued_ms_p50", "encode_ms_p50", "denoise_ms_p50")
        return dict(zip(names, parts.tolist(), strict=True))

    def action_deviation_m(self) -> dict[str, float]:
        """Recorded chunks against synchronous denoising of the same observations and noise.

        Returns the mean and max TCP position difference (m) over all waypoints of
        all recorded chunks (0 for a synchronous policy). Runs the synchronous
        passes now, on the calling thread.
        """
        import torch

        if not self._records:
            return {"mean_m": float("nan"), "max_m": float("nan"), "chunks": 0}
        devs = []
        with torch.inference_mode():
            for cond, k, actions in self._records:
                sync = self.policy.unnormalize(self._finish(cond, None, k), cond)[0]
                devs.append(np.linalg.norm(sync[:, :3] - actions[:, :3], axis=1))
        d = np.concatenate(devs)
        return {"mean_m": float(d.mean()), "max_m": float(d.max()), "chunks": len(devs)}

    # ------------------------------------------------------------------ in the worker
    def _conditions(self, obs: Observation, wrench: np.ndarray | None = None) -> Any:
        """The observation's conditions; ``wrench`` is its :meth:`wrench_window` (taken
        from the history now when not given)."""
        if wrench is None:
            wrench = self.wrench_window(obs)
        return self.policy.conditions(
            None if obs.rgb is None else obs.rgb[None],
            None if obs.depth_m is None else obs.depth_m[None],
            None if wrench is None else wrench[None],
            observation_state(obs)[None],
            [self.config.task],
        )

    def _chunk(
        self,
        obs: Observation,
        wrench: np.ndarray | None,
        speculation: _Future | None,
        k: int,
        t0_ns: int,
    ) -> tuple[np.ndarray, float]:
        t_start = time.perf_counter_ns()
        with self._blocking_priority():
            cond = self._conditions(obs, wrench)
            t_cond = time.perf_counter_ns()
            state = self._finish(cond, speculation, k)
            actions = self.policy.unnormalize(state, cond)[0].astype(np.float64)
        t_end = time.perf_counter_ns()
        blocking_ms = (t_end - t0_ns) / 1e6
        # where the blocking time went: queued behind the worker, encoding, denoising
        self.stage_ms.append(
            ((t_start - t0_ns) / 1e6, (t_cond - t_start) / 1e6, (t_end - t_cond) / 1e6)
        )
        self.last_blocking_ms = blocking_ms
        self.blocking_ms.append(blocking_ms)
        if self.record:
            self._records.append((cond, k, actions))
        if self.s_mid > 0:
            x_v = self.denoiser.predicted_latents(state)
            self._speculation = (
                k + 1,
                self.worker.submit(lambda: self._speculate(cond, x_v, actions, k + 1)),
            )
        return actions, blocking_ms

    @contextlib.contextmanager
    def _blocking_priority(self) -> Iterator[None]:
        """The worker thread under SCHED_FIFO while the control thread waits on it."""
        priority = self.config.realtime_priority
        problem = set_realtime_priority(priority) if priority else None
        if problem and not self._priority_warned:
            self._priority_warned = True
            log.warning("inference worker: %s", problem)
        try:
            yield
        finally:
            if priority and not problem:
                set_normal_priority()

    def _noise(self, cond: Any, k: int) -> Any:
        import torch

        g = torch.Generator(device=cond.state.device).manual_seed(self.config.seed * 100_003 + k)
        return self.policy.initial_noise(cond, generator=g)

    def _finish(self, cond: Any, speculation: _Future | None, k: int) -> Any:
        if speculation is not None:
            state = speculation.result()  # same thread, queued earlier: already done
        else:
            state = self._noise(cond, k)
        return self.policy.run_steps(cond, state, state.step, self.n_steps)

    def predicted_conditions(self, cond: Any, x_v: Any, actions: np.ndarray) -> Any:
        """What the model expects at the next boundary (see the module docstring)."""
        import torch

        latent = cond.rgb_latent
        if latent is not None and x_v is not None:
            latent = x_v[:, : latent.shape[1]]  # the first predicted future frame
        boundary = actions[min(self.stride, len(actions)) - 1]  # the target reached there
        state = self.norm.state.normalize(
            torch.as_tensor(boundary[None], dtype=torch.float32, device=cond.state.device)
        )
        return cond._replace(rgb_latent=latent, state=state)

    def _speculate(self, cond: Any, x_v: Any, actions: np.ndarray, k: int) -> Any:
        predicted = self.predicted_conditions(cond, x_v, actions)
        return self.policy.run_steps(predicted, self._noise(predicted, k), 0, self.s_mid)


__all__ = ["InferenceConfig", "InferenceWorker", "ModelPolicy"]
