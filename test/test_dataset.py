"""Recorded episodes → training episodes (replay through the synchronizer) → LeRobot v3.

The episode is written by the real :class:`Recorder` from in-process rings that a
test fills with a known motion on a synthetic clock: camera 30 Hz (arriving 20 ms
after capture), F/T 100 Hz, arm 125 Hz, and a commanded chunk every 100 ms. So
every replayed value can be checked against the closed form.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mcap_ros2", reason="needs mcap-ros2-support (core dependency)")

from demuse_ros.dataset.replay import (
    CommandedPath,
    ReplayConfig,
    episode_files,
    load_episodes,
    replay_episode,
)
from demuse_ros.record.meta import EpisodeMeta
from demuse_ros.record.reader import EpisodeNotFoundError, NotAnEpisodeError
from demuse_ros.record.recorder import Recorder, RecorderConfig
from demuse_ros.sync.streams import arm_schema, camera_schema, ft_schema
from demuse_ros.transport import RingBuffer

W, H = 40, 30
MS = 1_000_000
T0 = 1_000_000_000_000  # synthetic monotonic clock (ns)
SPEED_M_S = 0.05


def x_at(t_ns: int) -> float:
    """The arm's TCP x (m) along the scripted motion."""
    return 0.3 + SPEED_M_S * (t_ns - T0) / 1e9


def _record(
    out: Path, seconds: float = 2.0, ft_gap: tuple[float, float] | None = None, success=True
) -> Path:
    rings = {
        "camera": RingBuffer.create(camera_schema(W, H), 256),
        "ft": RingBuffer.create(ft_schema(), 1024),
        "arm": RingBuffer.create(arm_schema(), 1024),
    }
    cfg = RecorderConfig(out_dir=str(out), flush_interval_s=0.05)
    with Recorder(rings, cfg) as rec:
        rec.start_episode(EpisodeMeta(task="press", operator="test"))
        events = []
        for k in range(round(seconds * 125)):
            events.append((T0 + k * 8 * MS, "arm"))
        for k in range(round(seconds * 100)):
            t = T0 + k * 10 * MS
            if ft_gap is None or not (ft_gap[0] <= (t - T0) / 1e9 < ft_gap[1]):
                events.append((t, "ft"))
        for k in range(round(seconds * 30)):
            events.append((T0 + round(k * 1e9 / 30), "camera"))
        for k in range(round(seconds * 10)):
            events.append((T0 + k * 100 * MS, "chunk"))
        for t, kind in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == "arm":
                pose = np.array([x_at(t), 0.4, 0.3, np.pi, 0.0, 0.0])
                rings["arm"].put(
                    t,
                    t + 1 * MS,
                    (t - T0) / 1e9,
                    joint_positions_rad=np.zeros(6),
                    joint_velocities_rad_s=np.zeros(6),
                    tcp_pose=pose,
                    tcp_speed=np.r_[SPEED_M_S, 0, 0, 0, 0, 0],
                    robot_mode=7,
                    safety_mode=1,
                    runtime_state=2,
                )
            elif kind == "ft":
                fz = (t - T0) / 1e8  # 10 N/s
                rings["ft"].put(
                    t,
                    t + 1 * MS,
                    wrench=np.r_[0, 0, fz, 0, 0, 0],
                    finger_wrenches=np.zeros((2, 6)),
                    gripper_width_m=0.05,
                )
            elif kind == "camera":
                n = round((t - T0) * 30 / 1e9)
                rings["camera"].put(
                    t,
                    t + 20 * MS,
                    (t - T0) / 1e9,
                    rgb=np.full((H, W, 3), n % 256, np.uint8),
                    depth_m=np.full((H, W), 0.5 + 0.001 * n, np.float32),
                    frame_number=n,
                )
            else:  # the command: 1 cm ahead of the scripted motion
                wp = t + np.arange(1, 6) * 100 * MS
                poses = np.array([[x_at(w) + 0.01, 0.4, 0.3, np.pi, 0, 0] for w in wp])
                rec.log_chunk(t, wp, poses, np.full(5, 0.04))
        rec.mark_success(success)
        path = rec.stop_episode()
    for ring in rings.values():
        ring.close()
    return path


