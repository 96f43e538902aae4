"""SimulatedArm: follows streamed EE targets, honours joint position/velocity limits, latency,
gripper speed, stop / emergency stop, disconnects; works stepped by hand and in real time."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from gf_realman_driver.arm import (
    ArmConnectionError,
    ArmEmergencyStopped,
    ArmTimeoutError,
)
from gf_realman_driver.kinematics import (
    RM75_HOME,
    RM75_JOINT_UPPER,
    matrix_to_rpy,
    rotation_error,
    rpy_to_matrix,
)
from gf_realman_driver.simulated_arm import ERR_UNREACHABLE, SimulatedArm


@pytest.fixture
def arm():
    a = SimulatedArm(realtime=False, rate_hz=500.0, latency_s=0.005)
    a.connect()
    yield a
    a.close()


def stream_line(arm: SimulatedArm, start_xyz, start_rpy, delta_xyz, delta_rpy, n: int, period: float = 0.01) -> None:
    """Stream n evenly spaced set-points from start to start + delta, one per period."""
    R0 = rpy_to_matrix(start_rpy)
    for i in range(1, n + 1):
        s = i / n
        R = rpy_to_matrix(np.asarray(delta_rpy) * s) @ R0
        arm.stream_ee_target(np.asarray(start_xyz) + s * np.asarray(delta_xyz), matrix_to_rpy(R))
        arm.advance(period)


def test_follows_a_commanded_ee_delta(arm):
    s0 = arm.state()
    delta_xyz, delta_rpy = np.array([0.05, -0.04, -0.03]), np.array([0.0, 0.0, 0.2])
    stream_line(arm, s0.ee_xyz, s0.ee_rpy, delta_xyz, delta_rpy, n=60)
    arm.advance(0.1)
    s1 = arm.state()
    np.testing.assert_allclose(s1.ee_xyz - s0.ee_xyz, delta_xyz, atol=2e-4)
    target_R = rpy_to_matrix(delta_rpy) @ rpy_to_matrix(s0.ee_rpy)
    assert np.linalg.norm(rotation_error(target_R, rpy_to_matrix(s1.ee_rpy))) < 2e-3
    assert arm.setpoints_received == 60 and arm.setpoints_ignored == 0
    assert s1.error_codes == () and np.allclose(s1.joint_velocities, 0.0)  # settled
    # The reported pose is the forward kinematics of the reported joints.
    p, _ = arm.kin.forward(s1.joint_positions)
    np.testing.assert_allclose(p, s1.ee_xyz, atol=1e-12)


def test_command_latency(arm):
    s0 = arm.state()
    arm.stream_ee_target(s0.ee_xyz + [0.005, 0, 0], s0.ee_rpy)
    arm.advance(0.004)  # latency is 5 ms: nothing may have moved yet
    np.testing.assert_array_equal(arm.state().joint_positions, s0.joint_positions)
    arm.advance(0.004)
    assert np.linalg.norm(arm.state().ee_xyz - s0.ee_xyz) > 1e-4


def test_joint_velocity_limits_hold_when_the_stream_is_too_fast():
    arm = SimulatedArm(realtime=False, velocity_scale=0.5)
    arm.connect()
    vmax = 0.5 * arm.kin.max_velocity
    s0 = arm.state()
    worst = 0.0
    # 1 cm every 10 ms = 1 m/s, more than the joints can do at half speed.
    for i in range(1, 11):
        arm.stream_ee_target(s0.ee_xyz + [0.0, 0.01 * i, 0.0], s0.ee_rpy)
        for _ in range(5):
            arm.advance(arm.dt)
            worst = max(worst, float(np.max(np.abs(arm.state().joint_velocities) / vmax)))
    assert worst == pytest.approx(1.0)  # saturated, never above
    for _ in range(500):
        arm.advance(arm.dt)
        worst = max(worst, float(np.max(np.abs(arm.state().joint_velocities) / vmax)))
    assert worst <= 1.0 + 1e-9
    assert arm.setpoints_ignored == 0
    assert arm.state().ee_xyz[1] == pytest.approx(s0.ee_xyz[1] + 0.1, abs=2e-4)  # it catches up


def test_move_joints_blocks_until_arrival_at_the_requested_speed(arm):
    t0 = arm.sim_time
    target = np.asarray(RM75_HOME) + np.array([0.4, 0, 0, 0, 0, 0, 0])
    arm.move_joints(target, speed=0.5)
    np.testing.assert_array_equal(arm.state().joint_positions, target)
    assert math.isclose(arm.sim_time - t0, 0.4 / (0.5 * arm.kin.max_velocity[0]), abs_tol=2 * arm.dt)


def test_streamed_targets_beyond_a_joint_limit_are_ignored_and_flagged():
    upper = np.asarray(RM75_JOINT_UPPER).copy()
    upper[3] = math.radians(95.0)  # elbow may bend only 5 deg past home
    arm = SimulatedArm(realtime=False, joint_upper=upper)
    arm.connect()
    s0 = arm.state()
    # Moving the flange straight down towards the base needs the elbow to bend much further.
    for i in range(1, 41):
        arm.stream_ee_target(s0.ee_xyz + [-0.004 * i, 0.0, -0.004 * i], s0.ee_rpy)
        arm.advance(0.01)
        assert arm.kin.within_limits(arm.state().joint_positions)
    s1 = arm.state()
    assert s1.joint_positions[3] <= upper[3] + 1e-12
    assert arm.setpoints_ignored > 0
    assert ERR_UNREACHABLE in s1.error_codes and "setpoint_ignored" in s1.flags


def test_a_far_setpoint_is_ignored_like_the_controller_does(arm):
    s0 = arm.state()
    arm.stream_ee_target(s0.ee_xyz + [0.15, 0.2, 0.0], s0.ee_rpy)  # no interpolation: a big jump
    arm.advance(0.1)
    s1 = arm.state()
    np.testing.assert_array_equal(s1.joint_positions, s0.joint_positions)
    assert arm.setpoints_ignored == 1 and "setpoint_ignored" in s1.flags


def test_gripper_moves_at_finite_speed(arm):
    assert arm.state().gripper_opening == pytest.approx(0.08)
    arm.gripper_close(force=0.3)
    arm.advance(0.4)
    assert arm.state().gripper_opening == pytest.approx(0.08 - 0.1 * 0.4, abs=1e-9)
    arm.advance(1.0)
    assert arm.state().gripper_opening == pytest.approx(0.0)
    arm.gripper_position(0.03)
    arm.advance(1.0)
    assert arm.state().gripper_opening == pytest.approx(0.03)
    arm.gripper_open()
    arm.advance(1.0)
    assert arm.state().proprio()[6] == pytest.approx(1.0)


def test_stop_drops_queued_setpoints(arm):
    s0 = arm.state()
    arm.stream_ee_target(s0.ee_xyz + [0.005, 0, 0], s0.ee_rpy)
    arm.stop()  # before the 5 ms latency elapsed
    arm.advance(0.05)
    np.testing.assert_array_equal(arm.state().joint_positions, s0.joint_positions)


def test_emergency_stop_latches_until_cleared(arm):
    s0 = arm.state()
    arm.gripper_close()
    arm.advance(0.1)
    arm.emergency_stop()
    opening = arm.state().gripper_opening
    with pytest.raises(ArmEmergencyStopped, match="emergency stop is latched"):
        arm.stream_ee_target(s0.ee_xyz, s0.ee_rpy)
    with pytest.raises(ArmEmergencyStopped):
        arm.move_joints(RM75_HOME)
    with pytest.raises(ArmEmergencyStopped):
        arm.gripper_open()
    arm.advance(0.2)
    state = arm.state()
    assert state.emergency_stopped and "emergency_stop" in state.flags
    assert state.gripper_opening == opening  # the gripper stopped too
    arm.stop()  # stop is always allowed
    arm.clear_emergency()
    arm.stream_ee_target(s0.ee_xyz + [0.002, 0, 0], s0.ee_rpy)
    arm.advance(0.05)
    assert not arm.state().emergency_stopped
    assert arm.state().ee_xyz[0] == pytest.approx(s0.ee_xyz[0] + 0.002, abs=1e-4)


def test_calls_fail_clearly_when_not_connected():
    arm = SimulatedArm(realtime=False)
    with pytest.raises(ArmConnectionError, match="not connected"):
        arm.state()
    arm.connect()
    arm.state()
    arm.simulate_disconnect()
    for call in (arm.state, arm.stop, lambda: arm.stream_ee_target([0.3, 0, 0.3], [math.pi, 0, 0])):
        with pytest.raises(ArmConnectionError):
            call()
    arm.connect()  # reconnect works and the arm kept its state
    assert arm.state().joint_positions.shape == (7,)


def test_move_joints_timeout_stops_the_arm(arm):
    target = np.asarray(RM75_HOME) + np.array([1.0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ArmTimeoutError, match="did not arrive within 0.1 s"):
        arm.move_joints(target, speed=0.1, timeout=0.1)
    q = arm.state().joint_positions
    arm.advance(0.2)
    np.testing.assert_array_equal(arm.state().joint_positions, q)


def test_realtime_mode_moves_with_the_wall_clock_and_is_thread_safe():
    arm = SimulatedArm(realtime=True, rate_hz=500.0)
    arm.connect()
    try:
        with pytest.raises(RuntimeError):
            arm.advance(0.1)
        t0 = time.monotonic()
        target = np.asarray(RM75_HOME) + np.array([0.3, 0, 0, 0, 0, 0, 0])
        arm.move_joints(target, speed=1.0, timeout=5.0)
        elapsed = time.monotonic() - t0
        np.testing.assert_array_equal(arm.state().joint_positions, target)
        assert elapsed >= 0.3 / arm.kin.max_velocity[0] - 0.01

        # A streaming thread and a state reader at once: no errors, every snapshot consistent.
        s0 = arm.state()
        errors: list[BaseException] = []

        def streamer():
            try:
                for i in range(1, 101):  # 2 cm in 0.2 mm steps, about every 5 ms
                    arm.stream_ee_target(s0.ee_xyz + [0.0002 * i, 0, 0], s0.ee_rpy)
                    time.sleep(0.005)
            except Exception as exc:  # noqa: BLE001 - any failure in the thread is asserted on below
                errors.append(exc)

        thread = threading.Thread(target=streamer)
        thread.start()
        stamps = []
        while thread.is_alive():
            state = arm.state()
            p, _ = arm.kin.forward(state.joint_positions)
            np.testing.assert_allclose(p, state.ee_xyz, atol=1e-12)
            stamps.append(state.timestamp)
            time.sleep(0.003)
        thread.join()
        assert len(stamps) > 10
        assert not errors
        assert np.all(np.diff(stamps) >= 0)
        time.sleep(0.1)
        assert arm.state().ee_xyz[0] == pytest.approx(s0.ee_xyz[0] + 0.02, abs=5e-4)
    finally:
        arm.close()
    assert not arm.is_connected
