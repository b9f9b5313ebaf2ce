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
from demuse_ros.timing.loop import PeriodicLoop

Handler = Callable[[argparse.Namespace], int]


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, ``ros2 launch`` escalation, ``kill``) stops like Ctrl-C: cleanly."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _jsonable(value: Any) -> Any:
    """NaN/Inf → None (JSON has no NaN), numpy scalars → Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), allow_nan=False)


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(_dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = json.dumps(value)
        print(f"{key:<{width}}  {value}")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` → ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(
                f"demuse: --set needs KEY=VALUE (e.g. --set task.hold_s=1.0), got {item!r}"
            )
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load_sim_config(args: argparse.Namespace) -> Any:
    from demuse_ros.config import load_config
    from demuse_ros.paths import find_config
    from demuse_ros.twin.interface import PERSONALITIES
    from demuse_ros.twin.runner import SimConfig

    overrides = _parse_overrides(args.set or [])
    if args.personality:
        overrides["controller.personality"] = args.personality
        overrides["plant.arm_model"] = PERSONALITIES[args.personality].arm_model
    if args.host:
        overrides["ur_servers.host"] = args.host
        overrides["modbus.host"] = args.host
    path = args.config or find_config("sim.yaml")
    config = load_config(path, SimConfig, "sim_node", overrides=overrides)
    scale = getattr(args, "camera_scale", None)
    if scale is not None and scale != 1.0:
        from demuse_ros.twin.runner import scale_camera

        config = scale_camera(config, scale)
    return config


def _add_camera_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--camera-scale",
        type=_positive_float,
        default=1.0,
        help="render the twin camera at this fraction of 640x480 (same view); 0.25 saves "
        "about half a core on small machines",
    )


def _add_sim_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="sim parameter file (default: the shipped config/sim.yaml)")
    _add_camera_scale(p)
    p.add_argument(
        "--personality",
        choices=("cb3", "e-series"),
        help="UR controller: cb3 (UR10, 125 Hz) or e-series (UR10e, 500 Hz)",
    )
    p.add_argument(
        "--host", help="loopback address to serve on (127.0.0.x; several twins need one each)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set task.target_force_n=8 (repeatable)",
    )


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

    import dataclasses
    import time

    from demuse_ros.runtime.inference import InferenceConfig
    from demuse_ros.runtime.scheduler import RuntimeConfig

    report_dir = args.report_dir or time.strftime("runs/run-%Y%m%d-%H%M%S")
    inference = InferenceConfig(mode=args.inference, sai_steps=args.sai_steps, task=args.task)
    runtime_config = dataclasses.replace(RuntimeConfig(), inference=inference)
    _stop_on_sigterm()
    result = run_sim(
        _load_sim_config(_sim_args(args)),
        policy=args.policy,
        cell_config=_load_cell_config(args),
        runtime_config=runtime_config,
        cycles=args.cycles,
        seconds=args.seconds,
        report=None if args.dashboard else report,
        dashboard=args.dashboard,
        report_dir=report_dir,
    )
    _print_result(result, args.json)
    return 0


def _add_run(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    p.add_argument(
        "--policy",
        default="expert",
        help="'expert' (the twin's scripted expert, --sim only) or a checkpoint folder",
    )
    p.add_argument(
        "--inference",
        choices=("sync", "sai"),
        default="sai",
        help="checkpoint policies: synchronous or speculative asynchronous inference",
    )
    p.add_argument(
        "--sai-steps",
        type=int,
        default=6,
        help="denoising steps run speculatively before the real observation (0 = sync)",
    )
    p.add_argument("--task", type=int, default=0, help="task id the policy is conditioned on")
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
        help="checkpoint folder (default: a small cpu-preset checkpoint trained once and cached)",
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
