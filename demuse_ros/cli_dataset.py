"""``demuse dataset``: look at recorded episodes as training data, export them to LeRobot.

* ``demuse dataset info PATH...``: each episode replayed through the
  synchronizer (:mod:`demuse_ros.dataset.replay`): valid ticks, invalid ticks
  by reason, commanded chunks, success flag; and the normalization statistics
  the trainer would compute.
* ``demuse dataset export-lerobot PATH... --out DIR``: the LeRobot v3 layout
  (:mod:`demuse_ros.dataset.lerobot`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from demuse_ros.cli_common import _positive_float, _print_result


def _replay_config(args: argparse.Namespace, **sizes: int) -> Any:
    from demuse_ros.dataset.replay import ReplayConfig

    return ReplayConfig(tick_hz=args.tick_hz, task=args.task_id, **sizes)


def _load(args: argparse.Namespace, config: Any) -> tuple[list, list]:
    from demuse_ros.dataset.replay import load_episodes
    from demuse_ros.record.reader import EpisodeError

    try:
        episodes, stats = load_episodes(args.paths, config, successful_only=args.successful_only)
    except (EpisodeError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"demuse dataset: {err}") from None
    if not episodes:
        raise SystemExit("demuse dataset: no episode left (--successful-only?)")
    return episodes, stats


def _info(args: argparse.Namespace) -> int:
    from demuse_ros.model.config import PRESETS
    from demuse_ros.model.data import EpisodeWindows, NormalizationStats

    m = PRESETS[args.preset]
    episodes, stats = _load(
        args, _replay_config(args, image_size_px=m.image_size_px, depth_grid=m.latent_size)
    )
    norm = NormalizationStats.compute(
        EpisodeWindows(episodes, m.action_horizon, m.n_future_frames, args.frame_stride)
    )
    _print_result(
        {
            "episodes": [dataclasses.asdict(s) for s in stats],
            "total_ticks": sum(s.valid for s in stats),
            "invalid_ticks": sum(sum(s.invalid.values()) for s in stats),
            "normalization": norm.to_json(),
        },
        args.json,
    )
    return 0


def _task_names(task_id: int, stats: list) -> list[str]:
    """Task strings by id: the recorded task string names the episodes' task id."""
    names = [f"task {i}" for i in range(task_id + 1)]
    names[task_id] = stats[0].task or names[task_id]
    return names


def _export(args: argparse.Namespace) -> int:
    from demuse_ros.dataset.lerobot import export_lerobot

    episodes, stats = _load(args, _replay_config(args))
    try:
        summary = export_lerobot(
            episodes,
            args.out,
            fps=round(args.tick_hz),
            task_names=_task_names(args.task_id, stats),
            codec=args.codec,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ImportError, ValueError) as err:
        raise SystemExit(f"demuse dataset export-lerobot: {err}") from None
    _print_result(summary, args.json)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="episode files or folders of them")
    p.add_argument(
        "--tick-hz", type=_positive_float, default=10.0, help="control rate (default 10)"
    )
    p.add_argument("--task-id", type=int, default=0, help="the episodes' task id (default 0)")
    p.add_argument("--successful-only", action="store_true", help="only episodes marked successful")
    p.add_argument("--json", action="store_true", help="print JSON only")


def _add_dataset(p: argparse.ArgumentParser) -> None:
    from demuse_ros.dataset.lerobot import CODECS
    from demuse_ros.model.config import PRESETS

    sub = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    info = sub.add_parser(
        "info", help="replay episodes through the synchronizer and summarize them"
    )
    _common(info)
    info.add_argument(
        "--preset", choices=tuple(PRESETS), default="cpu", help="model sizes (default cpu)"
    )
    info.add_argument(
        "--frame-stride", type=int, default=4, help="ticks between predicted frames (default 4)"
    )
    info.set_defaults(handler=_info)
    export = sub.add_parser(
        "export-lerobot", help="write episodes as a LeRobot v3 dataset (Parquet + MP4)"
    )
    _common(export)
    export.add_argument("--out", required=True, help="dataset folder to create")
    export.add_argument("--codec", choices=CODECS, default=CODECS[0], help="video codec")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.set_defaults(handler=_export)


__all__ = ["_add_dataset"]