@pytest.fixture(scope="module")
def episode_file(tmp_path_factory) -> Path:
    return _record(tmp_path_factory.mktemp("rec"))


def test_replay_aligns_like_the_runtime_and_reads_commanded_actions(episode_file) -> None:
    ep, stats = replay_episode(episode_file)
    # 60 frames at 30 Hz, ticks every third: 20 ticks, all valid (the last frames'
    # F/T and arm samples around the anchor exist: the recording runs 2 s for all)
    assert stats.ticks == stats.valid == 20 and stats.invalid == {}
    assert stats.task == "press" and stats.chunks == 20 and stats.action_source == "action_chunk"
    assert ep.rgb.shape == (20, H, W, 3) and ep.depth_m.shape == (20, H, W)
    frames = ep.rgb[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(frames, np.arange(0, 60, 3))  # every third frame, in order
    t_anchor = T0 + np.round(frames * 1e9 / 30).astype(np.int64)
    # state: the arm pose interpolated at the frame's capture time (exact for this motion)
    np.testing.assert_allclose(ep.state[:, 0], [x_at(t) for t in t_anchor], atol=1e-9)
    np.testing.assert_allclose(ep.state[:, 6], 0.05)
    np.testing.assert_allclose(ep.wrench[:, 2], (t_anchor - T0) / 1e8, atol=1e-9)
    np.testing.assert_allclose(ep.depth_m[:, 0, 0], 0.5 + 0.001 * frames, atol=1e-6)
    # action: the commanded target one tick after the anchor (1 cm ahead of the motion)
    np.testing.assert_allclose(
        ep.actions[:, 0], [x_at(t + 100 * MS) + 0.01 for t in t_anchor], atol=1e-9
    )
    np.testing.assert_allclose(ep.actions[:, 6], 0.04)
    # rotation vectors in the model's representation: π about x is stored as −π about x,
    # the one nearest the tool-down reference, in state and actions alike
    np.testing.assert_allclose(ep.actions[:, 3], -np.pi, atol=1e-9)
    np.testing.assert_allclose(ep.state[:, 3], -np.pi, atol=1e-9)


def test_replay_at_model_sizes_uses_the_models_preprocessing(episode_file) -> None:
    ep, _ = replay_episode(episode_file, ReplayConfig(image_size_px=16, depth_grid=4))
    assert ep.rgb.shape == (20, 16, 16, 3) and ep.depth_m.shape == (20, 4, 4)
    np.testing.assert_array_equal(ep.rgb[:, 5, 5, 1], np.arange(0, 60, 3))  # uniform frames


def test_invalid_ticks_are_skipped_and_counted(tmp_path) -> None:
    path = _record(tmp_path, ft_gap=(0.5, 1.0))  # the F/T stream is silent for 0.5 s
    ep, stats = replay_episode(path)
    assert stats.ticks == 20 and stats.valid < 20 and sum(stats.invalid.values()) > 0
    assert set(stats.invalid) <= {"ft_too_far", "ft_missing"}
    assert len(ep.rgb) == stats.valid


def test_commanded_path_uses_the_newest_chunk_sent_before() -> None:
    a = (0, np.array([10, 20]), np.array([[0.0] * 6, [1.0, 0, 0, 0, 0, 0]]))
    b = (15, np.array([16, 30]), np.array([[5.0, 0, 0, 0, 0, 0], [5.0, 0, 0, 0, 0, 0]]))
    path = CommandedPath([b, a])
    assert path.at(-1) is None
    assert path.at(12)[0] == pytest.approx(0.2)  # chunk a, interpolated
    assert path.at(18)[0] == pytest.approx(5.0)  # chunk b replaced it at 15


def test_loading_folders_filters_and_errors(tmp_path, episode_file) -> None:
    _record(tmp_path / "b", seconds=1.0, success=False)
    eps, stats = load_episodes([episode_file.parent, tmp_path / "b"])
    assert len(eps) == 2 and {s.valid for s in stats} == {20, 10}
    eps, _ = load_episodes([episode_file.parent, tmp_path / "b"], successful_only=True)
    assert len(eps) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no episode"):
        episode_files([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_episodes([tmp_path / "nope.mcap"])
    with pytest.raises(EpisodeNotFoundError):
        replay_episode(tmp_path / "nope.mcap")
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file at all")
    with pytest.raises(NotAnEpisodeError):
        replay_episode(tmp_path / "junk.mcap")


def test_lerobot_v3_export_reads_back(tmp_path, episode_file) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the lerobot extra")
    av = pytest.importorskip("av", reason="needs the lerobot extra")
    from demuse_ros.dataset.lerobot import VIDEO_KEY, export_lerobot

    eps, _ = load_episodes([episode_file, episode_file])
    out = tmp_path / "lerobot"
    summary = export_lerobot(eps, out, fps=10, task_names=["press"])
    assert summary["episodes"] == 2 and summary["frames"] == 40
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 40 and info["fps"] == 10
    assert info["features"][VIDEO_KEY]["shape"] == [H, W, 3]
    data = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    assert data["index"] == list(range(40)) and data["episode_index"] == [0] * 20 + [1] * 20
    np.testing.assert_allclose(np.array(data["action"])[:20], eps[0].actions, atol=1e-6)
    np.testing.assert_allclose(np.array(data["observation.wrench"])[20:], eps[1].wrench, atol=1e-5)
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (0, 20),
        (20, 40),
    ]
    assert episodes[1][f"videos/{VIDEO_KEY}/from_timestamp"] == pytest.approx(2.0)
    tasks = pq.read_table(out / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0], "task": ["press"]}
    stats = json.loads((out / "meta/stats.json").read_text())
    assert stats["action"]["count"] == [40]
    with av.open(str(out / f"videos/{VIDEO_KEY}/chunk-000/file-000.mp4")) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 40 and frames[0].shape == (H, W, 3)
    # lossy, but a uniform grey frame stays within a few levels
    assert abs(int(frames[25][H // 2, W // 2, 0]) - int(eps[1].rgb[5, H // 2, W // 2, 0])) <= 4
    with pytest.raises(FileExistsError, match="overwrite"):
        export_lerobot(eps, out, fps=10)
    assert not (tmp_path / "lerobot.partial").exists()


def test_demuse_train_on_recordings(tmp_path, episode_file, capsys, monkeypatch) -> None:
    pytest.importorskip("torch", reason="needs the model extra")
    monkeypatch.setenv("DEMUSE_CACHE_DIR", str(tmp_path / "cache"))  # not the user's cache
    from demuse_ros.cli import main
    from demuse_ros.model.checkpoint import load_policy

    sets = ["preset=tiny", "steps=2", "batch_size=4", "autoencoder_steps=1", "val_every=2"]
    sets += ["val_batches=1", "warmup_steps=1", "val_fraction=0.5"]
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--task-id", "3"]
    args += ["--recordings", str(episode_file), str(episode_file)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    assert "2 recorded episodes, 40 ticks" in capsys.readouterr().err
    assert len(list((tmp_path / "cache" / "replay").glob("*.npz"))) == 1  # one file, cached
    ckpt = load_policy(tmp_path / "run")
    # normalization statistics come from the recorded data: x spans the scripted motion
    offset = np.asarray(ckpt.normalization.state.offset)
    assert 0.29 < offset[0] < 0.4
    # the smoke of the learning loop: the fresh checkpoint closes the loop in the twin
    pytest.importorskip("mujoco", reason="needs the sim extra")
    out = tmp_path / "eval"
    args = ["eval", "--sim", "--policy", str(tmp_path / "run"), "--episodes", "1"]
    args += ["--max-seconds", "1.5", "--out", str(out), "--json"]
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    (episode,) = result["episodes"]
    assert result["mode"] == "lockstep" and episode["ticks"] >= 10 and episode["chunks"] >= 1


def test_replay_cache_returns_the_same_episode_and_follows_the_config(tmp_path, episode_file):
    cfg = ReplayConfig(image_size_px=16, depth_grid=4)
    (a,), (sa,) = load_episodes([episode_file], cfg, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    (b,), (sb,) = load_episodes([episode_file], cfg, cache_dir=tmp_path)
    assert sa == sb
    for name in ("rgb", "depth_m", "wrench", "state", "actions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    (c,), _ = load_episodes([episode_file], ReplayConfig(image_size_px=8), cache_dir=tmp_path)
    assert c.rgb.shape[1] == 8 and len(list(tmp_path.glob("*.npz"))) == 2
