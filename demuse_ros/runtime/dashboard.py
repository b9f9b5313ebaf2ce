"""Live terminal dashboard of a run (rich), rendered off the control thread.

The control loop only stores a status snapshot (:meth:`Dashboard.update`, a
dict assignment); ``rich.live.Live`` renders it from its own refresh thread
twice a second.
"""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = ".1f") -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


class Dashboard:
    """``with Dashboard() as d: ... d.update(status)`` (status: :func:`status_of`)."""

    def __init__(self, title: str = "demuse run") -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self._status: dict[str, Any] = {}
        self._live = Live(
            get_renderable=self._render,
            refresh_per_second=2,
            console=Console(stderr=True),
            transient=False,
        )

    def __enter__(self) -> Dashboard:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def update(self, status: dict[str, Any]) -> None:
        self._status = status  # one reference swap; rendered by Live's thread

    def _render(self) -> Any:
        from rich.table import Table

        s = self._status
        table = Table(title=self.title, show_header=False, expand=False)
        table.add_column(style="bold")
        table.add_column()
        if not s:
            table.add_row("state", "starting…")
            return table
        table.add_row(
            "loop",
            f"{_fmt(s['tick_hz'], '.2f')} Hz  cycles {s['cycles']}  "
            f"deadline misses {s['deadline_misses']}",
        )
        table.add_row(
            "latency p50/p99 ms",
            "  ".join(
                f"{stage} {_fmt(s[f'{stage}_ms_p50'])}/{_fmt(s[f'{stage}_ms_p99'])}"
                for stage in ("sync", "policy", "plan", "send", "cycle")
            ),
        )
        holds = {k: v for k, v in s["holds"].items() if v}
        table.add_row("holds", ", ".join(f"{k} {v}" for k, v in holds.items()) or "none")
        table.add_row(
            "safety",
            f"arm rejected {int(s['arm_rejected'])}  step clamps {int(s['step_clamps'])}  "
            f"seam clamps {s['seam_clamps']}  hold {'YES' if s['hold'] else 'no'}  "
            f"fault {'YES' if s['fault'] else 'no'}",
        )
        table.add_row(
            "drivers",
            f"servo {_fmt(s['servo_hz'])} Hz (p99 {_fmt(s['servo_p99_ms'], '.2f')} ms)  "
            f"F/T {_fmt(s['ft_hz'])} Hz  camera {_fmt(s['camera_fps'])} fps",
        )
        table.add_row("task", str(s["task"]))
        return table


def status_of(runtime: Any, cell: Any, task: dict[str, Any]) -> dict[str, Any]:
    """A flat snapshot of the runtime, the drivers and the task for display and logs."""
    st = runtime.stats()
    arm, ft, cam = cell.arm.stats(), cell.ft.stats(), cell.camera.stats()
    return {
        **{k: st[k] for k in ("cycles", "tick_hz", "deadline_misses", "holds", "seam_clamps")},
        **{k: v for k, v in st.items() if k.endswith(("_ms_p50", "_ms_p99"))},
        "arm_rejected": arm["chunks_rejected"],
        "step_clamps": arm["step_clamps"],
        "hold": arm["hold"],
        "fault": arm["fault"],
        "servo_hz": arm["servo_rate_hz"],
        "servo_p99_ms": arm["servo_period_ms_p99"],
        "ft_hz": ft["rate_hz"],
        "camera_fps": cam["fps"],
        "task": task.get("reason") or ("done" if task.get("done") else "running"),
    }


__all__ = ["Dashboard", "status_of"]
