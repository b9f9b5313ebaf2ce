"""``/diagnostics`` statuses from the core's statistics (pure Python: no rclpy).

Each function returns the fields of one ``diagnostic_msgs/DiagnosticStatus``
as a mapping (``level`` as the one-byte ``bytes`` the message holds), named
``"<node>: <what>"`` as ``diagnostic_updater`` does. Levels say what an
operator must act on: a latched arm fault or a lost device is ``ERROR``, a
protective hold, an idle stream or dropped data is ``WARN``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


def status(
    name: str, level: int, message: str, values: Mapping[str, Any], hardware_id: str = ""
) -> dict[str, Any]:
    """One ``DiagnosticStatus``; nested ``values`` become dotted keys."""
    return {
        "level": bytes([level]),
        "name": name,
        "message": message,
        "hardware_id": hardware_id,
        "values": [{"key": k, "value": _text(v)} for k, v in _flatten(values)],
    }


def level_of(status_fields: Mapping[str, Any]) -> int:
    """The integer level of a status built by :func:`status` (or read from a message)."""
    level = status_fields["level"]
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def _rate_text(rate_hz: float) -> str:
    return "no data" if not rate_hz > 0 else f"{rate_hz:.1f} Hz"


def arm_status(node: str, stats: Mapping[str, float], rate_hz: float, host: str) -> dict[str, Any]:
    """The UR driver: fault and hold first, then the connection, then the rate."""
    values = {"published_rate_hz": rate_hz, **stats}
    if stats.get("fault", 0.0):
        level = ERROR
        msg = "fault latched (protective or emergency stop): unlock the robot, call arm/reset_fault"
    elif stats.get("hold", 0.0):
        level, msg = (
            WARN,
            "protective hold (force/torque limit or no F/T data): call arm/reset_fault",
        )
    elif not stats.get("connected", 0.0):
        level, msg = ERROR, "not connected to the controller (the driver process restarts)"
    elif stats.get("teach_mode", 0.0):
        level, msg = WARN, "teach mode: the arm moves by hand, chunks are refused"
    else:
        level, msg = OK, f"streaming {_rate_text(rate_hz)}"
    return status(f"{node}: arm", level, msg, values, hardware_id=host)


def ft_status(node: str, stats: Mapping[str, float], rate_hz: float, host: str) -> dict[str, Any]:
    """The RG2-FT driver: connection, then errors and rate."""
    values = {"published_rate_hz": rate_hz, **stats}
    errors = sum(stats.get(k, 0.0) for k in ("timeouts", "exceptions", "io_errors", "invalid"))
    if not stats.get("connected", 0.0):
        level, msg = ERROR, "not connected to the compute box (reconnecting)"
    elif not rate_hz > 0:
        level, msg = WARN, "connected, no samples"
    else:
        level, msg = OK, f"streaming {_rate_text(rate_hz)}, {errors:.0f} failed polls"
    return status(f"{node}: ft", level, msg, values, hardware_id=host)


def camera_status(
    node: str, stats: Mapping[str, float], rate_hz: float, serial: str
) -> dict[str, Any]:
    """The D435i driver: connection, then frame rate, drops and latency."""
    values = {"published_rate_hz": rate_hz, **stats}
    if not stats.get("connected", 0.0):
        level, msg = ERROR, "no camera (reconnecting)"
    elif not rate_hz > 0:
        level, msg = WARN, "connected, no frames"
    else:
        level, msg = (
            OK,
            (
                f"{_rate_text(rate_hz)}, {stats.get('dropped', 0.0):.0f} dropped, "
                f"latency p50 {stats.get('latency_ms_p50', math.nan):.1f} ms"
            ),
        )
    return status(f"{node}: camera", level, msg, values, hardware_id=serial)


def runtime_status(
    node: str, stats: Mapping[str, Any], *, policy: str, enabled: bool, waiting_for: str = ""
) -> dict[str, Any]:
    """The 10 Hz loop: rate, deadline misses, holds, invalid observations, latency."""
    values = {"policy": policy, "enabled": enabled, **stats}
    holds = sum((stats.get("holds") or {}).values())
    if waiting_for:
        level, msg = WARN, f"waiting for {waiting_for}"
    elif not enabled:
        level, msg = WARN, "disabled (policy/enable): holding"
    else:
        level = OK
        msg = (
            f"{stats.get('tick_hz', math.nan):.2f} Hz, {stats.get('deadline_misses', 0)} "
            f"missed deadlines, {holds} holds, {stats.get('chunks_sent', 0)} chunks"
        )
    return status(f"{node}: runtime", level, msg, values)


def recorder_status(node: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    """Episode recording: state, losses (ring overruns) and writer drops."""
    lost = sum((stats.get("lost") or {}).values())
    dropped = stats.get("dropped", 0)
    level = ERROR if stats.get("error") else WARN if (lost or dropped) else OK
    msg = "recording" if stats.get("recording") else "idle"
    msg += f", {stats.get('episodes', 0)} episodes, {lost} records lost, {dropped} dropped"
    if stats.get("error"):
        msg = f"writer error: {stats['error']}"
    return status(f"{node}: recorder", level, msg, stats)


def sim_status(node: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    """The twin: real-time factor and the task's state."""
    task = stats.get("task") or {}
    level = OK if (stats.get("realtime_factor") or 0.0) > 0.9 else WARN
    msg = f"real-time factor {stats.get('realtime_factor', math.nan):.2f}"
    if task.get("done"):
        msg += f", task done ({'success' if task.get('success') else task.get('reason', 'failed')})"
    return status(f"{node}: twin", level, msg, stats)


def values_of(status_fields: Mapping[str, Any]) -> dict[str, str]:
    """``key → value`` of a status's ``values`` (mappings or ``KeyValue``-like objects)."""
    out = {}
    for kv in status_fields["values"]:
        key = kv["key"] if isinstance(kv, Mapping) else kv.key
        out[key] = kv["value"] if isinstance(kv, Mapping) else kv.value
    return out


__all__ = [
    "ERROR",
    "LEVEL_NAMES",
    "OK",
    "STALE",
    "WARN",
    "arm_status",
    "camera_status",
    "ft_status",
    "level_of",
    "recorder_status",
    "runtime_status",
    "sim_status",
    "status",
    "values_of",
]
