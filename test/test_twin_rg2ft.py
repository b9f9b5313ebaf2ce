"""RG2-FT compute box emulation: register bank and Modbus server, with the real pymodbus client."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from demuse_ros.twin.interface import GripperPlantState
from demuse_ros.twin.modbus_server import ModbusServerConfig, RG2FTModbusServer
from demuse_ros.twin.rg2ft import (
    REG_BUSY,
    REG_CONTROL,
    REG_STATUS_L,
    REG_STATUS_R,
    STATUS_INVALID,
    STATUS_SATURATED,
    RegisterAccessError,
    RG2FTRegisters,
    from_register,
    quantize,
    to_register,
)

try:
    from pymodbus.client import ModbusTcpClient
    from pymodbus.exceptions import ConnectionException, ModbusIOException
except ImportError:  # no "sim" extra: the bank tests still run
    ModbusTcpClient = None

needs_pymodbus = pytest.mark.skipif(
    ModbusTcpClient is None, reason="needs pymodbus 3.16 (pip install '.[sim]')"
)
DT = 0.002


class FakeGripperPlant:
    """Just the Plant protocol's gripper half: fingers move at a fixed speed toward the target."""

    physics_rate_hz = 500.0

    def __init__(self, width_m: float = 0.05, speed_m_s: float = 0.1) -> None:
        self.width_m = width_m
        self.target_m = width_m
        self.speed = speed_m_s
        self.moving = False
        self.grip_detected = False
        self.finger_wrenches = np.zeros((2, 6))
        self.commands: list[tuple[float, float, bool]] = []
        self._lock = threading.Lock()

    def set_gripper_command(self, target_width_m: float, target_force_n: float, grip: bool) -> None:
        with self._lock:
            self.commands.append((target_width_m, target_force_n, grip))
            self.target_m = target_width_m if grip else self.width_m
            self.moving = grip and abs(self.target_m - self.width_m) > 1e-9

    def step(self, dt_s: float) -> None:
        with self._lock:
            delta = self.target_m - self.width_m
            move = float(np.clip(delta, -self.speed * dt_s, self.speed * dt_s))
            self.width_m += move
            self.moving = abs(self.target_m - self.width_m) > 1e-9

    def gripper_state(self) -> GripperPlantState:
        with self._lock:
            return GripperPlantState(
                self.width_m, self.moving, self.grip_detected, self.finger_wrenches.copy()
            )


def step(bank: RG2FTRegisters, plant: FakeGripperPlant, n: int = 1) -> None:
    """One twin step as the runners do it: commands in, physics, state out."""
    for _ in range(n):
        bank.apply(plant)
        plant.step(DT)
        bank.update(plant.gripper_state())


@pytest.fixture
def cell():
    bank = RG2FTRegisters()
    plant = FakeGripperPlant()
    step(bank, plant)
    with RG2FTModbusServer(bank, ModbusServerConfig(port=0)) as server:
        yield bank, plant, server


def client_for(server: RG2FTModbusServer, **kwargs):
    kwargs.setdefault("timeout", 1.0)
    client = ModbusTcpClient("127.0.0.1", port=server.port, **kwargs)
    assert client.connect()
    return client


def signed(client, regs: list[int]) -> list[int]:
    return client.convert_from_registers(regs, client.DATATYPE.INT16)


# --------------------------------------------------------------------------- bank only
def test_quantize_rounds_half_away_and_flags_saturation() -> None:
    ints, sat, bad = quantize(np.array([0.25, -0.25, 1.04, -1.06, 0.0]), 10.0)
    assert ints.tolist() == [3, -3, 10, -11, 0] and not sat and not bad
    ints, sat, bad = quantize(np.array([4000.0, -4000.0, np.nan]), 10.0)
    assert ints.tolist() == [32767, -32768, 0] and sat and bad
    assert to_register(-123) == 65413 and from_register(65413) == -123
    assert from_register(to_register(-32768)) == -32768


def test_saturated_and_invalid_readings_set_status_bits() -> None:
    bank, plant = RG2FTRegisters(), FakeGripperPlant()
    plant.finger_wrenches[0, 2] = 5000.0  # beyond ±3276.7 N
    plant.finger_wrenches[1, 4] = np.nan
    step(bank, plant)
    words = bank.read(65, 257, 26)
    assert words[REG_STATUS_L - 257] == STATUS_SATURATED
    assert words[REG_STATUS_R - 257] == STATUS_INVALID
    assert from_register(words[261 - 257]) == 32767
    plant.finger_wrenches[:] = 0.0
    step(bank, plant)
    assert bank.read(65, REG_STATUS_L, 1) == [0] and bank.read(65, REG_STATUS_R, 1) == [0]


