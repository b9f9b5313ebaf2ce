"""The ``demuse`` command: one entry point, subcommands from small registries.

Only subcommands that work are registered; each adds its own arguments.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable

from demuse_ros import __version__
from demuse_ros.cli_cell import (
    _add_bench_drivers,
    _add_bench_loop,
    _add_drivers,
    _add_run,
    _bench_drivers,
    _bench_loop,
)
from demuse_ros.cli_common import (
    _add_sim_config_args,
    _dumps,
    _load_sim_config,
    _positive_float,
    _print_result,
    _stop_on_sigterm,
)
from demuse_ros.cli_dataset import _add_dataset
from demuse_ros.cli_eval import _add_eval
from demuse_ros.cli_record import _add_bench_record, _add_record, _bench_record
from demuse_ros.cli_teleop import _add_teleop
from demuse_ros.timing.loop import PeriodicLoop

Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------- sim
def _sim(args: argparse.Namespace) -> int:
    import time

    from demuse_ros.config import to_dict
    from demuse_ros.twin.runner import RealtimeTwin

    config = _load_sim_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump({"sim_node": {"ros__parameters": to_dict(config)}}, sort_keys=False))
        return 0
    log = logging.getLogger("demuse.sim")
    _stop_on_sigterm()
    with RealtimeTwin(config) as twin:
        print(_dumps({"endpoints": twin.endpoints()}), flush=True)
        end = time.monotonic() + args.seconds if args.seconds else math.inf
        tick = PeriodicLoop(1.0 / args.report_s if args.report_s > 0 else 10.0)
        try:
            while time.monotonic() < end:
                tick.wait()
                if args.report_s <= 0:
                    continue
                st = twin.stats()
                log.info(
                    "rtf %.3f  control %.1f Hz (p99 %.2f ms, %d overruns)  frames %d (%.1f ms)  "
                    "task %s",
                    st["realtime_factor"],
                    st["control_rate_hz"],
                    st["control_period_ms_p99"],
                    st["control_overruns"],
                    st["frames_rendered"],
                    st["render_ms_mean"],
                    st["task"]["reason"] or "running",
                )
        except KeyboardInterrupt:
            log.info("stopping the twin")
        if args.json:
            print(_dumps({"stats": twin.stats()}), flush=True)
    return 0


def _add_sim(p: argparse.ArgumentParser) -> None:
    _add_sim_config_args(p)
    p.add_argument(
        "--seconds", type=_positive_float, help="stop after this long (default: until Ctrl-C)"
    )
    p.add_argument(
        "--report-s", type=float, default=2.0, help="log a status line this often (0: never)"
    )
    p.add_argument("--json", action="store_true", help="print final statistics as JSON")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved parameters and exit"
    )
    p.set_defaults(handler=_sim)


def _bench_sync(args: argparse.Namespace) -> int:
    from demuse_ros.bench import sync_bench

    result = sync_bench.run(args.seconds, width=args.width, height=args.height)
    _print_result(result, args.json)
    return 0


def _add_bench_sync(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds",
        type=_positive_float,
        default=10.0,
        help="how long the writers and the synchronizer run (default 10)",
    )
    p.add_argument("--width", type=int, default=640, help="camera width in pixels (default 640)")
    p.add_argument("--height", type=int, default=480, help="camera height in pixels (default 480)")


def _bench_twin(args: argparse.Namespace) -> int:
    from demuse_ros.bench import twin_bench

    config = _load_sim_config(args)
    result = twin_bench.run(
        args.seconds, args.episodes, config=config, host=args.host or "127.0.0.77"
    )
    _print_result(result, args.json)
    return 0


def _add_bench_twin(p: argparse.ArgumentParser) -> None:
    _add_sim_config_args(p)
    p.add_argument(
        "--seconds",
        type=_positive_float,
        default=5.0,
        help="real-time part: how long the RTDE stream is measured (default 5)",
    )
    p.add_argument(
        "--episodes",
        type=int,
        default=20,
        help="lockstep part: scripted-expert episodes (default 20)",
    )


def _add_bench_model(p: argparse.ArgumentParser) -> None:
    from demuse_ros.model import commands

    commands.add_bench_model(p)


def _bench_model(args: argparse.Namespace) -> int:
    from demuse_ros.model import commands

    return commands.bench_model(args)


#: bench name -> (help, add arguments, handler)
BENCHMARKS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "sync": (
        "synchronizer tick and shared-memory frame write with live writers at real rates",
        _add_bench_sync,
        _bench_sync,
    ),
    "twin": (
        "simulated workcell: real-time factor, RTDE rate, render cost, expert success",
        _add_bench_twin,
        _bench_twin,
    ),
    "loop": (
        "the closed loop with a checkpoint: rate, deadline misses, blocking latency sync "
        "vs SAI, SAI's action deviation",
        _add_bench_loop,
        _bench_loop,
    ),
    "drivers": (
        "arm servo timing, F/T rate, camera fps and latency against the twin, idle and "
        "under policy-sized CPU load",
        _add_bench_drivers,
        _bench_drivers,
    ),
    "model": (
        "policy model per preset: parameters, GFLOPs, CPU forward and DDIM-chunk latency",
        _add_bench_model,
        _bench_model,
    ),
    "record": (
        "sustained episode recording of the simulated cell: drops, write MB/s, recorder CPU",
        _add_bench_record,
        _bench_record,
    ),
    "policy": (
        "one action chunk's full denoising per inference backend (torch, onnxruntime, "
        "tensorrt): chunk and step latency, speedup over torch eager",
        lambda p: __import__("demuse_ros.bench.policy_bench", fromlist=["add_args"]).add_args(p),
        lambda args: __import__("demuse_ros.bench.policy_bench", fromlist=["main"]).main(args),
    ),
}


def _add_bench(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, (help_text, add_args, handler) in BENCHMARKS.items():
        bp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(bp)
        bp.add_argument("--json", action="store_true", help="print one JSON object")
        bp.set_defaults(handler=handler)


def _add_train(p: argparse.ArgumentParser) -> None:
    from demuse_ros.model import commands

    commands.add_train(p)


def _add_train_autoencoder(p: argparse.ArgumentParser) -> None:
    from demuse_ros.model import commands

    commands.add_train_autoencoder(p)


#: command name -> (help, add arguments)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "sim": ("run the simulated workcell (twin) and serve RTDE, Modbus and camera frames", _add_sim),
    "drivers": (
        "start the cell's drivers (arm, F/T + gripper, camera) and show live rates",
        _add_drivers,
    ),
    "run": (
        "run the 10 Hz policy loop on the cell (--sim: the simulated cell)",
        _add_run,
    ),
    "record": (
        "record episodes to MCAP (ROS 2 messages; --sim: the scripted expert), or --recover",
        _add_record,
    ),
    "teleop": (
        "drive the arm by keyboard, SpaceMouse or by hand (freedrive), through the safety "
        "filter (--sim: the simulated cell)",
        _add_teleop,
    ),
    "eval": (
        "a policy's success rate over seeded episodes in the simulated cell "
        "(lockstep or real time), with a plot",
        _add_eval,
    ),
    "dataset": (
        "replay recorded episodes as training data (info), export them to LeRobot v3",
        _add_dataset,
    ),
    "bench": ("measure a component and print numbers (and ratios against goals)", _add_bench),
    "train": ("train the DeMUSE policy (config/train.yaml) into a checkpoint folder", _add_train),
    "train-autoencoder": (
        "train the built-in image autoencoder on synthetic frames",
        _add_train_autoencoder,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demuse",
        description="DeMUSE diffusion-policy runtime for a UR10 + RG2-FT + D435i cell.",
    )
    parser.add_argument("--version", action="version", version=f"demuse_ros {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
