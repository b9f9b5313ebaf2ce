"""The policy loop: timing of waypoints, holds on bad input, and a closed loop in the twin."""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from test_synchronizer import MS, put_arm, put_frame, put_ft, rings

from demuse_ros.runtime.chunking import ChunkConfig
from demuse_ros.runtime.scheduler import Runtime, RuntimeConfig
from demuse_ros.timing.clock import now_ns

POSE = np.array([0.0, 0.4, 0.3, np.pi, 0.0, 0.0])


class FakeArm:
    def __init__(self, ring) -> None:
        self.ring = ring
        self.stopped = 0
        self.rejected = 0.0

    def stats(self) -> dict:
        return {"chunks_rejected": self.rejected}

    def stop_motion(self) -> None:
        self.stopped += 1


class FakeCell:
    """Rings the test fills by hand, and a record of what would reach the arm."""

    def __init__(self) -> None:
        cam, ft, arm = rings()
        self.camera = SimpleNamespace(ring=cam)
        self.ft = SimpleNamespace(ring=ft)
        self.arm = FakeArm(arm)
        self.sent: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._frame = 0

    def observe(self, pose=POSE) -> None:
        """A fresh camera frame with F/T and arm samples around it."""
        t = now_ns() - 20 * MS
        self._frame += 1
        for dt in (-4, -2, 0, 2, 4):
            put_ft(self.ft.ring, t + dt * MS, [0.0] * 6)
            put_arm(self.arm.ring, t + dt * MS, pose)
        put_frame(self.camera.ring, t, self._frame)

    def send_chunk(self, t_ns, poses, gripper_width_m=None, gripper_force_n=20.0) -> None:
        self.sent.append((now_ns(), np.asarray(t_ns), np.asarray(poses), gripper_width_m))


class ScriptedPolicy:
    name = "scripted"

    def __init__(self, horizon: int = 8, sleep_s: float = 0.0, nan: bool = False) -> None:
        self.horizon, self.sleep_s, self.nan = horizon, sleep_s, nan
        self.calls = 0

    def reset(self, obs) -> None:
        pass

    def predict(self, obs) -> np.ndarray:
        self.calls += 1
        time.sleep(self.sleep_s)
        a = np.tile(np.r_[obs.tcp_pose, 0.08], (self.horizon, 1))
        a[:, 0] += 0.01 * np.arange(1, self.horizon + 1)  # 1 cm per tick along x
        a[:, 6] = 0.2  # wider than the gripper: clipped before it is sent
        if self.nan:
            a[3, 2] = np.nan
        return a


def _runtime(policy, **chunk) -> tuple[Runtime, FakeCell]:
    cell = FakeCell()
    config = RuntimeConfig(chunk=ChunkConfig(**{"stride": 2, "horizon": 6, **chunk}))
    return Runtime(cell, policy, config), cell


def test_waypoints_are_timed_from_the_frame_and_never_in_the_past() -> None:
    runtime, cell = _runtime(ScriptedPolicy())
    cell.observe()
    runtime.step()
    assert len(cell.sent) == 1
    sent_at, t_ns, poses, widths = cell.sent[0]
    assert np.all(np.diff(poses[:, 0]) > 0)  # the chunk as planned: forward along x
    assert np.all(t_ns > sent_at) and len(t_ns) <= 6
    anchor = cell.camera.ring.read_latest(())["t_capture_ns"]
    offsets = (t_ns - anchor) / 1e8  # in ticks of 100 ms
    assert np.allclose(offsets, np.round(offsets)) and offsets[0] >= 1
    assert np.all(widths <= 0.1)  # gripper widths clipped to the RG2's range
    # stride 2: the next cycle runs the old plan, the one after asks again
    cell.observe()
    runtime.step()
    assert runtime.policy.calls == 1
    cell.observe()
    runtime.step()
    assert runtime.policy.calls == 2 and len(cell.sent) == 2