def test_grip_ignored_while_busy_and_stop_always_accepted() -> None:
    bank, plant = RG2FTRegisters(), FakeGripperPlant(width_m=0.05)
    bank.write(65, 2, [200, 900, 1])  # 20 N, 90 mm
    assert bank.read(65, REG_BUSY, 1) == [1] and plant.commands == []  # busy at the write
    step(bank, plant)
    assert plant.commands[-1] == pytest.approx((0.09, 20.0, True))
    assert bank.read(65, REG_BUSY, 1) == [1] and bank.read(65, REG_CONTROL, 1) == [1]
    bank.write(65, 2, [100, 100, 1])  # busy: ignored
    step(bank, plant)
    assert len(plant.commands) == 1 and bank.ignored_commands == 1
    bank.write(65, REG_CONTROL, [0])  # stop
    step(bank, plant)
    assert plant.commands[-1][2] is False
    assert bank.read(65, REG_BUSY, 1) == [0] and bank.read(65, REG_CONTROL, 1) == [0]
    with pytest.raises(RegisterAccessError) as err:
        bank.write(65, 281, [0])
    assert err.value.code == 2


# --------------------------------------------------------------------------- real client
@needs_pymodbus
def test_fc03_and_fc04_read_the_fingertip_ground_truth(cell) -> None:
    bank, plant, server = cell
    rng = np.random.default_rng(7)
    plant.finger_wrenches[:, :3] = rng.uniform(-60.0, 60.0, (2, 3))
    plant.finger_wrenches[:, 3:] = rng.uniform(-2.0, 2.0, (2, 3))
    plant.finger_wrenches[0, 0] = -12.34  # a definitely negative force
    plant.grip_detected = True
    plant.width_m = plant.target_m = 0.0423
    step(bank, plant)
    client = client_for(server)
    try:
        hr = client.read_holding_registers(257, count=26, device_id=65)
        ir = client.read_input_registers(257, count=26, device_id=65)
        assert not hr.isError() and not ir.isError()
        assert hr.registers == ir.registers  # one shared block
        regs = signed(client, hr.registers)
    finally:
        client.close()
    for finger, base in enumerate((259, 268)):
        got = np.array(regs[base - 257 : base - 257 + 6], dtype=float)
        truth = plant.finger_wrenches[finger]
        np.testing.assert_allclose(got[:3] * 0.1, truth[:3], atol=0.05 + 1e-9)
        np.testing.assert_allclose(got[3:] * 0.01, truth[3:], atol=0.005 + 1e-9)
    assert regs[259 - 257] == -123
    assert regs[257 - 257] == 0 and regs[266 - 257] == 0  # status ok
    assert regs[280 - 257] == 423  # width, 0.1 mm
    assert regs[281 - 257] == 0 and regs[282 - 257] == 1  # not busy, grip detected
    assert regs[275 - 257] == 0 and regs[278 - 257] == 0  # proximity: the object, touching


@needs_pymodbus
def test_grip_command_moves_fingers_and_busy_goes_1_then_0(cell) -> None:
    bank, plant, server = cell
    stop = threading.Event()

    def twin_loop() -> None:  # the twin's step loop at ~500 Hz
        while not stop.is_set():
            step(bank, plant)
            time.sleep(DT)

    loop = threading.Thread(target=twin_loop, daemon=True)
    loop.start()
    client = client_for(server)
    busy_seen: list[int] = []
    try:
        assert not client.write_registers(2, [150, 800, 1], device_id=65).isError()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            busy = client.read_holding_registers(281, count=1, device_id=65).registers[0]
            if not busy_seen or busy_seen[-1] != busy:
                busy_seen.append(busy)
            if busy_seen == [1, 0]:
                break
            time.sleep(0.005)
        width = client.read_input_registers(280, count=1, device_id=65).registers[0]
        control = client.read_holding_registers(4, count=1, device_id=65).registers[0]
    finally:
        client.close()
        stop.set()
        loop.join()
    assert busy_seen == [1, 0]
    assert width == 800 and plant.width_m == pytest.approx(0.08)
    assert plant.commands[0] == pytest.approx((0.08, 15.0, True))
    assert control == 0  # cleared when the motion ended


@needs_pymodbus
def test_zero_register_zeroes_and_unzeroes(cell) -> None:
    bank, plant, server = cell
    raw = np.array([[3.0, -4.0, 5.5, 0.1, -0.2, 0.3], [-1.0, 2.0, -3.0, 0.05, 0.0, -0.07]])
    plant.finger_wrenches[:] = raw
    step(bank, plant)
    client = client_for(server)
    try:
        assert not client.write_register(0, 1, device_id=65).isError()
        step(bank, plant)
        zeroed = signed(
            client, client.read_holding_registers(259, count=15, device_id=65).registers
        )
        assert zeroed[0:6] == [0] * 6 and zeroed[9:15] == [0] * 6
        plant.finger_wrenches[0, 2] += 2.5  # a new load shows relative to the zero
        step(bank, plant)
        fz_left = client.read_holding_registers(261, count=1, device_id=65).registers[0]
        assert from_register(fz_left) == 25
        assert client.read_holding_registers(0, count=1, device_id=65).registers == [1]
        assert not client.write_register(0, 0, device_id=65).isError()  # un-zero
        step(bank, plant)
        back = signed(client, client.read_holding_registers(259, count=6, device_id=65).registers)
        assert back == [30, -40, 80, 10, -20, 30]
    finally:
        client.close()
    bank.zero()  # the hook the arm side may call
    step(bank, plant)
    assert np.all(bank.wrenches() == 0.0)


