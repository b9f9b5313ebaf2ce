"""``demuse drivers``, ``demuse run`` and the benchmarks of the whole cell (drivers, loop)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any

from demuse_ros.cli_common import (
    _add_camera_scale,
    _add_policy_args,
    _dumps,
    _load_sim_config,
    _parse_overrides,
    _positive_float,
    _print_result,
    _runtime_config,
    _stop_on_sigterm,
)
from demuse_ros.paths import resolve_policy
from demuse_ros.timing.loop import PeriodicLoop


# ---------------------------------------------------------------------- drivers
def _load_cell_config(args: argparse.Namespace) -> Any:
    from demuse_ros.drivers.cell import load_cell_config
    from demuse_ros.paths import find_config

    path = args.config or find_config("demuse.yaml")
    return load_cell_config(str(path), overrides=_parse_overrides(args.set or []))


def _add_cell_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="policy-node parameter file (default: the shipped config/demuse.yaml)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a driver parameter, e.g. --set arm.gain=500 (repeatable)",
    )
    p.add_argument(
        "--sim", action="store_true", help="start the simulated cell and connect the drivers to it"
    )
    p.add_argument("--sim-config", help="twin parameter file (default: config/sim.yaml)")
    _add_camera_scale(p)
    p.add_argument(
        "--personality", choices=("cb3", "e-series"), help="twin UR controller (with --sim)"
    )
    p.add_argument(
        "--host", help="twin loopback address, 127.0.0.x (with --sim; default 127.0.0.1)"
    )


def _sim_args(args: argparse.Namespace) -> argparse.Namespace:
    """The twin's arguments in the shape _load_sim_config reads."""
    return argparse.Namespace(
        config=args.sim_config,
        personality=args.personality,
        host=args.host,
        set=[],
        camera_scale=args.camera_scale,
    )


