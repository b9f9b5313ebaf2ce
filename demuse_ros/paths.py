"""Where the shipped configuration files are, in a checkout, a pip install or a ROS install."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE = "demuse_ros"


def _search_dirs(env_var: str, folder: str) -> list[Path]:
    """``$env_var``; the source checkout's ``folder``; ``share/demuse_ros/<folder>`` of the
    Python prefix (pip) and of every ``$AMENT_PREFIX_PATH`` entry (colcon)."""
    dirs = []
    if os.environ.get(env_var):
        dirs.append(Path(os.environ[env_var]))
    dirs.append(Path(__file__).resolve().parents[1] / folder)
    dirs.append(Path(sys.prefix) / "share" / _PACKAGE / folder)
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        dirs.append(Path(prefix) / "share" / _PACKAGE / folder)
    return dirs


def config_dirs() -> list[Path]:
    """Candidate folders holding ``config/*.yaml``, most specific first
    (``$DEMUSE_CONFIG_DIR``, the checkout, pip's and colcon's share folders)."""
    return _search_dirs("DEMUSE_CONFIG_DIR", "config")


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


#: The shipped checkpoint ``demuse run`` and ``demuse eval`` use by default
#: (``models/<name>``: trained on 97 scripted-expert demonstrations in the twin,
#: see ``models/README.md``).
DEFAULT_POLICY = "dispense-cpu"


def model_dirs() -> list[Path]:
    """Folders holding shipped checkpoints (``models/<name>/``), most specific first
    (``$DEMUSE_MODEL_DIR``, the checkout, pip's and colcon's share folders)."""
    return _search_dirs("DEMUSE_MODEL_DIR", "models")


def resolve_policy(policy: str) -> str:
    """``expert``, a checkpoint folder, or the name of a shipped checkpoint → what to load.

    A path that exists wins; a bare name is looked up in :func:`model_dirs`.

    Raises:
        FileNotFoundError: naming the folders tried and what ``policy`` may be.
    """
    if policy == "expert" or Path(policy).is_dir():
        return policy
    tried = model_dirs()
    if os.sep not in policy and "/" not in policy:
        for folder in tried:
            if (folder / policy / "config.json").is_file():
                return str(folder / policy)
    raise FileNotFoundError(
        f"policy {policy!r} is neither 'expert', a checkpoint folder, nor a shipped checkpoint "
        f"in {', '.join(str(d) for d in tried)}"
    )
