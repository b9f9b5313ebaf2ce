"""Episode metadata: what the operator says, where the code and weights came from, the clock.

Two MCAP metadata records per episode (values are strings; non-strings JSON):

* ``demuse/episode`` at the start: task, operator, notes, config, git revision,
  checkpoint hash, recorder settings, frames, intrinsics and
  ``wall_minus_monotonic_ns`` — the one offset every header stamp was made with
  (``stamp = t_monotonic_ns + offset``), so readers map stamps back exactly;
* ``demuse/episode_end`` at the stop: success, duration, records and losses per
  stream. A crashed episode has no end record (``demuse record --recover`` adds
  ``demuse/recovery`` instead).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EPISODE = "demuse/episode"
EPISODE_END = "demuse/episode_end"
RECOVERY = "demuse/recovery"
#: metadata keys whose values are plain strings (every other value is JSON).
STRING_KEYS = frozenset(
    {"task", "operator", "notes", "git_revision", "checkpoint_hash", "episode", "start_wall",
     "stamps", "recovered_from", "tail_error"}
)  # fmt: skip


@dataclass
class EpisodeMeta:
    """What an episode is about (all optional; stored in ``demuse/episode``).

    ``success``: None = not marked. ``config``: any JSON-able description of the
    run (the CLI stores the resolved cell/runtime parameters). ``git_revision``:
    filled from the package's checkout when empty. ``checkpoint_hash``: see
    :func:`checkpoint_hash` ("" for the scripted expert).
    """

    task: str = ""
    operator: str = ""
    success: bool | None = None
    notes: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    git_revision: str = ""
    checkpoint_hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["git_revision"] = self.git_revision or git_revision()
        return out


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """``git describe --always --dirty`` of the checkout the package runs from, or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5.0,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 over a checkpoint: a file's bytes, or a folder's files (sorted names + bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"checkpoint {path} has no files to hash")
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def wall_minus_monotonic_ns() -> int:
    """``CLOCK_REALTIME − CLOCK_MONOTONIC`` (ns), the realtime read bracketed by two monotonic."""
    best: tuple[int, int] | None = None
    for _ in range(5):  # keep the tightest bracket
        m0 = time.monotonic_ns()
        r = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    assert best is not None
    return best[1]


__all__ = [
    "EPISODE",
    "EPISODE_END",
    "RECOVERY",
    "STRING_KEYS",
    "EpisodeMeta",
    "checkpoint_hash",
    "git_revision",
    "wall_minus_monotonic_ns",
]
