"""The lifecycle shared by the hardware nodes (camera, F/T + gripper, arm).

configure = connect (start the driver process; it connects and data flows),
activate = stream (a timer publishes the ring's new records), deactivate = stop
(no more publishing; the arm stops moving, the gripper stops), cleanup =
disconnect (stop the driver process). The driver keeps running in its own
process (:class:`~demuse_ros.drivers.process.DriverProcess`); the node only
reads its ring and forwards commands, so a slow executor never stalls a device.
"""

from __future__ import annotations

import time
from typing import Any

from demuse_ros.config import ConfigError
from demuse_ros.ros import diagnostics
from demuse_ros.ros.node_base import (
    LifecycleNode,
    NodeHelpers,
    TransitionCallbackReturn,
    config_failure,
)
from demuse_ros.ros.node_config import FrameConfig
from demuse_ros.transport.ring_buffer import OverwrittenError


class DriverNode(NodeHelpers, LifecycleNode):  # type: ignore[misc,valid-type]
    """Base of camera_node, ft_node and arm_node (module docstring).

    Subclasses set ``ROLE`` and ``CONFIG``, and implement :meth:`make_driver`,
    :meth:`on_configured`, :meth:`publish_record` and :meth:`status`.
    """

    CONFIG: type = object
    #: How often the ring is checked for new records (Hz).
    POLL_HZ = 100.0
    #: Records closer than this (by capture time) to the last published one are not
    #: published (the arm: at most ``publish_rate_hz``); 0 publishes every record.
    min_interval_ns = 0

    def __init__(self) -> None:
        super().__init__(self.ROLE)
        self.init_helpers(read_only=False)  # read at configure: set, then configure again
        self.driver: Any = None
        self.config: Any = None
        self.frames = FrameConfig()
        self.active = False
        self._timer: Any = None
        self._next = 0
        self._last_t_ns = -(1 << 62)
        self._published = 0
        self.skipped = 0  # records overwritten before this node published them
        self._mark = (time.monotonic_ns(), 0)
        self.diag_timer = self.create_timer(1.0, self.publish_status)

    # ------------------------------------------------------------------ to implement
    def make_driver(self, config: Any) -> Any:
        raise NotImplementedError

    def on_configured(self) -> None:
        """Create publishers, subscriptions and services (the driver is running)."""

    def publish_record(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def status(self, stats: dict[str, float], rate_hz: float) -> dict[str, Any]:
        raise NotImplementedError

    def stop_output(self) -> None:
        """Stop what the device does on its own (deactivate): the arm's motion, the gripper."""

    def release(self) -> None:
        """Undo :meth:`on_configured` beyond the driver (cleanup)."""

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: Any) -> Any:
        try:
            configs = self.read_config()
        except ConfigError as exc:
            return config_failure(self, exc)
        self.config, self.frames = configs[self.CONFIG], configs[FrameConfig]
        try:
            self.driver = self.make_driver(self.config)
            self.driver.start(timeout_s=self.config.start_timeout_s)
        except Exception as exc:  # the device did not connect: say why, stay unconfigured
            self._stop_driver()
            return config_failure(self, exc)
        self.on_configured()
        self.get_logger().info(f"configured: {self.ROLE} driver connected, data flowing")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: Any) -> Any:
        self._next = self.driver.ring.count
        self._timer = self.create_timer(1.0 / self.POLL_HZ, self._publish_new)
        self.active = True
        self.publish_status()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: Any) -> Any:
        self._deactivate()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: Any) -> Any:
        self._stop_driver()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: Any) -> Any:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: Any) -> Any:
        self.close()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    def close(self) -> None:
        """Deactivate and disconnect (idempotent; ``main()`` calls it in ``finally``)."""
        self._deactivate()
        self._stop_driver()

    def _deactivate(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self.active and self.driver is not None and self.driver.alive:
            try:
                self.stop_output()
            except Exception as exc:  # stopping must go on: say what failed
                self.get_logger().error(f"stopping {self.ROLE} output failed: {exc}")
        self.active = False

    def _stop_driver(self) -> None:
        if self.driver is not None:
            try:
                self.driver.stop()
            finally:
                self.driver = None
                self.release()

    # ------------------------------------------------------------------ streaming
    def _publish_new(self) -> None:
        ring = self.driver.ring if self.driver is not None else None
        if ring is None:
            return
        count = ring.count
        start = max(self._next, ring.oldest_readable())
        if start > self._next:
            self.skipped += start - self._next
        for index in range(start, count):
            try:
                if self.min_interval_ns:  # decimate by capture time (stamps only: cheap)
                    t = ring.read(index, fields=())["t_capture_ns"]
                    if t - self._last_t_ns < self.min_interval_ns:
                        continue
                record = ring.read(index)
            except OverwrittenError:
                self.skipped += 1
                continue
            self._last_t_ns = record["t_capture_ns"]
            self.publish_record(record)
            self._published += 1
        self._next = max(self._next, count)

    def publish_status(self) -> None:
        now = time.monotonic_ns()
        t0, n0 = self._mark
        rate = (self._published - n0) * 1e9 / (now - t0) if now > t0 else 0.0
        self._mark = (now, self._published)
        name = f"{self.get_name()}: {self.ROLE.removesuffix('_node')}"
        if self.driver is None:
            st = diagnostics.status(name, diagnostics.STALE, "unconfigured", {})
        else:
            stats = {**self.driver.stats(), "skipped_records": float(self.skipped)}
            st = self.status(stats, rate if self.active else 0.0)
            if not self.active:
                st["message"] = "inactive (configured, not publishing): " + st["message"]
        self.publish_diagnostics([st])


__all__ = ["DriverNode"]
