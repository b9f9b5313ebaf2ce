"""``demuse teleop``: drive the arm by keyboard, SpaceMouse or by hand (freedrive).

Every device but freedrive goes through the arm driver's safety filter and servo
interpolator as a policy's chunks do (:mod:`demuse_ros.teleop`). ``--sim`` starts
the simulated cell first; without it the drivers connect to the addresses in the
policy-node parameter file, as ``demuse drivers`` does. Teleop parameters are the
``teleop`` group of that file; ``--set teleop.speed_scale=0.3`` overrides one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from demuse_ros.cli_cell import _add_cell_args, _load_cell_config, _sim_args
from demuse_ros.cli_common import (
    _load_sim_config,
    _parse_overrides,
    _positive_float,
    _print_result,
    _stop_on_sigterm,
)

log = logging.getLogger("demuse.teleop")


def _teleop_config(args: argparse.Namespace) -> Any:
    from demuse_ros.config import load_config
    from demuse_ros.paths import find_config
    from demuse_ros.teleop import TeleopConfig

    overrides = _parse_overrides(args.set or [])
    mine = {k[len("teleop.") :]: v for k, v in overrides.items() if k.startswith("teleop.")}
    path = args.config or find_config("demuse.yaml")
    return load_config(str(path), TeleopConfig, "policy_node", section="teleop", overrides=mine)


def _controller(cell: Any, config: Any, recorder: Any) -> Any:
    """The teleop controller; with a recorder, every chunk it sends is logged too."""
    from demuse_ros.teleop import TeleopController

    controller = TeleopController(cell, config)
    if recorder is not None:
        controller.add_chunk_listener(recorder.log_chunk)
    return controller


def _keyboard(cell: Any, twin: Any, config: Any, args: argparse.Namespace, recorder: Any):
    from demuse_ros.teleop import TerminalKeyboard
    from demuse_ros.teleop.session import StatusLine, run_teleop

    device = TerminalKeyboard(config)
    print(f"keyboard teleop: {device.help}", flush=True, file=sys.stderr)
    with device:
        return run_teleop(
            _controller(cell, config, recorder),
            device,
            seconds=args.seconds,
            status_line=StatusLine(),
        )


def _spacemouse(cell: Any, twin: Any, config: Any, args: argparse.Namespace, recorder: Any):
    from demuse_ros.teleop import SpaceMouse
    from demuse_ros.teleop.session import StatusLine, run_teleop

    device = SpaceMouse(config)
    print(f"SpaceMouse teleop: {device.help}", flush=True, file=sys.stderr)
    with device:
        return run_teleop(
            _controller(cell, config, recorder),
            device,
            seconds=args.seconds,
            status_line=StatusLine(),
        )


def _freedrive(cell: Any, twin: Any, config: Any, args: argparse.Namespace, recorder: Any):
    from demuse_ros.teleop import KeyboardConfig, TerminalKeyboard
    from demuse_ros.teleop.session import StatusLine, run_freedrive

    with contextlib.ExitStack() as stack:
        keys = None
        if sys.stdin.isatty():
            keys = stack.enter_context(TerminalKeyboard(config, KeyboardConfig(disarm_after_s=0.0)))
            hand = "  (twin: w/s a/d r/f i/k j/l u/o move the emulated hand)" if twin else ""
            print(
                f"freedrive: e teach mode on, space off, g/h gripper, q quit{hand}",
                flush=True,
                file=sys.stderr,
            )
        else:
            print(
                "freedrive: teach mode on for the whole session (no terminal)",
                flush=True,
                file=sys.stderr,
            )
        return run_freedrive(
            cell, keys, twin=twin, config=config, seconds=args.seconds, status_line=StatusLine()
        )


def _needs_terminal() -> str | None:
    if sys.stdin.isatty():
        return None
    return "the keyboard device needs a terminal on stdin (or use --device freedrive)"


def _needs_pyspacemouse() -> str | None:
    import importlib.util

    from demuse_ros.teleop.devices import SPACEMOUSE_INSTALL

    return SPACEMOUSE_INSTALL if importlib.util.find_spec("pyspacemouse") is None else None


#: --device name -> what it needs, checked before anything starts (None: ready)
PRECHECKS: dict[str, Callable[[], str | None]] = {
    "keyboard": _needs_terminal,
    "spacemouse": _needs_pyspacemouse,
    "freedrive": lambda: None,
}

#: --device name -> session(cell, twin or None, teleop config, args, recorder or None)
#: -> summary
SESSIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "keyboard": _keyboard,
    "spacemouse": _spacemouse,
    "freedrive": _freedrive,
}


def _teleop(args: argparse.Namespace) -> int:
    from demuse_ros.drivers.cell import Cell, sim_cell_config

    problem = PRECHECKS[args.device]()
    if problem:
        raise SystemExit(f"demuse teleop: {problem}")
    config = _teleop_config(args)
    cell_set = [s for s in (args.set or []) if not s.strip().startswith("teleop.")]
    cell_config = _load_cell_config(argparse.Namespace(config=args.config, set=cell_set))
    config.check_against(cell_config.arm.safety)  # fail before anything starts
    _stop_on_sigterm()
    with contextlib.ExitStack() as stack:
        twin = None
        if args.sim:
            from demuse_ros.twin.runner import TwinProcess

            twin = stack.enter_context(TwinProcess(_load_sim_config(_sim_args(args))))
            cell_config = sim_cell_config(cell_config, twin.endpoints)
        cell = stack.enter_context(Cell(cell_config))
        recorder = None
        if args.record:
            recorder = stack.enter_context(_recorder(cell, args))
        result = SESSIONS[args.device](cell, twin, config, args, recorder)
        if recorder is not None:
            path = recorder.stop_episode(success=result.get("success"))
            result["recording"] = {"path": str(path), **recorder.stats()}
    _print_result(result, args.json)
    return 0


def _recorder(cell: Any, args: argparse.Namespace) -> Any:
    """A started recorder with the session's episode open (``--record DIR``)."""
    from demuse_ros.record.meta import EpisodeMeta
    from demuse_ros.record.recorder import Recorder, RecorderConfig

    intrinsics = None
    if args.sim:
        from demuse_ros.record.session import sim_intrinsics

        intrinsics = sim_intrinsics(_load_sim_config(_sim_args(args)))
    recorder = Recorder.from_cell(
        cell,
        RecorderConfig(out_dir=args.record),
        intrinsics=intrinsics,
        base_metadata={"source": "twin" if args.sim else "cell", "teleop": args.device},
    )
    recorder.start()
    recorder.start_episode(
        EpisodeMeta(task=args.task_name, operator=args.operator, notes=args.notes)
    )
    return recorder


def _add_teleop(p: argparse.ArgumentParser) -> None:
    _add_cell_args(p)
    p.add_argument(
        "--device",
        choices=tuple(SESSIONS),
        default="keyboard",
        help="keyboard (this terminal), spacemouse (pip install pyspacemouse) or freedrive "
        "(UR teach mode: move the arm by hand)",
    )
    p.add_argument(
        "--seconds", type=_positive_float, help="stop after this long (default: until q/Ctrl-C)"
    )
    p.add_argument("--json", action="store_true", help="print the session summary as JSON")
    p.add_argument(
        "--record",
        metavar="DIR",
        help="record the session as one MCAP episode into DIR (commanded chunks included)",
    )
    p.add_argument("--task-name", default="", help="with --record: the task demonstrated")
    p.add_argument("--operator", default="", help="with --record: who demonstrated it")
    p.add_argument("--notes", default="", help="with --record: free-text notes")
    p.set_defaults(handler=_teleop)