def test_an_inference_stall_makes_the_arm_hold() -> None:
    policy = ScriptedPolicy()
    runtime, cell = _runtime(policy, stride=1)
    cell.observe()
    runtime.step()
    assert len(cell.sent) == 1 and runtime.plan is not None
    policy.sleep_s = 0.15  # over the 90 ms budget
    cell.observe()
    runtime.step()
    assert runtime.holds["overrun"] == 1
    # the plan is cut at the commit point: nothing after it is left to execute
    t_commit = now_ns() + round(runtime.config.chunk.actuation_latency_s * 1e9)
    assert runtime.plan is None or runtime.plan.t_ns[-1] <= t_commit
    assert len(cell.sent) == 1 or len(cell.sent[-1][1]) < len(cell.sent[0][1])
    assert cell.arm.stopped + (len(cell.sent) - 1) == 1  # held once: stop or a cut plan


class AsyncPolicy(ScriptedPolicy):
    """Computes chunks in a thread, like a model: ``submit`` returns at once."""

    def submit(self, obs):
        from demuse_ros.runtime.inference import InferenceWorker

        if not hasattr(self, "worker"):
            self.worker = InferenceWorker()
        t0 = time.perf_counter_ns()
        return self.worker.submit(lambda: (self.predict(obs), (time.perf_counter_ns() - t0) / 1e6))


def test_a_model_chunk_is_collected_without_blocking_the_cycle() -> None:
    policy = AsyncPolicy(sleep_s=0.05)
    runtime, cell = _runtime(policy)
    cell.observe()
    # the cycle may wait for the chunk only until 5 ms before its next deadline
    runtime._cycle_end_ns = now_ns() + 25_000_000
    t0 = time.perf_counter()
    runtime.step()
    assert time.perf_counter() - t0 < 0.035 and not cell.sent  # returned in time, no chunk yet
    assert runtime.stats()["policy_ms_p50"] < 35
    time.sleep(0.06)
    anchor = cell.camera.ring.read_latest(())["t_capture_ns"]
    cell.observe()
    runtime._cycle_end_ns = now_ns() + 100_000_000
    runtime.step()  # the next cycle collects it: timed from its own observation
    assert len(cell.sent) == 1 and runtime.holds["overrun"] == 0
    offsets = (cell.sent[0][1] - anchor) / 1e8
    assert np.allclose(offsets, np.round(offsets))
    assert 50 <= runtime.stats()["blocking_ms_p50"] < 90
    # a stalled model: an overrun hold once the budget is spent, nothing new asked
    # until the stalled call returns, and its late chunk is never used
    policy.sleep_s = 0.3
    sent = len(cell.sent)
    for _ in range(3):  # stride 2: the second cycle asks
        time.sleep(0.05)
        cell.observe()
        runtime._cycle_end_ns = now_ns() + 100_000_000
        runtime.step()
    assert runtime.holds["overrun"] == 1 and policy.calls == 2
    assert len(cell.sent) == sent or cell.arm.stopped or len(cell.sent[-1][1]) < 6
    policy.sleep_s = 0.0
    time.sleep(0.3)
    for _ in range(2):
        cell.observe()
        runtime._cycle_end_ns = now_ns() + 100_000_000
        runtime.step()
    assert policy.calls == 3 and runtime.holds["overrun"] == 1
    assert len(cell.sent) > sent


class HistoryPolicy(ScriptedPolicy):
    """Keeps what ``observe`` hands it (a model's force history)."""

    def reset(self, obs) -> None:
        self.seen = [obs.frame_number]

    def observe(self, obs) -> None:
        self.seen.append(obs.frame_number)


def test_a_policy_observes_every_valid_tick_not_only_its_chunks() -> None:
    policy = HistoryPolicy()
    runtime, cell = _runtime(policy)  # stride 2
    for _ in range(5):
        cell.observe()
        runtime.step()
    runtime.step()  # no new frame: an invalid tick is not observed
    assert policy.calls == 3
    assert policy.seen == [1, 2, 3, 4, 5]


def test_bad_chunks_and_invalid_observations_hold_and_are_counted() -> None:
    runtime, cell = _runtime(ScriptedPolicy(nan=True))
    cell.observe()
    runtime.step()
    assert runtime.holds["bad_chunk"] == 1 and not cell.sent
    runtime2, cell2 = _runtime(ScriptedPolicy())
    runtime2.step()  # no camera frame at all
    assert runtime2.holds["invalid_observation"] == 1
    assert runtime2.stats()["invalid_observations"] == {"no_camera_frame": 1}
    # a chunk the arm's filter refused: the runtime holds too
    cell2.observe()
    runtime2.step()
    cell2.arm.rejected = 1.0
    cell2.observe()
    runtime2.step()
    assert runtime2.holds["rejected_by_arm"] == 1


