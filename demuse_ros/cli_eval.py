"""``demuse eval --sim``: a policy's success rate over seeded episodes (lockstep or real time)."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from demuse_ros.cli_cell import _add_cell_args, _load_cell_config, _sim_args
from demuse_ros.cli_common import (
    _add_policy_args,
    _load_sim_config,
    _print_result,
    _runtime_config,
    _stop_on_sigterm,
)
from demuse_ros.paths import resolve_policy

log = logging.getLogger("demuse.eval")


def _eval(args: argparse.Namespace) -> int:

    from demuse_ros.evaluation.run import (
        evaluate_lockstep,
        evaluate_realtime,
        summarize,
        write_outputs,
    )

    if not args.sim:
        raise SystemExit("demuse eval: evaluates in the simulated cell; add --sim")
    if args.episodes < 1:
        raise SystemExit("demuse eval: --episodes must be at least 1")
    runtime_config = _runtime_config(args)

    def progress(record: dict[str, Any]) -> None:
        log.info(
            "seed %d: %s (%s) in %.1f s",
            record["seed"],
            "success" if record["success"] else "failure",
            record["reason"],
            record["time_to_done_s"],
        )

    policy = resolve_policy(args.policy)
    run = evaluate_lockstep if args.mode == "lockstep" else evaluate_realtime
    _stop_on_sigterm()
    t0 = time.monotonic()
    records = run(
        _load_sim_config(_sim_args(args)),
        policy,
        args.episodes,
        seed=args.seed,
        runtime_config=runtime_config,
        cell_config=_load_cell_config(args),
        progress=progress,
        max_s=args.max_seconds,
    )
    result = {
        "policy": policy,
        "mode": args.mode,
        "inference": args.inference if args.policy != "expert" else "expert",
        "seed": args.seed,
        "wall_s": time.monotonic() - t0,
        "summary": summarize(records),
        "episodes": records,
    }
    out = args.out or time.strftime("runs/eval-%Y%m%d-%H%M%S")
    result["files"] = [str(p) for p in write_outputs(out, result)]
    if args.json:
        _print_result(result, True)
    else:
        _print_result({**result["summary"], "files": result["files"]}, False)
    return 0


def _add_eval(p: argparse.ArgumentParser) -> None:
    from demuse_ros.evaluation.run import EVAL_SEED

    _add_cell_args(p)
    _add_policy_args(p, sim_only_expert=False)
    p.add_argument("--episodes", type=int, default=10, help="episodes (default 10)")
    p.add_argument(
        "--mode",
        choices=("lockstep", "realtime"),
        default="lockstep",
        help="lockstep (no wall clock: the policy) or realtime (drivers, 10 Hz runtime)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=EVAL_SEED,
        help=f"placement seed of the first episode (default {EVAL_SEED}, away from "
        "the demonstrations' seeds)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        help="end an episode after this long (default: the task's own timeout)",
    )
    p.add_argument("--out", help="where eval.json and eval.png go (default runs/eval-<time>)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(handler=_eval)


__all__ = ["_add_eval"]
