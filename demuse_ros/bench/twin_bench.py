"""``demuse bench twin``: the simulated workcell's rates, render cost and expert success.

Measured in one run:

* real time: the twin runs in its own process and serves on loopback for
  ``seconds`` while an independent
  minimal RTDE client (written here from the protocol, not ``ur_rtde``)
  subscribes to ``timestamp`` and times every data package's arrival:
  ``rtde_rate_hz`` and ``rtde_period_ms_p50/p99/max`` are what a driver sees;
  ``realtime_factor`` is simulated time over wall time; camera frames rendered
  in the render process give ``camera_fps``;
* lockstep: ``render_ms_p50`` of one 640×480 RGB + depth frame, physics cost per
  control period, and ``expert_success_rate`` of the scripted expert over
  ``episodes`` seeded, randomized episodes.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import replace
from typing import Any

import numpy as np

from demuse_ros.timing.clock import now_ns
from demuse_ros.twin.runner import SimConfig, Twin, TwinProcess

_RTDE_PORT = 30004


def _recv_packet(sock: socket.socket) -> tuple[int, bytes]:
    header = _recv_exact(sock, 3)
    size, kind = struct.unpack(">HB", header)
    return kind, _recv_exact(sock, size - 3)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("RTDE server closed the connection")
        buf += chunk
    return buf


def _send(sock: socket.socket, kind: str, payload: bytes = b"") -> None:
    sock.sendall(struct.pack(">HB", 3 + len(payload), ord(kind)) + payload)


def measure_rtde_stream(host: str, seconds: float, frequency_hz: float) -> dict[str, float]:
    """Subscribe to ``timestamp`` and time the data packages for ``seconds``."""
    with socket.create_connection((host, _RTDE_PORT), timeout=5.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _send(sock, "V", struct.pack(">H", 2))
        _recv_packet(sock)
        _send(sock, "O", struct.pack(">d", frequency_hz) + b"timestamp")
        kind, reply = _recv_packet(sock)
        if kind != ord("O") or b"NOT_FOUND" in reply:
            raise RuntimeError(f"RTDE output setup refused: {reply!r}")
        _send(sock, "S")
        _recv_packet(sock)
        arrivals, stamps = [], []
        end = now_ns() + int(seconds * 1e9)
        while now_ns() < end:
            kind, payload = _recv_packet(sock)
            if kind == ord("U"):
                arrivals.append(now_ns())
                stamps.append(struct.unpack(">d", payload[1:9])[0])
        _send(sock, "P")
    periods_ms = np.diff(arrivals) * 1e-6
    return {
        "rtde_packets": len(arrivals),
        "rtde_rate_hz": (len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) * 1e-9),
        "rtde_period_ms_p50": float(np.percentile(periods_ms, 50)),
        "rtde_period_ms_p99": float(np.percentile(periods_ms, 99)),
        "rtde_period_ms_max": float(periods_ms.max()),
        # Controller timestamps advance by exactly one period per package: gaps mean skipped ticks.
        "rtde_missing_ticks": round((stamps[-1] - stamps[0]) * frequency_hz) - (len(stamps) - 1),
    }


def run(
    seconds: float = 5.0,
    episodes: int = 20,
    *,
    config: SimConfig | None = None,
    host: str = "127.0.0.77",
) -> dict[str, Any]:
    """Run the benchmark (real-time part on ``host``); returns the JSON-able result."""
    from demuse_ros.twin.camera import CameraRenderer
    from demuse_ros.twin.lockstep import run_expert_episode

    base = config or SimConfig()
    cfg = replace(
        base, ur_servers=replace(base.ur_servers, host=host), modbus=replace(base.modbus, host=host)
    )
    result: dict[str, Any] = {"benchmark": "twin", "personality": cfg.controller.personality}

    with TwinProcess(cfg) as rt:
        rate = rt.endpoints["control_rate_hz"]
        frames0 = rt.call("stats")["frames_rendered"]
        t0 = time.monotonic()
        result.update(measure_rtde_stream(host, seconds, rate))
        stats = rt.call("stats")
        result["camera_fps"] = (stats["frames_rendered"] - frames0) / (time.monotonic() - t0)
        result["realtime_factor"] = stats["realtime_factor"]
        result["control_period_ms_p99"] = stats["control_period_ms_p99"]
        result["control_resyncs"] = stats["control_resyncs"]

    twin = Twin(cfg)
    try:
        renderer = CameraRenderer(twin.plant.model, cfg.plant.camera)
        state = twin.plant.render_state()
        renderer.render(state)  # first frame compiles shaders
        render_ms = []
        for _ in range(30):
            t = time.perf_counter_ns()
            renderer.render(state)
            render_ms.append((time.perf_counter_ns() - t) * 1e-6)
        renderer.close()
        result["render_ms_p50"] = float(np.percentile(render_ms, 50))
        step_ms = []
        for _ in range(200):
            t = time.perf_counter_ns()
            twin.step()
            step_ms.append((time.perf_counter_ns() - t) * 1e-6)
        result["control_step_ms_p50"] = float(np.percentile(step_ms, 50))
        t = time.perf_counter()
        outcomes = [run_expert_episode(twin, seed) for seed in range(episodes)]
        wall = time.perf_counter() - t
    finally:
        twin.close()
    sim_s = sum(o.duration_s for o in outcomes)
    result.update(
        {
            "episodes": episodes,
            "expert_success_rate": sum(o.success for o in outcomes) / max(episodes, 1),
            "expert_failures": {o.seed: o.reason for o in outcomes if not o.success},
            "expert_force_error_n_mean": float(
                np.nanmean([o.metrics["force_error_n"] for o in outcomes])
            ),
            "expert_peak_force_n_max": float(max(o.metrics["peak_force_n"] for o in outcomes)),
            "lockstep_speedup": sim_s / wall,
        }
    )
    return result
