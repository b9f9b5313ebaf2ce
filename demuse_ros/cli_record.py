"""``demuse record`` (episodes to MCAP, ``--recover``) and ``demuse bench record``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from demuse_ros.cli_cell import _add_cell_args, _load_cell_config, _sim_args
from demuse_ros.cli_common import (
    _load_sim_config,
    _positive_float,
    _print_result,
    _stop_on_sigterm,
)

log = logging.getLogger("demuse.record")


def _recorder_config(args: argparse.Namespace, out_dir: str) -> Any:
    from demuse_ros.record.recorder import RecorderConfig

    return RecorderConfig(out_dir=out_dir, compression=args.compression)


def _recover(files: list[str], as_json: bool) -> int:
    from demuse_ros.record.reader import EpisodeError
    from demuse_ros.record.recover import recover

    failed, reports = 0, []
    for name in files:
        try:
            report = recover(name)
        except (EpisodeError, FileExistsError, OSError) as exc:
            log.error("%s", exc)
            failed += 1
            continue
        log.info("%s", report.describe())
        reports.append(
            {k: str(v) if k in ("source", "output") else v for k, v in vars(report).items()}
        )
    if as_json:
        _print_result({"recovered": reports, "failed": failed}, True)
    return 1 if failed else 0


def _record(args: argparse.Namespace) -> int:
    if args.recover:
        return _recover(args.recover, args.json)
    if not args.sim:
        raise SystemExit(
            "demuse record: recording the real cell comes with the ROS 2 layer (and "
            "`demuse run --record`); use --sim for the simulated cell, or --recover FILE"
        )
    from demuse_ros.record.meta import EpisodeMeta
    from demuse_ros.record.session import record_sim

    def report(status: dict[str, Any]) -> None:
        log.info(
            "%s %.1f s  records %s  lost %d  dropped %d  backlog %.1f MB  task %s",
            "REC" if status["recording"] else "---",
            status["episode_s"],
            status["records"],
            status["lost"],
            status["dropped"],
            status["backlog_mb"],
            status["task"],
        )

    _stop_on_sigterm()
    meta = EpisodeMeta(task=args.task, operator=args.operator, notes=args.notes)
    expert = None
    if args.expert_hold_s is not None:
        from demuse_ros.runtime.policies import ExpertPolicy

        expert = ExpertPolicy.default_config(hold_s=args.expert_hold_s)
    result = record_sim(
        _load_sim_config(_sim_args(args)),
        cell_config=_load_cell_config(args),
        recorder_config=_recorder_config(args, args.out),
        expert_config=expert,
        meta=meta,
        episodes=args.episodes,
        seconds=args.seconds,
        keyboard=args.keyboard,
        report=report,
    )
    _print_result(result, args.json)
    return 0


def _add_record(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    p.add_argument(
        "--recover",
        nargs="+",
        metavar="FILE",
        help="rewrite interrupted episode files (*.mcap.part) as indexed MCAP files and exit",
    )
    p.add_argument(
        "--out", default="episodes", help="folder for the episode files (default episodes/)"
    )
    p.add_argument(
        "--episodes", type=int, default=1, help="automatic episodes (no keyboard; default 1)"
    )
    p.add_argument(
        "--seconds",
        type=_positive_float,
        help="longest automatic episode (it ends early when the task is done); with the "
        "keyboard: the whole session",
    )
    p.add_argument("--task", default="dispense", help="task name stored with each episode")
    p.add_argument("--operator", default="", help="operator name stored with each episode")
    p.add_argument("--notes", default="", help="free-text notes stored with each episode")
    p.add_argument(
        "--compression",
        choices=("none", "lz4", "zstd"),
        default="lz4",
        help="MCAP chunk compression (default lz4: see README for what keeps up)",
    )
    p.add_argument(
        "--keyboard",
        action=argparse.BooleanOptionalAction,
        default=sys.stdin.isatty(),
        help="s start/stop, d discard, y/n success, r reset, q quit (default: when stdin is a "
        "terminal; otherwise automatic episodes)",
    )
    p.add_argument(
        "--expert-hold-s",
        type=_positive_float,
        help="how long the scripted expert holds the force before it lifts (default 0.7 s; "
        "the task needs 0.5 s in the band)",
    )
    p.add_argument("--json", action="store_true", help="print the session's statistics as JSON")
    p.set_defaults(handler=_record)


# ---------------------------------------------------------------------- bench
def _bench_record(args: argparse.Namespace) -> int:
    from demuse_ros.bench import record_bench

    if not args.sim:
        raise SystemExit("demuse bench record: records the simulated cell; use --sim")
    result = record_bench.run(
        args.seconds,
        _load_sim_config(_sim_args(args)),
        cell_config=_load_cell_config(args),
        compression=args.compression,
        keep_dir=args.keep,
    )
    _print_result(result, args.json)
    return 0


def _add_bench_record(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    p.add_argument(
        "--seconds", type=_positive_float, default=10.0, help="episode length (default 10)"
    )
    p.add_argument(
        "--compression", choices=("none", "lz4", "zstd"), default="lz4", help="chunk compression"
    )
    p.add_argument("--keep", help="keep the episode file in this folder (default: deleted)")


__all__ = ["_add_bench_record", "_add_record", "_bench_record", "_record"]