def test_trace_report_and_dashboard_render(tmp_path) -> None:
    from rich.console import Console

    from demuse_ros.runtime.dashboard import Dashboard
    from demuse_ros.runtime.report import write_report

    runtime, cell = _runtime(ScriptedPolicy())
    for _ in range(5):
        cell.observe()
        runtime.step()
    assert runtime.trace.n == 5 and np.isfinite(runtime.trace.column("cycle_ms")).all()
    paths = write_report(tmp_path, runtime.trace, runtime.stats(), rate_hz=10.0, force_limit_n=40)
    assert [p.name for p in paths] == [
        "run.json",
        "loop_period.png",
        "force.png",
        "blocking_latency.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
    board = Dashboard()
    status = {
        **runtime.stats(),
        "arm_rejected": 0.0,
        "step_clamps": 0.0,
        "hold": 0.0,
        "fault": 0.0,
        "servo_hz": 125.0,
        "servo_p99_ms": 8.1,
        "ft_hz": 100.0,
        "camera_fps": 30.0,
        "task": "running",
    }
    board.update(status)
    console = Console(record=True, width=160)
    console.print(board._render())
    text = console.export_text()
    assert "cycles 5" in text and "servo 125.0 Hz" in text


def test_an_episode_outlives_its_policy_until_the_task_sees_the_end() -> None:
    from types import SimpleNamespace

    from demuse_ros.runtime.policies import EpisodeEnd

    policy = SimpleNamespace(done=False)
    end = EpisodeEnd(grace_cycles=20)
    assert not end.reached(10, {"done": False}, policy)
    policy.done = True  # last command sent; the arm has not lifted yet
    assert not end.reached(20, {"done": False}, policy)
    assert not end.reached(30, {"done": False}, policy)
    assert end.reached(30, {"done": True}, policy)  # the task saw it: stop now
    assert end.reached(40, {"done": False}, policy)  # or after the grace, whatever happened
    assert end.reached(1, {"done": True}, SimpleNamespace())  # a model policy: the task decides


# ---------------------------------------------------------------------- closed loop
pytest.importorskip("mujoco", reason="needs the sim extra: pip install -e '.[sim]'")
pytest.importorskip("rtde_control", reason="needs ur_rtde 1.6.5")


@pytest.mark.slow
def test_expert_closed_loop_through_the_whole_stack(tmp_path) -> None:
    from demuse_ros.runtime.runner import run_sim
    from demuse_ros.twin.runner import SimConfig
    from demuse_ros.twin.ur_servers import URServersConfig

    host = "127.0.0.84"
    base = SimConfig()
    sim = replace(
        base,
        ur_servers=URServersConfig(host=host),
        modbus=replace(base.modbus, host=host, port=5084),
    )
    # recorded (demuse run --record), no report folder
    result = run_sim(sim, policy="expert", cycles=150, record_dir=str(tmp_path))
    print(result)
    from demuse_ros.record.reader import open_episode

    rec = result["recording"]
    assert rec["lost"] == {"camera": 0, "ft": 0, "arm": 0} and rec["dropped"] == 0
    with open_episode(rec["path"]) as episode:
        assert episode.metadata["success"] is result["task"]["success"]
        assert episode.counts["action_chunk"] == result["chunks_sent"]
        assert episode.counts["camera/color/image_raw"] == rec["records"]["camera"] > 0
    arm = result["arm"]
    # Every chunk went through the arm's safety filter (accepted or refused, none bypassed).
    assert arm["chunks_accepted"] + arm["chunks_rejected"] == result["chunks_sent"]
    assert arm["chunks_accepted"] >= 0.8 * result["chunks_sent"]
    assert result["cycles"] >= 40 and result["tick_hz"] == pytest.approx(10.0, rel=0.1)
    assert result["task"]["done"] and result["task"]["success"], result["task"]
    assert arm["fault"] == 0.0
