"""CLI handlers for ``demuse train``, ``demuse train-autoencoder`` and ``demuse bench model``.

Registered in :mod:`demuse_ros.cli`. Importing this module does not import torch:
each handler imports what it needs, so ``demuse --help`` works without the
``model`` extra.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS

log = logging.getLogger("demuse.model")
TRAIN_NODE = "demuse_train"


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(
            "demuse: this command needs the model extra: pip install 'demuse_ros[model]'"
        ) from None


# ---------------------------------------------------------------------- train
def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory (becomes the policy checkpoint)")
    p.add_argument("--config", help="parameter file (default: the shipped config/train.yaml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set steps=500 --set model.n_layers=2 (repeatable)",
    )
    p.add_argument(
        "--recordings",
        nargs="+",
        metavar="PATH",
        help="train on recorded episodes (MCAP files or folders of them), replayed through "
        "the synchronizer, instead of the config's synthetic data",
    )
    p.add_argument(
        "--successful-only",
        action="store_true",
        help="with --recordings: only episodes marked successful",
    )
    p.add_argument(
        "--task-id", type=int, default=0, help="with --recordings: their task id (default 0)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.set_defaults(handler=train)


def _recorded_episodes(args: argparse.Namespace, cfg: Any) -> list | None:
    """``--recordings`` replayed at the model's input sizes (None without the flag)."""
    if not args.recordings:
        return None
    from demuse_ros.dataset.replay import ReplayConfig, default_cache_dir, load_episodes
    from demuse_ros.record.reader import EpisodeError

    mcfg = cfg.policy_config().model
    replay = ReplayConfig(
        image_size_px=mcfg.image_size_px, depth_grid=mcfg.latent_size, task=args.task_id
    )
    try:
        episodes, stats = load_episodes(
            args.recordings,
            replay,
            successful_only=args.successful_only,
            cache_dir=default_cache_dir(),
        )
    except (EpisodeError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"demuse train: {err}") from None
    if not episodes:
        raise SystemExit("demuse train: no episode left to train on (--successful-only?)")
    ticks = sum(s.valid for s in stats)
    invalid = sum(sum(s.invalid.values()) for s in stats)
    print(
        f"demuse train: {len(episodes)} recorded episodes, {ticks} ticks "
        f"({invalid} invalid ticks skipped)",
        file=sys.stderr,
    )
    return episodes


def _train_config(args: argparse.Namespace):
    from demuse_ros.cli_common import _parse_overrides
    from demuse_ros.config import ConfigError, load_config
    from demuse_ros.paths import find_config

    from .train import TrainConfig

    path = args.config or find_config("train.yaml")
    try:
        return load_config(
            path, TrainConfig, TRAIN_NODE, overrides=_parse_overrides(args.set or [])
        )
    except ConfigError as err:
        raise SystemExit(f"demuse: {err}") from None


def train(args: argparse.Namespace) -> int:
    from demuse_ros.cli_common import _dumps

    cfg = _train_config(args)
    if args.print_config:
        import yaml

        from demuse_ros.config import to_dict

        print(yaml.safe_dump({TRAIN_NODE: {"ros__parameters": to_dict(cfg)}}, sort_keys=False))
        return 0
    _need_torch()
    from demuse_ros.config import ConfigError

    from .checkpoint import CheckpointError
    from .train import train as run_training

    try:
        metrics = run_training(
            cfg,
            args.out,
            resume=args.resume,
            progress=not args.no_progress,
            episodes=_recorded_episodes(args, cfg),
        )
    except (CheckpointError, ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"demuse: {err}") from None
    print(_dumps({"out": str(Path(args.out).resolve()), **metrics}))
    return 0


# ---------------------------------------------------------------------- train-autoencoder
def add_train_autoencoder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for the autoencoder checkpoint")
    p.add_argument("--episodes", type=int, default=64, help="synthetic episodes (default 64)")
    p.add_argument("--image-size", type=int, default=64, help="frame side in px (default 64)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per step (default 32)")
    p.add_argument("--base-channels", type=int, default=16, help="width (default 16)")
    p.add_argument("--latent-channels", type=int, default=4, help="latent channels (default 4)")
    p.add_argument(
        "--foreground-weight",
        type=float,
        default=0.0,
        help="extra loss weight of pixels unlike the median frame (default 0: plain loss)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=train_autoencoder)


def train_autoencoder(args: argparse.Namespace) -> int:
    _need_torch()
    import numpy as np

    from demuse_ros.cli_common import _dumps

    from .autoencoder import ConvAutoencoder, ConvAutoencoderConfig
    from .autoencoder import train_autoencoder as fit
    from .checkpoint import save_autoencoder
    from .data import synthetic_episodes

    episodes = synthetic_episodes(args.episodes, args.image_size, seed=args.seed)
    frames = np.concatenate([ep.rgb for ep in episodes])
    cfg = ConvAutoencoderConfig(
        latent_channels=args.latent_channels, base_channels=args.base_channels
    )
    model = ConvAutoencoder(cfg)
    losses = fit(
        model,
        frames,
        args.steps,
        args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        foreground_weight=args.foreground_weight,
    )
    out = save_autoencoder(args.out, model)
    result = {
        "out": str(out.resolve()),
        "frames": len(frames),
        "final_loss": losses[-1],
        "scaling_factor": float(model.scaling_factor),
    }
    print(_dumps(result))
    return 0


# ---------------------------------------------------------------------- bench model
def add_bench_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--presets",
        default=",".join(PRESETS),
        help=f"comma-separated presets (default {','.join(PRESETS)})",
    )
    p.add_argument(
        "--repeats", type=int, default=30, help="timed forwards per small preset (default 30)"
    )
    p.add_argument(
        "--xl-repeats",
        type=int,
        default=3,
        help="timed xl forwards on the CPU, ~seconds each (default 3; 0 skips its latency)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")


def bench_model(args: argparse.Namespace) -> int:
    _need_torch()
    from demuse_ros.bench import model_bench
    from demuse_ros.cli_common import _dumps

    presets = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in presets if n not in PRESETS]
    if unknown:
        raise SystemExit(f"demuse: unknown preset(s) {unknown}; known: {', '.join(PRESETS)}")
    result = model_bench.run(presets, args.repeats, args.xl_repeats, args.threads or None)
    if args.json:
        print(_dumps(result))
    else:
        print(model_bench.table(result))
    return 0
