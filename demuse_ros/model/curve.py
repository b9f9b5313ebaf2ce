"""Training curves from ``metrics.jsonl``: loss, action loss and validation loss per step.

``demuse train`` draws ``training_curve.png`` into its run directory; several runs
share one figure with ``python -m demuse_ros.model.curve RUN [RUN ...] --out PNG``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The logged lines of a run, in step order; a torn last line (a crash) is skipped."""
    path = Path(run_dir) / METRICS
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return sorted(rows, key=lambda r: r["step"])


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` logged points (the first ones over what exists)."""
    if len(values) == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    n = np.minimum(np.arange(1, len(values) + 1), window)
    return (c[1:] - c[np.arange(1, len(values) + 1) - n]) / n


def plot_training_curves(
    runs: Sequence[str | Path],
    out_png: str | Path,
    labels: Sequence[str] | None = None,
    smooth: int = 10,
) -> Path:
    """One figure for one or more runs: training loss (smoothed over ``smooth`` logged
    points) with the validation loss, and the action term alone. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(labels)} labels")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        rows = read_metrics(run)
        if not rows:
            raise ValueError(f"{Path(run) / METRICS} has no metrics lines")
        color = f"C{i}"
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows], dtype=float)
        action = np.array([r.get("loss_action", np.nan) for r in rows], dtype=float)
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        axes[0].plot(steps, _smooth(loss, smooth), color=color, lw=1, label=f"{label} train")
        if val:
            vs, vl = zip(*val, strict=True)
            axes[0].plot(vs, vl, "o-", color=color, ms=4, label=f"{label} validation")
            best = int(np.argmin(vl))
            axes[0].plot(vs[best], vl[best], "*", color=color, ms=12)
        axes[1].plot(steps, _smooth(action, smooth), color=color, lw=1, label=label)
    axes[0].set(xlabel="step", ylabel="loss", yscale="log", title="diffusion loss (★ best)")
    axes[1].set(xlabel="step", ylabel="action MSE", yscale="log", title="action term (train)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="training curves of one or more runs in one PNG")
    p.add_argument("runs", nargs="+", help="run directories (with metrics.jsonl)")
    p.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--smooth", type=int, default=10, help="logged points averaged (default 10)")
    args = p.parse_args(argv)
    try:
        print(plot_training_curves(args.runs, args.out, args.labels, args.smooth))
    except (OSError, ValueError, KeyError) as exc:
        p.error(str(exc))
    return 0


__all__ = ["main", "plot_training_curves", "read_metrics"]

if __name__ == "__main__":
    raise SystemExit(main())
