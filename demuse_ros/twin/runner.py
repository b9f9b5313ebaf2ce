"""Running the twin: lockstep (stepped by the caller) or real time (servers, threads, renderer).

:class:`Twin` is the lockstep core: one :meth:`Twin.step` advances one UR
control period: controller tick, gripper registers, physics substeps, sensor
registers. Lockstep users (data generation, evaluation, tests) call it as fast
as they like, with no wall clock and no sockets.

:class:`RealtimeTwin` runs the same core against the wall clock and serves the
devices' protocols on loopback:

* a control thread steps the core on a deadline loop at the personality's rate
  (125 Hz CB3 / 500 Hz e-Series) and publishes one RTDE output package per
  tick, so the stream rate is the control rate;
* the UR (RTDE 30004, dashboard 29999, script 30003) and RG2-FT Modbus servers
  run on their own threads;
* the camera renders in a separate **process**: MuJoCo's renderer holds the GIL
  for tens of milliseconds (measured: a 51 ms stall of another thread), which a
  500 Hz loop in the same process cannot absorb. The control thread hands it
  small state snapshots through a shared-memory ring; it renders at the camera
  rate and publishes frames (with a drifting hardware clock) into the ring the
  camera driver's software device reads.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import secrets
import signal
import threading
from typing import Any

import numpy as np

from demuse_ros.timing.clock import now_ns
from demuse_ros.timing.loop import PeriodicLoop
from demuse_ros.timing.realtime import set_normal_priority, set_realtime_priority
from demuse_ros.transport.ring_buffer import RingBuffer
from demuse_ros.transport.schema import RecordSchema
from demuse_ros.twin.modbus_server import RG2FTModbusServer
from demuse_ros.twin.plant import MujocoPlant
from demuse_ros.twin.rg2ft import RG2FTRegisters
from demuse_ros.twin.sim_config import SimConfig
from demuse_ros.twin.ur_controller import URController
from demuse_ros.twin.ur_servers import URServers

log = logging.getLogger(__name__)

_MAX_CATCH_UP_TICKS = 8  # burst bound after a stall (8 ms at 500 Hz, 64 ms at 125 Hz)


class Twin:
    """Plant + UR controller + RG2-FT register bank, advanced one control period at a time."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = cfg = config or SimConfig()
        self.plant = MujocoPlant(cfg.plant, cfg.task)
        self.controller = URController(self.plant, cfg.controller)
        # The installation's TCP is the RG2-FT fingertip centre, as on the real cell.
        self.controller.kin.set_tcp_offset(self.plant.tcp_offset)
        self.gripper = RG2FTRegisters(cfg.rg2ft)
        self.period_s = self.controller.period_s
        self.steps = 0
        self.reset(cfg.plant.seed)

    def reset(self, seed: int | None = None) -> None:
        """New episode: home pose, task placement and sensor noise from ``seed`` (None: the
        plant's next seed), gripper registers refreshed."""
        self.plant.reset(seed)
        self.gripper.update(self.plant.gripper_state())

    @property
    def time_s(self) -> float:
        """Simulated time since the last reset (s)."""
        return self.plant.time_s

    def step(self) -> None:
        """One control period: controller → setpoint, gripper commands, physics, sensors."""
        self.controller.tick()
        self.gripper.apply(self.plant)
        self.plant.step(self.period_s)
        self.gripper.update(self.plant.gripper_state())
        self.steps += 1

    def close(self) -> None:
        self.plant.close()


# ---------------------------------------------------------------------- render process
def _state_schema(nq: int, nbody: int) -> RecordSchema:
    return RecordSchema(
        {
            "sim_time_s": ((), np.float64),
            "qpos": ((nq,), np.float64),
            "body_pos": ((nbody, 3), np.float64),
        },
        name="twin_state",
    )


