"""The core's objects over ROS topics (pure Python: no rclpy).

In ROS mode the policy node (and the recorder node) fill the *same* ring buffer
class the drivers write, from subscriptions (DESIGN §2), so the synchronizer,
the runtime and the recorder run unchanged:

* :class:`StampJoiner` pairs the messages of one record (colour + depth; wrench
  + gripper width; joint states + TCP pose) by their header stamp;
* :class:`StreamRings` holds in-process rings of the three stream schemas;
* :class:`RemoteCell` is what :class:`~demuse_ros.runtime.scheduler.Runtime`
  needs from a :class:`~demuse_ros.drivers.cell.Cell`: the rings, the arm's
  rejection counter (from the arm node's diagnostics) and ``send_chunk``, which
  checks a chunk as ``Cell.send_chunk`` does and hands it to a publish callable;
* :class:`TopicTwin` answers the scripted expert's privileged questions from the
  sim node's topics.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from demuse_ros.drivers.arm_path import validate_chunk
from demuse_ros.drivers.ft import grip_command
from demuse_ros.sync.streams import arm_schema, camera_schema, ft_schema
from demuse_ros.transport.ring_buffer import RingBuffer
from demuse_ros.transport.schema import capacity_for

#: Ring sizes: what a reader may fall behind (as the drivers size theirs).
CAMERA_CAPACITY = capacity_for(30.0, 0.5)
FT_CAPACITY = capacity_for(500.0, 2.0)
ARM_CAPACITY = capacity_for(500.0, 2.0)


class StampJoiner:
    """Collects the parts of one record, published on several topics with one header stamp.

    ``emit(stamp_ns, parts)`` runs once all ``parts`` of a stamp have arrived.
    A newer complete record drops the incomplete older ones (a best-effort
    message was lost); they are counted in :attr:`dropped`, never emitted late.

    Args:
        parts: Part names, e.g. ``("color", "depth")``.
        emit: Called with the stamp and ``{part: value}``.
        max_pending: Incomplete stamps kept at most (the oldest are dropped).
    """

    def __init__(
        self,
        parts: Sequence[str],
        emit: Callable[[int, dict[str, Any]], None],
        max_pending: int = 16,
    ) -> None:
        self.parts = frozenset(parts)
        self._emit = emit
        self._max = max_pending
        self._pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._last_emitted = -(1 << 62)
        self.completed = 0
        self.dropped = 0

    def add(self, stamp_ns: int, part: str, value: Any) -> None:
        if part not in self.parts:
            raise KeyError(f"unknown part {part!r}; parts: {sorted(self.parts)}")
        if stamp_ns <= self._last_emitted:
            self.dropped += 1  # a late duplicate or a part of a record already given up
            return
        entry = self._pending.setdefault(stamp_ns, {})
        entry[part] = value
        if entry.keys() != self.parts:
            while len(self._pending) > self._max:
                self._pending.popitem(last=False)
                self.dropped += 1
            return
        for stamp in list(self._pending):  # older incomplete records will never complete
            if stamp >= stamp_ns:
                break
            del self._pending[stamp]
            self.dropped += 1
        del self._pending[stamp_ns]
        self._last_emitted = stamp_ns
        self.completed += 1
        self._emit(stamp_ns, entry)


class StreamRings:
    """In-process rings of the camera, F/T and arm schemas (one writer: the executor).

    The camera ring is created at the first frame, with that frame's size.
    """

    def __init__(self) -> None:
        self.ft: RingBuffer = RingBuffer.create(ft_schema(), FT_CAPACITY)
        self.arm: RingBuffer = RingBuffer.create(arm_schema(), ARM_CAPACITY)
        self.camera: RingBuffer | None = None
        self.out_of_order = dict.fromkeys(("camera", "ft", "arm"), 0)
        self.wrong_size = 0
        self._size: tuple[int, int] | None = None

    def camera_ring(self, width: int, height: int) -> RingBuffer | None:
        """The camera ring for ``width`` × ``height`` frames (None: another size was first)."""
        if self.camera is None:
            self.camera = RingBuffer.create(camera_schema(width, height), CAMERA_CAPACITY)
            self._size = (width, height)
        if self._size != (width, height):
            self.wrong_size += 1
            return None
        return self.camera

    def put(
        self, stream: str, t_capture_ns: int, t_receive_ns: int, fields: Mapping[str, Any]
    ) -> bool:
        """Write one record; False (counted) when it is older than the ring's newest."""
        ring = getattr(self, stream)
        if ring is None:
            return False
        ok = ring.put(int(t_capture_ns), int(t_receive_ns), math.nan, **fields)
        if not ok:
            self.out_of_order[stream] += 1
        return ok

    def rings(self) -> dict[str, RingBuffer]:
        """The rings that exist, by stream name."""
        out = {"ft": self.ft, "arm": self.arm}
        if self.camera is not None:
            out["camera"] = self.camera
        return out

    def close(self) -> None:
        for ring in (self.camera, self.ft, self.arm):
            if ring is not None:
                ring.close()


