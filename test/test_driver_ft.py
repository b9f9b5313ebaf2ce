"""RG2-FT driver: the real pymodbus client in its own process against the twin's Modbus server."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from demuse_ros.drivers.ft import (
    FTDriverConfig,
    FTDriverProcess,
    WrenchProcessor,
    decode_state,
    grip_command,
)
from demuse_ros.twin.interface import GripperPlantState
from demuse_ros.twin.rg2ft import RG2FTRegisters

pytest.importorskip("pymodbus", reason="needs pymodbus 3.16 (pip install '.[sim]')")
from demuse_ros.twin.modbus_server import ModbusServerConfig, RG2FTModbusServer

DT = 0.002
# The twin's sensor frames in the tool frame (columns = sensor x, y, z; demuse_ros.twin.scene):
# left finger (+y): x = tool z, z = -tool y (inward), y = z × x; the right one mirrored.
R_LEFT = np.column_stack([(0, 0, 1), (-1, 0, 0), (0, -1, 0)]).astype(float)
R_RIGHT = np.column_stack([(0, 0, 1), (1, 0, 0), (0, 1, 0)]).astype(float)


class Plant:
    """The gripper half of the Plant protocol: fingers move toward the target at a fixed speed."""

    physics_rate_hz = 500.0

    def __init__(self, width_m: float = 0.05, speed_m_s: float = 0.2) -> None:
        self.width_m = self.target_m = width_m
        self.speed = speed_m_s
        self.moving = False
        self.finger_wrenches = np.zeros((2, 6))
        self.wrench_fn: Callable[[float], np.ndarray] | None = None
        self.t = 0.0
        self.lock = threading.Lock()

    def set_gripper_command(self, target_width_m: float, target_force_n: float, grip: bool) -> None:
        with self.lock:
            self.target_m = target_width_m if grip else self.width_m
            self.moving = grip

    def step(self, dt_s: float) -> None:
        with self.lock:
            self.t += dt_s
            delta = self.target_m - self.width_m
            self.width_m += float(np.clip(delta, -self.speed * dt_s, self.speed * dt_s))
            self.moving = abs(self.target_m - self.width_m) > 1e-9
            if self.wrench_fn is not None:
                self.finger_wrenches = self.wrench_fn(self.t)

    def set_wrenches(self, w: np.ndarray) -> None:
        with self.lock:
            self.finger_wrenches = np.array(w, dtype=float)

    def gripper_state(self) -> GripperPlantState:
        with self.lock:
            return GripperPlantState(self.width_m, self.moving, False, self.finger_wrenches.copy())


def pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def wait_for(pred: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        pause(0.01)
    return pred()


class Cell:
    def __init__(self, port: int) -> None:
        self.bank = RG2FTRegisters()
        self.plant = Plant()
        self.server = RG2FTModbusServer(self.bank, ModbusServerConfig(port=port))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._twin_loop, daemon=True)

    def _twin_loop(self) -> None:
        while not self._stop.is_set():
            self.bank.apply(self.plant)
            self.plant.step(DT)
            self.bank.update(self.plant.gripper_state())
            self._stop.wait(DT)

    def __enter__(self) -> Cell:
        self.bank.update(self.plant.gripper_state())
        self.server.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.server.stop()


def make_driver(port: int, **kwargs) -> FTDriverProcess:
    kwargs.setdefault("timeout_s", 0.05)
    kwargs.setdefault("reconnect_min_s", 0.02)
    kwargs.setdefault("reconnect_max_s", 0.2)
    return FTDriverProcess(FTDriverConfig(host="127.0.0.1", port=port, **kwargs))


def records(proc: FTDriverProcess, first: int = 0) -> Iterator[dict]:
    ring = proc.ring
    for i in range(max(first, ring.oldest_readable()), ring.count):
        yield ring.read(i)


def samples_flow(proc: FTDriverProcess, n: int = 5, timeout_s: float = 5.0) -> bool:
    start = proc.stats()["samples"]
    return wait_for(lambda: proc.stats()["samples"] >= start + n, timeout_s)


# --------------------------------------------------------------------------- in-process units
def test_decode_signed_words_and_scale() -> None:
    words = [0] * 26
    words[2:8] = [(-123) & 0xFFFF, 50, 32767, (-1) & 0xFFFF, 7, (-32768) & 0xFFFF]
    words[23] = 423
    fingers, width, status = decode_state(words)
    np.testing.assert_allclose(fingers[0], [-12.3, 5.0, 3276.7, -0.01, 0.07, -327.68])
    assert np.all(fingers[1] == 0.0) and width == pytest.approx(0.0423) and status == (0, 0)


def test_processor_rotation_clipping_and_causal_savgol() -> None:
    from scipy.signal import savgol_filter

    squeeze = np.array([[0, 0, -10.0, 0, 0, 0], [0, 0, -10.0, 0, 0, 0]])
    rotated = WrenchProcessor(FTDriverConfig(rotate_to_tool=True))
    np.testing.assert_allclose(rotated(squeeze), 0.0, atol=1e-12)  # internal squeeze cancels
    load = np.array([[3.0, 0, -10.0, 0.2, 0, 0], [3.0, 0, -10.0, 0.2, 0, 0]])  # push along tool z
    np.testing.assert_allclose(rotated(load), [0, 0, 3.0, 0, 0, 0.2], atol=1e-12)
    raw = WrenchProcessor(FTDriverConfig())
    np.testing.assert_allclose(raw(load), load[0])
    clip = WrenchProcessor(FTDriverConfig(clip_force_n=4.0, clip_torque_nm=0.1))
    np.testing.assert_allclose(clip(load), [3.0, 0, -4.0, 0.1, 0, 0])

    rng = np.random.default_rng(3)
    seq = rng.normal(size=(40, 2, 6))
    smooth = WrenchProcessor(FTDriverConfig(savgol_window=9, savgol_polyorder=2))
    out = np.array([smooth(f) for f in seq])
    means = seq.mean(axis=1)
    for n in range(8, 40):
        ref = savgol_filter(means[n - 8 : n + 1], 9, 2, axis=0, mode="interp")[-1]
        np.testing.assert_allclose(out[n], ref, atol=1e-10)
    np.testing.assert_allclose(out[:8], means[:8])  # unsmoothed until the window fills
    assert not np.allclose(out[8:], means[8:])


def test_bad_command_arguments_name_the_limit() -> None:
    assert grip_command(0.05, 20.0) == ("grip", 200, 500)
    with pytest.raises(ValueError, match=r"width_m .*0\.0\.\.0\.1 m"):
        grip_command(0.2, 10.0)
    with pytest.raises(ValueError, match=r"force_n .*0\.0\.\.40\.0 N"):
        grip_command(0.05, 41.0)
    with pytest.raises(ValueError, match="finite"):
        grip_command(math.nan, 10.0)
    with pytest.raises(ValueError, match="width_m"):
        grip_command(-0.001, 10.0)
    with pytest.raises(ValueError, match="force_n"):
        grip_command(0.05, True)
    proc = make_driver(5039)  # validated before anything is queued (not even started)
    with pytest.raises(ValueError, match=r"40\.0 N"):
        proc.grip(0.05, math.inf)
    with pytest.raises(ValueError, match="savgol_polyorder"):
        FTDriverConfig(savgol_window=5, savgol_polyorder=5)


# --------------------------------------------------------------------------- driver process
def test_values_match_ground_truth_and_rate_is_100hz() -> None:
    rng = np.random.default_rng(11)
    truth = np.concatenate([rng.uniform(-30, 30, (2, 3)), rng.uniform(-1.5, 1.5, (2, 3))], axis=1)
    truth[0, 0] = -12.34
    with Cell(5031) as cell, make_driver(5031) as proc:
        cell.plant.set_wrenches(truth)
        assert wait_for(lambda: proc.stats()["samples"] > 10)
        first = proc.ring.count
        pause(1.5)
        recs = list(records(proc, first))
        latest = recs[-1]
        np.testing.assert_allclose(latest["finger_wrenches"][:, :3], truth[:, :3], atol=0.05 + 1e-9)
        np.testing.assert_allclose(
            latest["finger_wrenches"][:, 3:], truth[:, 3:], atol=0.005 + 1e-9
        )
        mean = truth.mean(axis=0)
        np.testing.assert_allclose(latest["wrench"][:3], mean[:3], atol=0.05 + 1e-9)
        np.testing.assert_allclose(latest["wrench"][3:], mean[3:], atol=0.005 + 1e-9)
        assert latest["gripper_width_m"] == pytest.approx(0.05, abs=1e-4)
        assert math.isnan(latest["device_time_s"])
        assert latest["t_receive_ns"] - latest["t_capture_ns"] == 2_000_000  # latency 2 ms
        stamps = np.array([r["t_receive_ns"] for r in recs])
        assert np.all(np.diff(stamps) > 0)
        stats = proc.stats()
        record_rate = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) * 1e-9)
        print(
            f"\nFT driver: loop {stats['rate_hz']:.2f} Hz, records {record_rate:.2f} Hz, "
            f"period p99 {stats['period_ms_p99']:.3f} ms, overruns {stats['overruns']:.0f}"
        )
        # A functional check that the loop runs at its rate, loose enough for a loaded
        # 2-core CI machine; the benchmark is where the rate is measured.
        assert 75.0 <= stats["rate_hz"] <= 125.0
        assert 75.0 <= record_rate <= 125.0
        assert stats["connected"] == 1.0
        # The driver writes, then counts: at most one record is not yet counted.
        count_before = proc.ring.count
        assert count_before - 1 <= proc.stats()["samples"] <= proc.ring.count
        for kind in ("timeouts", "exceptions", "io_errors", "invalid", "disconnects"):
            assert stats[kind] == 0, kind
        # A saturated reading (beyond int16) sets a status bit: counted, not written.
        before = proc.stats()["invalid"]
        bad = truth.copy()
        bad[1, 2] = 5000.0
        cell.plant.set_wrenches(bad)
        assert wait_for(lambda: proc.stats()["invalid"] >= before + 5)
        n0 = proc.ring.count
        pause(0.2)
        assert proc.ring.count == n0  # nothing written while the status is bad
        cell.plant.set_wrenches(truth)
        assert samples_flow(proc)
        assert all(abs(r["finger_wrenches"][1, 2]) < 100 for r in records(proc, first))


def test_rotation_clipping_and_smoothing_end_to_end() -> None:
    from scipy.signal import savgol_filter

    def wrench(t: float) -> np.ndarray:  # a smooth load on both fingers, large enough to clip
        s = math.sin(2 * math.pi * 1.5 * t)
        return np.array(
            [
                [20 * s, 3.0, -15 + 5 * s, 0.4 * s, -0.2, 0.1],
                [18 * s, -2.0, -14 - 5 * s, 0.3 * s, 0.25, -0.1],
            ]
        )

    window, order, fmax, tmax = 7, 2, 12.0, 0.25
    with Cell(5032) as cell:
        cell.plant.wrench_fn = wrench
        with make_driver(
            5032,
            rotate_to_tool=True,
            clip_force_n=fmax,
            clip_torque_nm=tmax,
            savgol_window=window,
            savgol_polyorder=order,
        ) as proc:
            pause(1.2)
            recs = list(records(proc))
            assert proc.stats()["disconnects"] == 0
    fingers = np.array([r["finger_wrenches"] for r in recs])
    got = np.array([r["wrench"] for r in recs])
    assert len(recs) > 80
    rot = np.stack([R_LEFT, R_RIGHT])
    tool = np.concatenate(
        [
            np.einsum("kij,nkj->nki", rot, fingers[:, :, :3]),
            np.einsum("kij,nkj->nki", rot, fingers[:, :, 3:]),
        ],
        axis=2,
    ).mean(axis=1)
    limit = np.array([fmax] * 3 + [tmax] * 3)
    clipped = np.clip(tool, -limit, limit)
    assert np.any(np.abs(tool) > limit)  # the clip engaged ...
    assert np.all(np.abs(got[: window - 1]) <= limit + 1e-12)  # ... and holds
    np.testing.assert_allclose(got[: window - 1], clipped[: window - 1], atol=1e-12)
    ref = np.array(
        [
            savgol_filter(clipped[n - window + 1 : n + 1], window, order, axis=0, mode="interp")[-1]
            for n in range(window - 1, len(clipped))
        ]
    )
    np.testing.assert_allclose(got[window - 1 :], ref, atol=1e-9)
    assert not np.allclose(got[window - 1 :], clipped[window - 1 :], atol=1e-3)  # smoothing acts
    # Rotation: the raw sensor-frame mean would put the squeeze (-Fz) in z; the tool frame
    # has the sensors' x (the sinusoid) in z and the squeeze cancelled to the ±y asymmetry.
    np.testing.assert_allclose(tool[:, 2], fingers[:, :, 0].mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(tool[:, 1], (fingers[:, 1, 2] - fingers[:, 0, 2]) / 2, atol=1e-12)


def test_faults_are_counted_skipped_and_recovered() -> None:
    with Cell(5033) as cell:
        cell.plant.set_wrenches(np.full((2, 6), 0.5))
        assert wait_for(lambda: cell.bank.wrenches()[0, 0] == 0.5)
        # A ring that holds the whole run (30 s at 100 Hz), so every record written
        # can be checked at the end however long the faults take on a loaded machine.
        with make_driver(5033, timeout_s=0.05, read_budget_s=30.0) as proc:
            run_faults(cell, proc)


def run_faults(cell: Cell, proc: FTDriverProcess) -> None:
    server = cell.server
    assert samples_flow(proc, 20)

    def check(kind: str, trigger: Callable[[], None], n: int = 1, timeout_s: float = 5.0):
        before = proc.stats()
        trigger()
        assert wait_for(lambda: proc.stats()[kind] >= before[kind] + n, timeout_s), (
            kind,
            proc.stats(),
        )
        assert samples_flow(proc), (kind, proc.stats())
        return before, proc.stats()

    check("exceptions", lambda: server.inject_exception(4, count=3), n=3)
    check("io_errors", lambda: server.inject_garbage(2, kind="function"), n=2)
    check("timeouts", lambda: server.inject_garbage(1, kind="tid"))
    check("timeouts", lambda: server.inject_garbage(1, kind="truncated"))

    def delay() -> None:
        server.set_reply_delay(0.15)
        pause(0.4)
        server.set_reply_delay(0.0)

    check("timeouts", delay, n=2)
    _, after = check("disconnects", server.drop_connections)
    assert wait_for(lambda: proc.stats()["reconnects"] >= 1)

    def restart() -> None:
        server.stop()
        pause(0.5)
        server.start()

    before, after = check("reconnects", restart)
    assert after["disconnects"] > before["disconnects"]
    assert after["connect_failures"] > before["connect_failures"]  # backoff while down
    stats = proc.stats()
    print(f"\nFT driver fault counters: {stats}")
    assert stats["connected"] == 1.0
    # Every record written is a counted sample: the driver writes, then counts, so
    # a concurrent read can see at most one record not yet counted.
    count_before = proc.ring.count
    samples = proc.stats()["samples"]
    assert count_before - 1 <= samples <= proc.ring.count
    # No bad data was ever written: every record of the run is still in the ring.
    assert proc.ring.oldest_readable() == 0, "ring wrapped: raise read_budget_s"
    recs = list(records(proc))
    assert len(recs) >= count_before
    w = np.array([r["wrench"] for r in recs])
    assert np.all(np.isfinite(w)) and np.allclose(w, 0.5, atol=0.006)


def test_grip_stop_and_zero_reach_the_registers() -> None:
    with Cell(5034) as cell, make_driver(5034) as proc:
        plant, bank = cell.plant, cell.bank
        proc.grip(0.08, 15.0)
        assert wait_for(lambda: abs(plant.width_m - 0.08) < 1e-6, 3.0)
        assert wait_for(lambda: abs(proc.ring.read_latest()["gripper_width_m"] - 0.08) < 1e-4)
        assert bank.read(65, 2, 2) == [150, 800]
        proc.grip(0.01, 20.0)
        assert wait_for(lambda: plant.width_m < 0.07, 2.0)
        proc.stop_gripper()
        pause(0.1)
        stopped = plant.width_m
        pause(0.2)
        assert plant.width_m == stopped and plant.width_m > 0.01
        plant.set_wrenches(np.full((2, 6), 2.0))
        assert wait_for(lambda: proc.ring.read_latest()["wrench"][0] == pytest.approx(2.0))
        proc.zero()
        assert wait_for(lambda: np.allclose(proc.ring.read_latest()["wrench"], 0.0), 2.0)
        assert bank.read(65, 0, 1) == [1]
        proc.unzero()
        assert wait_for(lambda: proc.ring.read_latest()["wrench"][0] == pytest.approx(2.0), 2.0)
        assert proc.stats()["commands"] == 5 and proc.stats()["command_errors"] == 0
    with pytest.raises(RuntimeError, match="not running"):
        proc.zero()
