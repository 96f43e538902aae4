"""RealmanArm over the real vendor SDK, with no arm: every test talks to 127.0.0.1 only (a closed
port, a local 'black hole' listener, or a local fake controller). No test touches another address."""

from __future__ import annotations

import math
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("Robotic_Arm.rm_robot_interface")

from gf_realman_driver.arm import (
    ArmCommandRefused,
    ArmConnectionError,
    ArmEmergencyStopped,
    ArmTimeoutError,
)
from gf_realman_driver.fake_controller import FakeRealmanController
from gf_realman_driver.realman_arm import FairLock, RealmanArm, wait_for_pending_connect

LOCALHOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def sdk_idle():
    """An abandoned connect may linger in the SDK for a few seconds; do not let it leak into the next test."""
    assert wait_for_pending_connect(10.0)
    yield
    assert wait_for_pending_connect(10.0)


def closed_port() -> int:
    s = socket.socket()
    s.bind((LOCALHOST, 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more
    return port


@pytest.fixture
def black_hole():
    """A loopback port whose accept queue is full, so new TCP connects get no answer at all."""
    server = socket.socket()
    server.bind((LOCALHOST, 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname(), timeout=1.0)
    yield server.getsockname()[1]
    filler.close()
    server.close()


@pytest.fixture
def controller():
    fake = FakeRealmanController()
    yield fake
    fake.close()


@pytest.fixture
def arm(controller):
    a = RealmanArm(LOCALHOST, controller.port, connect_timeout=3.0, command_timeout_ms=300, gripper_poll_period=0.0)
    a.connect()
    yield a
    a.close()


def test_ip_is_required_and_must_be_an_address():
    with pytest.raises(TypeError):
        RealmanArm()  # no default address: a test can never reach the factory IP by accident
    with pytest.raises(ValueError, match="IP address literal"):
        RealmanArm("robot.local")


@pytest.mark.parametrize("preflight", [True, False])
def test_closed_port_fails_fast_with_a_clear_error(preflight):
    port = closed_port()
    arm = RealmanArm(LOCALHOST, port, connect_timeout=2.0, preflight=preflight)
    t0 = time.monotonic()
    with pytest.raises(ArmConnectionError) as info:
        arm.connect()
    assert time.monotonic() - t0 < 2.0
    message = str(info.value)
    assert f"{LOCALHOST}:{port}" in message
    assert ("connection refused" in message) if preflight else ("handle -1" in message)
    assert not arm.is_connected
    with pytest.raises(ArmConnectionError, match="not connected"):
        arm.state()


@pytest.mark.parametrize("preflight", [True, False])
def test_unanswered_connect_gives_up_at_the_timeout(black_hole, preflight):
    arm = RealmanArm(LOCALHOST, black_hole, connect_timeout=0.5, preflight=preflight)
    t0 = time.monotonic()
    with pytest.raises(ArmConnectionError) as info:
        arm.connect()
    elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 1.0  # the configured timeout, not the SDK's own (~3 s) or the kernel's
    assert ("no answer within 0.5 s" if preflight else "did not finish within 0.5 s") in str(info.value)


def test_silent_peer_fails_in_the_handshake_within_the_timeout():
    silent = FakeRealmanController(respond=False)
    try:
        arm = RealmanArm(LOCALHOST, silent.port, connect_timeout=0.5, command_timeout_ms=1500)
        t0 = time.monotonic()
        with pytest.raises(ArmConnectionError, match="did not answer the SDK's handshake"):
            arm.connect()
        assert time.monotonic() - t0 < 1.0
        assert "get_arm_software_info" in silent.commands()  # the SDK really spoke to it
    finally:
        silent.close()


def test_connects_and_reports_state_in_si_units(arm, controller):
    controller.joints_deg = [10.0, -20.0, 30.0, 45.0, -50.0, 60.0, 170.0]
    controller.pose = [0.3, -0.1, 0.25, 3.141, 0.02, -1.5]
    controller.gripper_actpos = 250
    state = arm.state()
    np.testing.assert_allclose(state.joint_positions, np.radians(controller.joints_deg), atol=1e-9)
    np.testing.assert_allclose(state.ee_xyz, [0.3, -0.1, 0.25], atol=1e-6)
    np.testing.assert_allclose(state.ee_rpy, [3.141, 0.02, -1.5], atol=1e-6)
    assert state.gripper_opening == pytest.approx(0.02)  # 250 / 1000 x 0.08 m
    assert state.error_codes == () and state.flags == () and not state.emergency_stopped
    # Joint velocity comes from successive samples.
    controller.joints_deg[0] += 1.0
    time.sleep(0.05)
    state2 = arm.state()
    assert 0.0 < state2.joint_velocities[0] < math.radians(1.0) / 0.05 * 1.5
    assert state2.timestamp > state.timestamp


def test_controller_errors_show_up_in_the_state(arm, controller):
    controller.errors = [0x1003]
    state = arm.state()
    assert state.error_codes == (0x1003,) and state.describe_errors() == ["0x1003 point unreachable (singularity)"]


def test_stream_sends_movep_canfd_in_wire_units(arm, controller):
    arm.stream_ee_target([0.3, 0.01, 0.25], [3.14, 0.0, -0.5])
    deadline = time.monotonic() + 2.0
    while controller.last("movep_canfd") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = controller.last("movep_canfd")
    assert sent["pose"] == [300000, 10000, 250000, 3140, 0, -500]  # micrometres and milliradians
    assert sent["follow"] is True and sent["trajectory_mode"] == 0


def test_refusal_becomes_a_clear_exception(arm, controller):
    arm.stop()
    controller.arm_stop_ok = False
    with pytest.raises(ArmCommandRefused, match=r"controller refused set_arm_stop \(code 1\)"):
        arm.stop()


def test_gripper_commands_use_the_sdk_scales(arm, controller):
    arm.gripper_position(0.02)
    assert controller.last("set_gripper_position")["position"] == 250
    arm.gripper_close(force=0.5)
    assert controller.last("set_gripper_pick")["force"] == 525  # 50 + 0.5 x 950
    arm.gripper_open()
    assert controller.last("set_gripper_release") is not None
    controller.gripper_ok = False
    with pytest.raises(ArmCommandRefused, match="controller refused set_gripper_position"):
        arm.gripper_position(0.04)


def test_emergency_stop_on_a_3rd_gen_controller_latches_in_software(arm, controller):
    assert not arm.hardware_estop_supported  # the fake reports controller generation 3
    arm.emergency_stop()
    assert "set_arm_stop" in controller.commands()
    assert "set_arm_emergency_stop" not in controller.commands()
    sent_before = len(controller.commands())
    with pytest.raises(ArmEmergencyStopped):
        arm.stream_ee_target([0.3, 0.0, 0.25], [3.14, 0.0, 0.0])
    with pytest.raises(ArmEmergencyStopped):
        arm.move_joints(np.zeros(7))
    assert len(controller.commands()) == sent_before  # nothing reached the controller
    assert arm.state().emergency_stopped
    arm.clear_emergency()
    arm.stream_ee_target([0.3, 0.0, 0.25], [3.14, 0.0, 0.0])
    arm.stop()  # the SDK's stop still works afterwards (it deadlocks after the gen-3 e-stop call)


def test_emergency_stop_on_a_4th_gen_controller_uses_the_controller_estop():
    fake = FakeRealmanController(generation=4)
    arm = RealmanArm(LOCALHOST, fake.port, connect_timeout=3.0, command_timeout_ms=300)
    try:
        arm.connect()
        assert arm.hardware_estop_supported
        arm.emergency_stop()
        assert fake.commands()[-2:] == ["set_arm_stop", "set_arm_emergency_stop"]
        with pytest.raises(ArmEmergencyStopped):
            arm.gripper_open()
        arm.clear_emergency()
        assert fake.last("set_arm_emergency_stop")["emergency_stop"] in (0, False)
        arm.stop()
    finally:
        arm.close()
        fake.close()


def test_move_joints_sends_degrees_and_waits_for_arrival(arm, controller):
    target = np.radians([0.0, 20.0, 0.0, 90.0, 0.0, 70.0, 0.0])  # where the fake arm already is
    arm.move_joints(target, speed=0.3, timeout=2.0)
    sent = controller.last("movej")
    assert sent["joint"] == [0, 20000, 0, 90000, 0, 70000, 0] and sent["v"] == 30
    with pytest.raises(ArmTimeoutError, match="did not arrive within 0.3 s"):
        arm.move_joints(target + 0.1, timeout=0.3)  # the fake arm never moves
    assert controller.commands()[-1] == "set_arm_stop"  # stopped after the timeout


def test_a_dropped_connection_becomes_a_connection_error(arm, controller):
    arm.state()
    controller.drop_clients()
    time.sleep(0.1)
    with pytest.raises(ArmConnectionError, match=r"code -[12]"):
        for _ in range(3):  # the first send after a reset may still be buffered by TCP
            arm.stream_ee_target([0.3, 0.0, 0.25], [3.14, 0.0, 0.0])
            time.sleep(0.05)
    arm.close()
    arm.connect()  # the controller is still there: reconnecting works
    assert arm.state().joint_positions.shape == (7,)


def test_the_link_comes_back_after_every_one_of_many_controller_drops(controller):
    # In the SDK's dual-thread mode the receive thread died within 3 to 115 drops and no
    # handshake could complete in the process after that; the driver never reconnected.
    arm = RealmanArm(LOCALHOST, controller.port, connect_timeout=3.0, command_timeout_ms=300, gripper_poll_period=0.0)
    try:
        for cycle in range(200):
            try:
                arm.connect()
            except ArmConnectionError as exc:
                pytest.fail(f"reconnect {cycle} after a controller drop failed: {exc}")
            assert arm.state().joint_positions.shape == (7,)
            controller.drop_clients()
            arm.close()
    finally:
        arm.close()


def test_the_query_lock_serves_a_waiting_caller_before_one_that_asks_again():
    """The state reader holds the query handle for a slow reply and asks again at once; a gripper
    command waiting meanwhile goes next, not after some later poll."""
    lock, holds, order = FairLock(), 0, []
    stop = threading.Event()

    def poller():
        nonlocal holds
        while not stop.is_set():
            with lock:
                holds += 1
                order.append("poll")
                time.sleep(0.02)  # a slow reply

    thread = threading.Thread(target=poller)
    thread.start()
    try:
        while holds == 0:
            time.sleep(0.001)
        asked_at = holds
        with lock:
            order.append("command")
            served_at = holds
    finally:
        stop.set()
        thread.join()
    # served when the poll holding the lock ended (that one, or the next if it had just begun)
    assert served_at - asked_at <= 1, order
    assert order.count("command") == 1