@needs_pymodbus
def test_unit63_power_cycle_and_unknown_unit_and_bad_address(cell) -> None:
    bank, plant, server = cell
    client = client_for(server)
    try:
        assert not client.write_register(0, 2, device_id=63).isError()
        step(bank, plant)
        assert bank.power_cycles == 1
        assert client.read_holding_registers(0, count=1, device_id=63).registers == [0]
        unknown = client.read_holding_registers(257, count=26, device_id=12)
        assert unknown.isError() and unknown.exception_code == 0x0B
        past_end = client.read_holding_registers(299, count=2, device_id=65)
        assert past_end.isError() and past_end.exception_code == 2
        into_state = client.write_register(281, 1, device_id=65)
        assert into_state.isError() and into_state.exception_code == 2
        coils = client.read_coils(0, count=8, device_id=65)
        assert coils.isError() and coils.exception_code == 1
    finally:
        client.close()


# --------------------------------------------------------------------------- fault hooks
@needs_pymodbus
def test_injected_exception_is_an_exception_response(cell) -> None:
    _, _, server = cell
    client = client_for(server)
    try:
        server.inject_exception(6, count=2)  # SLAVE_BUSY
        for _ in range(2):
            reply = client.read_holding_registers(257, count=26, device_id=65)
            assert reply.isError() and reply.exception_code == 6
        assert not client.read_holding_registers(257, count=26, device_id=65).isError()
    finally:
        client.close()


@needs_pymodbus
def test_garbage_replies_fail_or_retry_without_killing_the_server(cell) -> None:
    _, _, server = cell
    client = client_for(server, timeout=0.3, retries=1)
    try:
        server.inject_garbage(1, kind="tid")  # frame skipped -> timeout -> retried
        reply = client.read_holding_registers(257, count=26, device_id=65)
        assert not reply.isError() and reply.retries == 1
        server.inject_garbage(1, kind="function")  # undecodable: the call fails at once
        with pytest.raises(ModbusIOException):
            client.read_holding_registers(257, count=26, device_id=65)
        server.inject_garbage(2, kind="truncated")  # both attempts cut short -> no answer
        with pytest.raises(ModbusIOException):
            client.read_holding_registers(257, count=26, device_id=65)
        assert not client.read_holding_registers(257, count=26, device_id=65).isError()
    finally:
        client.close()
    assert server.running


@needs_pymodbus
def test_reply_delay_times_out_a_short_timeout_client(cell) -> None:
    _, _, server = cell
    client = client_for(server, timeout=0.2, retries=0)
    try:
        server.set_reply_delay(0.6)
        t0 = time.monotonic()
        with pytest.raises(ModbusIOException):
            client.read_holding_registers(257, count=26, device_id=65)
        assert time.monotonic() - t0 < 0.5
        server.set_reply_delay(0.0)
        time.sleep(0.6)  # the late reply arrives and is skipped by transaction id
        assert not client.read_holding_registers(257, count=26, device_id=65).isError()
    finally:
        client.close()


@needs_pymodbus
def test_drop_connections_then_the_client_reconnects(cell) -> None:
    _, _, server = cell
    client = client_for(server, timeout=0.5, retries=0)
    try:
        assert not client.read_holding_registers(257, count=1, device_id=65).isError()
        assert server.drop_connections() == 1
        ok = False
        for _ in range(5):
            try:
                ok = not client.read_holding_registers(257, count=1, device_id=65).isError()
            except (ConnectionException, ModbusIOException):
                time.sleep(0.05)
            if ok:
                break
        assert ok
    finally:
        client.close()


@needs_pymodbus
def test_server_restarts_on_the_same_port(cell) -> None:
    _, _, server = cell
    port = server.port
    client = client_for(server, timeout=0.3, retries=0)
    try:
        server.stop()
        assert not server.running
        with pytest.raises((ConnectionException, ModbusIOException)):
            client.read_holding_registers(257, count=1, device_id=65)
        server.start()
        assert server.port == port
        ok = False
        for _ in range(5):
            try:
                ok = not client.read_holding_registers(257, count=1, device_id=65).isError()
            except (ConnectionException, ModbusIOException):
                time.sleep(0.05)
            if ok:
                break
        assert ok
    finally:
        client.close()


@needs_pymodbus
def test_context_manager_releases_the_port() -> None:
    with RG2FTModbusServer(RG2FTRegisters(), ModbusServerConfig(port=0)) as server:
        port = server.port
        assert server.running
    assert not server.running
    with socket.socket() as sock:  # the listener is gone: the port can be bound again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