def _render_main(
    config: SimConfig,
    state_name: str,
    frame_name: str,
    ready: Any,
    stop: Any,
    commands: Any,
    counters: Any,
) -> None:
    """Render process: state snapshots in, camera frames out (see module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopped through ``stop``
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    set_normal_priority()  # a real-time twin process must not hand its priority to rendering
    from demuse_ros.twin.camera import CameraRenderer, RenderState
    from demuse_ros.twin.camera_feed import FrameWriter

    plant = MujocoPlant(config.plant, config.task)  # same scene XML as the control process
    renderer = CameraRenderer(plant.model, config.plant.camera)
    schema = _state_schema(plant.model.nq, plant.model.nbody)
    states = RingBuffer.attach(state_name, schema)
    writer = FrameWriter(config.camera, name=frame_name)
    try:
        ready.set()
        seen = states.count
        poll = PeriodicLoop(1000.0)  # wait for the next snapshot without a busy loop
        while not stop.is_set():
            while not commands.empty():
                verb, n = commands.get_nowait()
                getattr(writer, verb)(n)  # "freeze" or "drop"
            if states.count == seen:
                poll.wait()
                continue
            seen = states.count
            rec = states.read(seen - 1)
            t0 = now_ns()
            rgb, depth = renderer.render(
                RenderState(rec["sim_time_s"], rec["qpos"], rec["body_pos"])
            )
            writer.write(rgb, depth, rec["t_capture_ns"], now_ns())
            counters[0] += 1
            counters[1] += now_ns() - t0
    finally:
        writer.close()
        states.close()
        plant.close()


class RealtimeTwin:
    """The twin against the wall clock, serving RTDE, Modbus and camera frames on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (in ``finally``).
    :meth:`endpoints` says where the drivers connect.
    """

    def __init__(
        self, config: SimConfig | None = None, *, camera_ring_name: str | None = None
    ) -> None:
        self.twin = Twin(config)
        self.config = self.twin.config
        self.servers = URServers(self.twin.controller, self.config.ur_servers)
        self.modbus = RG2FTModbusServer(self.twin.gripper, self.config.modbus)
        self.camera_ring_name = (
            camera_ring_name
            or self.config.camera.ring_name
            or f"demuse_cam_{os.getpid()}_{secrets.token_hex(3)}"
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._render: mp.process.BaseProcess | None = None
        self._states: RingBuffer | None = None
        self._ctx = mp.get_context("spawn")
        self._render_stop = self._ctx.Event()
        self._render_commands = self._ctx.Queue()
        self._render_counters = self._ctx.Array("q", 2)  # frames rendered, total render ns
        self.loop = PeriodicLoop(1.0 / self.twin.period_s)
        self._wall_start_ns = 0
        self._sim_start_s = 0.0
        self.resyncs = 0  # stalls too long to catch up (simulated time fell behind)

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, timeout_s: float = 60.0) -> RealtimeTwin:
        """Start the render process, the servers and the control thread."""
        try:
            model = self.twin.plant.model
            self._states = RingBuffer.create(_state_schema(model.nq, model.nbody), 8, shared=True)
            ready = self._ctx.Event()
            self._render = self._ctx.Process(
                target=_render_main,
                args=(
                    self.config,
                    self._states.name,
                    self.camera_ring_name,
                    ready,
                    self._render_stop,
                    self._render_commands,
                    self._render_counters,
                ),
                name="twin-render",
                daemon=True,
            )
            self._render.start()
            if not ready.wait(timeout_s):
                raise RuntimeError(f"the twin's render process did not start within {timeout_s} s")
            self.servers.start()
            self.modbus.start()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._control_loop, name="twin-control", daemon=True
            )
            self._thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything; safe to call more than once and after a failed start."""
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout=5.0)
                self._thread = None
        finally:
            try:
                self.servers.stop()
                if self.modbus.running:
                    self.modbus.stop()
            finally:
                self._render_stop.set()
                if self._render is not None and self._render.pid is not None:
                    self._render.join(timeout=10.0)
                    if self._render.is_alive():
                        self._render.terminate()
                self._render = None
                if self._states is not None:
                    self._states.close()
                    self._states = None

    def __enter__(self) -> RealtimeTwin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop
    def _control_loop(self) -> None:
        denied = set_realtime_priority(self.config.realtime_priority)  # this thread only
        if denied:
            logging.getLogger("demuse.twin").warning("twin control thread: %s", denied)
        twin, servers = self.twin, self.servers
        frame_period_s = 1.0 / self.config.camera.fps
        next_frame_s = twin.time_s
        period_ns = round(twin.period_s * 1e9)
        self.loop.start()
        self._wall_start_ns, self._sim_start_s = now_ns(), twin.time_s
        ticks = 0
        while not self._stop.is_set():
            self.loop.wait()
            # A simulator keeps simulated time on the wall clock: ticks missed while this
            # thread was descheduled run back to back (bounded), unlike a robot control
            # loop, which must skip them. The RTDE stream therefore keeps its nominal rate.
            due = (now_ns() - self._wall_start_ns) // period_ns + 1 - ticks
            for _ in range(max(1, min(due, _MAX_CATCH_UP_TICKS))):
                with self._lock:
                    # Send the state of this tick on the tick, as a controller does, and
                    # then advance: the package leaves at the loop's wake-up time instead
                    # of after a physics step of varying length.
                    servers.publish()
                    twin.step()
                    ticks += 1
                    if twin.time_s + frame_period_s < next_frame_s:
                        next_frame_s = twin.time_s  # reset: simulated time went back
                    if twin.time_s >= next_frame_s:
                        next_frame_s += frame_period_s
                        state = twin.plant.render_state()
                        t_capture = now_ns()
                        self._states.put(  # type: ignore[union-attr]
                            t_capture,
                            t_capture,
                            state.t_s,
                            sim_time_s=state.t_s,
                            qpos=state.qpos,
                            body_pos=state.body_pos,
                        )
            if due > _MAX_CATCH_UP_TICKS:  # hopelessly behind: resynchronize, count it
                self.resyncs += 1
                ticks = (now_ns() - self._wall_start_ns) // period_ns + 1

    # ------------------------------------------------------------------ observation
    def endpoints(self) -> dict[str, Any]:
        """Where the drivers connect (JSON-able)."""
        p = self.twin.controller.personality
        return {
            "personality": p.name,
            "control_rate_hz": p.control_rate_hz,
            "ur_host": self.config.ur_servers.host,
            **{f"{k}_port": v for k, v in self.servers.ports.items()},
            "modbus_host": self.config.modbus.host,
            "modbus_port": self.modbus.port,
            "camera_ring": self.camera_ring_name,
            "camera_size": [self.config.camera.width, self.config.camera.height],
        }

    def stats(self) -> dict[str, Any]:
        """Real-time factor, control-loop timing, frames rendered."""
        wall_s = (now_ns() - self._wall_start_ns) * 1e-9 if self._wall_start_ns else 0.0
        frames, render_ns = self._render_counters[0], self._render_counters[1]
        loop = self.loop.stats()
        return {
            "realtime_factor": (self.twin.time_s - self._sim_start_s) / wall_s
            if wall_s > 0
            else math.nan,
            "control_rate_hz": loop.rate_hz,
            "control_period_ms_p50": loop.period_s_p50 * 1e3,
            "control_period_ms_p99": loop.period_s_p99 * 1e3,
            "control_overruns": loop.overruns,
            "control_resyncs": self.resyncs,
            "frames_rendered": frames,
            "render_ms_mean": render_ns / frames * 1e-6 if frames else math.nan,
            "task": self.twin.plant.task_status().__dict__,
        }

    # ------------------------------------------------------------ faults and privileged access
    def locked(self) -> threading.Lock:
        """Hold this to read or poke the twin's state consistently between control ticks."""
        return self._lock

    def freeze_camera(self, n_frames: int) -> None:
        self._render_commands.put(("freeze", int(n_frames)))

    def drop_camera_frames(self, n_frames: int) -> None:
        self._render_commands.put(("drop", int(n_frames)))

    def trigger_protective_stop(self, reason: str = "injected fault") -> None:
        self.twin.controller.trigger_protective_stop(reason)