class _Stream:
    """A driver stand-in that only has the ring the synchronizer reads."""

    def __init__(self, rings: StreamRings, name: str) -> None:
        self._rings, self._name = rings, name

    @property
    def ring(self) -> RingBuffer | None:
        return getattr(self._rings, self._name)


class RemoteArm(_Stream):
    """The arm as the runtime sees it over ROS: its ring, its counters, stop."""

    def __init__(self, rings: StreamRings, publish_stop: Callable[[], None]) -> None:
        super().__init__(rings, "arm")
        self._publish_stop = publish_stop
        self._stats: dict[str, float] = {"chunks_rejected": 0.0, "chunks_accepted": 0.0}

    def update_stats(self, values: Mapping[str, str]) -> None:
        """Take the arm node's diagnostic values (strings) as its counters."""
        for key, text in values.items():
            try:
                self._stats[key] = float(text)
            except ValueError:
                continue

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def stop_motion(self) -> None:
        """The arm node stops on an empty ``action_chunk``."""
        self._publish_stop()


class RemoteCell:
    """The runtime's cell over ROS (module docstring).

    Args:
        rings: Filled from the subscriptions.
        publish_chunk: ``(t_ns (N,), poses (N, 6), widths (N,) or None, force_n)``:
            publishes ``action_chunk`` (and ``action_chunk/gripper``).
        publish_stop: Publishes the empty ``action_chunk`` that stops the arm.
    """

    def __init__(
        self,
        rings: StreamRings,
        publish_chunk: Callable[[np.ndarray, np.ndarray, np.ndarray | None, float], None],
        publish_stop: Callable[[], None],
    ) -> None:
        self.rings = rings
        self.camera = _Stream(rings, "camera")
        self.ft = _Stream(rings, "ft")
        self.arm = RemoteArm(rings, publish_stop)
        self._publish = publish_chunk
        self.chunks_published = 0

    def send_chunk(
        self, t_ns: Any, poses: Any, gripper_width_m: Any = None, gripper_force_n: float = 20.0
    ) -> None:
        """Checks the chunk as :meth:`Cell.send_chunk` does, then publishes it."""
        t, p = validate_chunk(t_ns, poses)
        widths = None
        if gripper_width_m is not None:
            widths = np.asarray(gripper_width_m, dtype=np.float64)
            if widths.shape != t.shape:
                raise ValueError(
                    f"gripper_width_m must have shape {t.shape} (one per waypoint), "
                    f"got {widths.shape}"
                )
            for w in widths:
                grip_command(float(w), gripper_force_n)  # raises ValueError naming the limit
        self._publish(t, p, widths, float(gripper_force_n))
        self.chunks_published += 1


class TopicTwin:
    """The twin's privileged answers for :class:`~demuse_ros.runtime.policies.ExpertPolicy`,
    from the sim node's topics (``call`` blocks until the first value arrived)."""

    NAMES = ("plunger_top_pose", "plunger_force_n", "task_status")

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._values: dict[str, Any] = {}
        self._cond = threading.Condition()
        self.timeout_s = timeout_s

    def set(self, name: str, value: Any) -> None:
        if name not in self.NAMES:
            raise KeyError(f"unknown twin value {name!r}; known: {self.NAMES}")
        with self._cond:
            self._values[name] = value
            self._cond.notify_all()

    def has(self, name: str) -> bool:
        return name in self._values

    def call(self, name: str, *args: Any) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: name in self._values, self.timeout_s):
                raise TimeoutError(
                    f"no {name!r} from sim_node within {self.timeout_s} s: the scripted expert "
                    "needs the simulated cell (use_sim:=true)"
                )
            return self._values[name]


__all__ = [
    "ARM_CAPACITY",
    "CAMERA_CAPACITY",
    "FT_CAPACITY",
    "RemoteArm",
    "RemoteCell",
    "StampJoiner",
    "StreamRings",
    "TopicTwin",
]
