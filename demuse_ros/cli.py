"""The ``demuse`` command: one entry point, subcommands from small registries.

Only subcommands that work are registered; each adds its own arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

from demuse_ros import __version__

Handler = Callable[[argparse.Namespace], int]


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=None, sort_keys=False))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = json.dumps(value)
        print(f"{key:<{width}}  {value}")


# ---------------------------------------------------------------------- bench
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


#: bench name -> (help, add arguments, handler)
BENCHMARKS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "sync": (
        "synchronizer tick and shared-memory frame write with live writers at real rates",
        _add_bench_sync,
        _bench_sync,
    ),
}


def _add_bench(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, (help_text, add_args, handler) in BENCHMARKS.items():
        bp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(bp)
        bp.add_argument("--json", action="store_true", help="print one JSON object")
        bp.set_defaults(handler=handler)


#: command name -> (help, add arguments)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "bench": ("measure a component and print numbers (and ratios against goals)", _add_bench),
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
