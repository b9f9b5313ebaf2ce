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


def _keyboard(cell: Any, twin: Any, config: Any, args: argparse.Namespace) -> dict[str, Any]:
    from demuse_ros.teleop import TeleopController, TerminalKeyboard
    from demuse_ros.teleop.session import StatusLine, run_teleop

    device = TerminalKeyboard(config)
    print(f"keyboard teleop: {device.help}", flush=True)
    with device:
        return run_teleop(
            TeleopController(cell, config), device, seconds=args.seconds, status_line=StatusLine()
        )


def _spacemouse(cell: Any, twin: Any, config: Any, args: argparse.Namespace) -> dict[str, Any]:
    from demuse_ros.teleop import SpaceMouse, TeleopController
    from demuse_ros.teleop.session import StatusLine, run_teleop

    device = SpaceMouse(config)
    print(f"SpaceMouse teleop: {device.help}", flush=True)
    with device:
        return run_teleop(
            TeleopController(cell, config), device, seconds=args.seconds, status_line=StatusLine()
        )


def _freedrive(cell: Any, twin: Any, config: Any, args: argparse.Namespace) -> dict[str, Any]:
    import sys

    from demuse_ros.teleop import KeyboardConfig, TerminalKeyboard
    from demuse_ros.teleop.session import StatusLine, run_freedrive

    with contextlib.ExitStack() as stack:
        keys = None
        if sys.stdin.isatty():
            keys = stack.enter_context(TerminalKeyboard(config, KeyboardConfig(disarm_after_s=0.0)))
            hand = "  (twin: w/s a/d r/f i/k j/l u/o move the emulated hand)" if twin else ""
            print(f"freedrive: e teach mode on, space off, g/h gripper, q quit{hand}", flush=True)
        else:
            print("freedrive: teach mode on for the whole session (no terminal)", flush=True)
        return run_freedrive(
            cell, keys, twin=twin, config=config, seconds=args.seconds, status_line=StatusLine()
        )


def _needs_terminal() -> str | None:
    import sys

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

#: --device name -> session(cell, twin or None, teleop config, args) -> summary
SESSIONS: dict[str, Callable[[Any, Any, Any, argparse.Namespace], dict[str, Any]]] = {
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
        result = SESSIONS[args.device](cell, twin, config, args)
    _print_result(result, args.json)
    return 0


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
    p.set_defaults(handler=_teleop)