# ---------------------------------------------------------------------- the twin in its own process
#: What a :class:`TwinProcess` may ask of the twin (method name → how to answer).
_SERVICE = {
    "endpoints": lambda rt: rt.endpoints(),
    "stats": lambda rt: rt.stats(),
    "trigger_protective_stop": lambda rt, reason="injected fault": rt.trigger_protective_stop(
        reason
    ),
    "freeze_camera": lambda rt, n: rt.freeze_camera(n),
    "drop_camera_frames": lambda rt, n: rt.drop_camera_frames(n),
    "drop_ur_connections": lambda rt: rt.servers.drop_connections(),
    "pause_ur_stream": lambda rt, seconds: rt.servers.pause_stream(seconds),
    "modbus_fault": lambda rt, verb, *a: getattr(rt.modbus, verb)(*a),
    "arm_q": lambda rt: rt.twin.plant.arm_state().q.tolist(),
    "finger_wrenches": lambda rt: rt.twin.plant.gripper_state().finger_wrenches.tolist(),
    "gripper_width_m": lambda rt: rt.twin.plant.gripper_state().width_m,
    "task_status": lambda rt: rt.twin.plant.task_status().__dict__,
    "plunger_top_pose": lambda rt: rt.twin.plant.task.plunger_top_pose().tolist(),
    "plunger_force_n": lambda rt: rt.twin.plant.task.force_n(),
    "reset": lambda rt, seed=None: rt.twin.reset(seed),
    # An operator's hand on the tool (moves the arm only in teach mode): twist, seconds.
    "guide_tcp": lambda rt, twist, seconds: rt.twin.controller.guide_tcp(twist, seconds),
}


