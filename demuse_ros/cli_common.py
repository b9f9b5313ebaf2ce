"""Helpers shared by the ``demuse`` subcommands: argument types, output, config loading."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


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
        from demuse_ros.twin.sim_config import scale_camera

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


def _add_policy_args(p: argparse.ArgumentParser, *, sim_only_expert: bool = True) -> None:
    """``--policy``, ``--inference``, ``--sai-steps``, ``--task``, ``--stride`` (demuse run
    and demuse eval); :func:`_runtime_config` turns them into a ``RuntimeConfig``."""
    from demuse_ros.paths import DEFAULT_POLICY

    expert = "the twin's scripted expert, --sim only" if sim_only_expert else "the scripted expert"
    p.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        help=f"a checkpoint folder, a shipped checkpoint's name (default {DEFAULT_POLICY}: "
        f"models/README.md) or 'expert' ({expert})",
    )
    p.add_argument(
        "--inference",
        choices=("sync", "sai"),
        default="sai",
        help="checkpoint policies in real time: synchronous or speculative asynchronous "
        "inference (lockstep evaluation always runs synchronously)",
    )
    p.add_argument(
        "--sai-steps",
        type=int,
        default=6,
        help="denoising steps run speculatively before the real observation (0 = sync)",
    )
    p.add_argument("--task", type=int, default=0, help="task id the policy is conditioned on")
    p.add_argument(
        "--stride",
        type=int,
        help="checkpoint policies: cycles between chunks (default: chunk.stride, 8)",
    )


def _runtime_config(args: argparse.Namespace) -> Any:
    """The default ``RuntimeConfig`` with the :func:`_add_policy_args` choices applied."""
    import dataclasses

    from demuse_ros.config import ConfigError
    from demuse_ros.runtime.inference import InferenceConfig
    from demuse_ros.runtime.scheduler import RuntimeConfig

    inference = InferenceConfig(mode=args.inference, sai_steps=args.sai_steps, task=args.task)
    config = dataclasses.replace(RuntimeConfig(), inference=inference)
    if args.stride is None:
        return config
    try:
        chunk = dataclasses.replace(config.chunk, stride=args.stride)
    except ConfigError as err:
        raise SystemExit(f"--stride {err.detail.lstrip()}") from None
    return dataclasses.replace(config, chunk=chunk)
