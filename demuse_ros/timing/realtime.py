"""Real-time scheduling for device loops (SCHED_FIFO), with a clear fallback.

A 125/500 Hz servo loop on a loaded machine is late whenever the kernel's fair
scheduler gives its core to someone else (the policy's inference, a render).
``SCHED_FIFO`` preempts every normal task; the UR client library and
ros2_control do the same for their RTDE threads. Threads created after the
call (e.g. ``ur_rtde``'s receive thread) inherit the policy.

It needs ``CAP_SYS_NICE`` or an ``rtprio`` limit (``ulimit -r``); without them
the loop runs at normal priority and :func:`set_realtime_priority` says how to
allow it.
"""

from __future__ import annotations

import contextlib
import os


def set_realtime_priority(priority: int) -> str | None:
    """Put the calling thread (and threads it creates later) under SCHED_FIFO.

    Args:
        priority: 1..99 (0 leaves the scheduling alone).

    Returns:
        None on success (or when ``priority`` is 0), else why it was not applied,
        phrased as what to change.
    """
    if priority <= 0:
        return None
    if not 1 <= priority <= 99:
        raise ValueError(f"SCHED_FIFO priority must be 1..99 (0: off), got {priority}")
    if not hasattr(os, "sched_setscheduler"):
        return "this platform has no SCHED_FIFO; the loop runs at normal priority"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return (
            f"SCHED_FIFO priority {priority} was denied; allow it with an rtprio limit "
            "(/etc/security/limits.conf: '<user> - rtprio 99') or CAP_SYS_NICE, or set "
            "realtime_priority: 0"
        )
    except OSError as exc:
        return f"SCHED_FIFO priority {priority} failed: {exc}"
    return None


def set_normal_priority() -> None:
    """Back to SCHED_OTHER (for work a real-time parent spawned that must not preempt it)."""
    if hasattr(os, "sched_setscheduler"):
        with contextlib.suppress(OSError):  # not real-time to begin with
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


__all__ = ["set_normal_priority", "set_realtime_priority"]