def _twin_main(config: SimConfig, conn: Any) -> None:
    """Child process: run a :class:`RealtimeTwin` and answer requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C hits the group)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(f"signal {signum}")  # leave through rt.stop()

    signal.signal(signal.SIGTERM, terminate)
    # The whole process, before any thread exists: a normal-priority server thread
    # holding the GIL would otherwise stall the real-time control thread whenever
    # other load preempts it (priority inversion through the GIL).
    denied = set_realtime_priority(config.realtime_priority)
    if denied:
        logging.getLogger("demuse.twin").warning("twin process: %s", denied)
    try:
        rt = RealtimeTwin(config).start()
    except BaseException as exc:  # report start failures to the parent, then exit
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ok", rt.endpoints()))
        while True:
            if not conn.poll(0.5):
                continue
            request = conn.recv()
            if request is None:
                break
            name, args = request
            try:
                with rt.locked():  # answers reflect one consistent control tick
                    conn.send(("ok", _SERVICE[name](rt, *args)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        rt.stop()


class TwinProcess:
    """A :class:`RealtimeTwin` in a child process, so clients in this process share no GIL with it.

    Client libraries such as ``ur_rtde`` block inside C++ without releasing the
    GIL (the receive constructor spins until the first data package): a twin
    running in the same interpreter would never get to send it. Start it with
    ``with TwinProcess(config) as twin:``; :attr:`endpoints` says where to
    connect, and :meth:`call` reaches the names in ``_SERVICE``.
    """

    def __init__(self, config: SimConfig | None = None, *, start_timeout_s: float = 120.0) -> None:
        self.config = config or SimConfig()
        self._timeout = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self._conn: Any = None
        self._proc: mp.process.BaseProcess | None = None
        self.endpoints: dict[str, Any] = {}
        self._call_lock = threading.Lock()

    def start(self) -> TwinProcess:
        parent, child = self._ctx.Pipe()
        self._conn = parent
        # Not a daemon: the twin starts its own render process.
        self._proc = self._ctx.Process(target=_twin_main, args=(self.config, child), name="twin")
        self._proc.start()
        if not parent.poll(self._timeout):
            self.stop()
            raise RuntimeError(f"the twin process did not start within {self._timeout} s")
        status, value = parent.recv()
        if status != "ok":
            self.stop()
            raise RuntimeError(f"the twin process failed to start: {value}")
        self.endpoints = value
        return self

    def call(self, name: str, *args: Any, timeout_s: float = 30.0) -> Any:
        """Ask the twin process (see ``_SERVICE``); raises RuntimeError with its error."""
        if name not in _SERVICE:
            raise KeyError(f"unknown twin request {name!r}; known: {sorted(_SERVICE)}")
        with self._call_lock:
            self._conn.send((name, args))
            if not self._conn.poll(timeout_s):
                raise TimeoutError(f"the twin process did not answer {name!r} within {timeout_s} s")
            status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"twin request {name!r} failed: {value}")
        return value

    def stop(self) -> None:
        """Stop the twin (it stops its servers and renderer) and reap the process."""
        if self._proc is None:
            return
        try:
            if self._proc.is_alive():
                self._conn.send(None)
                self._proc.join(timeout=20.0)
        except (BrokenPipeError, OSError):
            pass
        finally:
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=5.0)
            self._proc = None
            self._conn.close()

    def __enter__(self) -> TwinProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