def _drivers(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from demuse_ros.drivers.cell import Cell, sim_cell_config

    log = logging.getLogger("demuse.drivers")
    cell_config = _load_cell_config(args)
    _stop_on_sigterm()
    with contextlib.ExitStack() as stack:
        if args.sim:
            from demuse_ros.twin.runner import TwinProcess

            twin = stack.enter_context(TwinProcess(_load_sim_config(_sim_args(args))))
            cell_config = sim_cell_config(cell_config, twin.endpoints)
            log.info("twin up: %s", twin.endpoints)
        cell = stack.enter_context(Cell(cell_config))
        log.info("drivers up; Ctrl-C stops the arm and closes everything")
        end = time.monotonic() + args.seconds if args.seconds else math.inf
        tick = PeriodicLoop(1.0 / args.report_s)
        cell.ring_rates_hz()
        try:
            while time.monotonic() < end:
                tick.wait()
                rates, st = cell.ring_rates_hz(), cell.stats()
                arm, ft, cam = st["arm"], st["ft"], st["camera"]
                log.info(
                    "arm %.1f Hz (servo %s, fault %d, hold %d, restarts %d)  ft %.1f Hz "
                    "(errors %d)  camera %.1f fps (render->ring %.1f ms, dropped %d)",
                    rates["arm"],
                    f"{arm['servo_rate_hz']:.1f} Hz" if arm["servo_commands"] else "idle",
                    arm["fault"],
                    arm["hold"],
                    arm["process_restarts"],
                    rates["ft"],
                    ft["timeouts"] + ft["exceptions"] + ft["io_errors"],
                    rates["camera"],
                    cam["twin_latency_ms_p50"] if args.sim else cam["latency_ms_p50"],
                    cam["dropped"],
                )
        except KeyboardInterrupt:
            log.info("Ctrl-C: stopping the arm, then the drivers")
        if args.json:
            print(_dumps(cell.stats()), flush=True)
    log.info("all stopped")
    return 0


def _add_drivers(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    p.add_argument(
        "--seconds", type=_positive_float, help="stop after this long (default: until Ctrl-C)"
    )
    p.add_argument(
        "--report-s", type=_positive_float, default=1.0, help="print rates this often (default 1)"
    )
    p.add_argument("--json", action="store_true", help="print final driver statistics as JSON")
    p.set_defaults(handler=_drivers)


# ---------------------------------------------------------------------- run
def _run(args: argparse.Namespace) -> int:
    from demuse_ros.runtime.runner import run_sim

    if not args.sim:
        raise SystemExit(
            "demuse run: only the simulated cell is wired up so far; add --sim "
            "(the hardware runner comes with the ROS 2 layer)"
        )
    log = logging.getLogger("demuse.run")

    def report(status: dict[str, Any]) -> None:
        log.info(
            "cycle %d  %.2f Hz  misses %d  policy %.1f ms  cycle p99 %.1f ms  holds %d  "
            "arm rejected %d  fault %d  hold %d  task %s",
            status["cycles"],
            status["tick_hz"],
            status["deadline_misses"],
            status["policy_ms_p50"],
            status["cycle_ms_p99"],
            sum(status["holds"].values()),
            status["arm_rejected"],
            status["fault"],
            status["hold"],
            status["task"],
        )

    import time

    report_dir = args.report_dir or time.strftime("runs/run-%Y%m%d-%H%M%S")
    runtime_config = _runtime_config(args)
    _stop_on_sigterm()
    result = run_sim(
        _load_sim_config(_sim_args(args)),
        policy=resolve_policy(args.policy),
        cell_config=_load_cell_config(args),
        runtime_config=runtime_config,
        cycles=args.cycles,
        seconds=args.seconds,
        report=None if args.dashboard else report,
        dashboard=args.dashboard,
        report_dir=report_dir,
        record_dir=args.record,
        record_meta={"operator": args.operator, "notes": args.notes} if args.record else None,
    )
    _print_result(result, args.json)
    return 0


def _add_run(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    _add_policy_args(p)
    p.add_argument("--cycles", type=int, help="stop after this many 10 Hz cycles")
    p.add_argument("--seconds", type=_positive_float, help="stop after this long")
    p.add_argument("--json", action="store_true", help="print the run's statistics as JSON")
    p.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="live terminal dashboard (default: when stderr is a terminal; else log lines)",
    )
    p.add_argument(
        "--report-dir",
        help="where run.json and the plots go (default: runs/run-<date>-<time>)",
    )
    p.add_argument(
        "--record",
        metavar="DIR",
        help="record the run as an MCAP episode into DIR (see demuse record)",
    )
    p.add_argument("--operator", default="", help="with --record: who ran it")
    p.add_argument("--notes", default="", help="with --record: free-text notes")
    p.set_defaults(handler=_run)


# ---------------------------------------------------------------------- bench
def _bench_drivers(args: argparse.Namespace) -> int:
    from demuse_ros.bench import drivers_bench

    if not args.sim:
        raise SystemExit(
            "demuse bench drivers: this benchmark moves the arm in a circle; run it against "
            "the simulated cell with --sim"
        )
    result = drivers_bench.run(
        args.seconds,
        _load_sim_config(_sim_args(args)),
        cell_config=_load_cell_config(args),
        load_workers=args.load_workers,
        load_duty=args.load_duty,
    )
    _print_result(result, args.json)
    return 0


def _bench_loop(args: argparse.Namespace) -> int:
    from demuse_ros.bench import loop_bench

    if not args.sim:
        raise SystemExit("demuse bench loop: runs the closed loop; use --sim (the simulated cell)")
    result = loop_bench.run(
        args.cycles,
        _load_sim_config(_sim_args(args)),
        policy=args.policy,
        cell_config=_load_cell_config(args),
        sai_steps=args.sai_steps,
    )
    _print_result(result, args.json)
    return 0


def _add_bench_loop(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    p.add_argument(
        "--policy",
        help="checkpoint folder or shipped name (default dispense-cpu: models/README.md)",
    )
    p.add_argument("--cycles", type=int, default=600, help="cycles per mode (default 600)")
    p.add_argument("--sai-steps", type=int, default=6, help="speculative steps (default 6)")


def _add_bench_drivers(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    p.add_argument(
        "--seconds", type=_positive_float, default=10.0, help="length of each phase (default 10)"
    )
    p.add_argument(
        "--load-workers", type=int, default=2, help="CPU-load processes (default 2 = all cores)"
    )
    p.add_argument(
        "--load-duty",
        type=float,
        default=0.6,
        help="busy fraction of each 100 ms (default 0.6: a 60 ms cpu-preset chunk per tick)",
    )
