"""Marker handling: tests whose dependency is missing skip with the reason."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _gpu_reason() -> str | None:
    if not _has("torch"):
        return "needs torch with CUDA (torch is not installed)"
    import torch

    return (
        None
        if torch.cuda.is_available()
        else "needs a CUDA GPU (torch.cuda.is_available() is False)"
    )


def _missing_reasons() -> dict[str, object]:
    """marker -> reason string when it must skip, None when it can run (computed lazily)."""
    return {
        "ros": None
        if _has("rclpy")
        else "needs ROS 2: rclpy is not importable (source /opt/ros/<distro>/setup.bash)",
        "tensorrt": None
        if _has("tensorrt")
        else "needs the TensorRT 10 Python package (pip install '.[tensorrt]' on a GPU machine)",
        "gpu": _gpu_reason,
        "hardware": None
        if os.environ.get("DEMUSE_HARDWARE") == "1"
        else "needs the real cell: set DEMUSE_HARDWARE=1 and the device addresses",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = _missing_reasons()
    resolved: dict[str, str | None] = {}
    for item in items:
        for marker, reason in reasons.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in resolved:
                resolved[marker] = reason() if callable(reason) else reason  # type: ignore[assignment]
            if resolved[marker]:
                item.add_marker(pytest.mark.skip(reason=resolved[marker]))
