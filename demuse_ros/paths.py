"""Where the shipped configuration files are, in a checkout, a pip install or a ROS install."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE = "demuse_ros"


def config_dirs() -> list[Path]:
    """Candidate folders holding ``config/*.yaml``, most specific first.

    ``$DEMUSE_CONFIG_DIR``; the source checkout next to the package; the
    ``share/demuse_ros/config`` folder of the Python prefix (pip) and of every
    ``$AMENT_PREFIX_PATH`` entry (colcon).
    """
    dirs = []
    if os.environ.get("DEMUSE_CONFIG_DIR"):
        dirs.append(Path(os.environ["DEMUSE_CONFIG_DIR"]))
    dirs.append(Path(__file__).resolve().parents[1] / "config")
    dirs.append(Path(sys.prefix) / "share" / _PACKAGE / "config")
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        dirs.append(Path(prefix) / "share" / _PACKAGE / "config")
    return dirs


def find_config(name: str) -> Path:
    """The first ``name`` (e.g. ``"sim.yaml"``) found in :func:`config_dirs`.

    Raises:
        FileNotFoundError: naming every folder that was tried.
    """
    tried = config_dirs()
    for folder in tried:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{name} not found in {', '.join(str(d) for d in tried)}; pass --config PATH or set "
        "DEMUSE_CONFIG_DIR"
    )
