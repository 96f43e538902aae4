"""The arm interface: SDK return codes become specific exceptions with clear messages; ArmState."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gf_realman_driver.arm import (
    JOINT_NAMES,
    ArmCommandRefused,
    ArmConnectionError,
    ArmError,
    ArmProtocolError,
    ArmState,
    ArmTimeoutError,
    ArmUnsupportedError,
    check_code,
    describe_code,
    describe_controller_error,
    error_for_code,
)
from gf_realman_driver.simulated_arm import SimulatedArm


def test_success_code_raises_nothing():
    assert error_for_code("movep_canfd", 0) is None
    check_code("movep_canfd", 0)


@pytest.mark.parametrize(
    "code, cls, words",
    [
        (1, ArmCommandRefused, "controller refused movep_canfd (code 1)"),
        (-1, ArmConnectionError, "movep_canfd failed (code -1): sending to the controller failed"),
        (-2, ArmConnectionError, "movep_canfd failed (code -2): no reply from the controller"),
        (-3, ArmProtocolError, "movep_canfd failed (code -3): the controller's reply could not be parsed"),
        (-4, ArmTimeoutError, "movep_canfd failed (code -4): timed out"),
        (-5, ArmTimeoutError, "movep_canfd failed (code -5): timed out waiting for the reply"),
        (7, ArmError, "movep_canfd failed (code 7): unknown return code"),
    ],
)
def test_sdk_codes_map_to_exception_classes_and_messages(code, cls, words):
    with pytest.raises(cls) as info:
        check_code("movep_canfd", code, detail="127.0.0.1:9")
    assert type(info.value) is cls  # the most specific class, not just the base
    assert str(info.value).startswith(words)
    assert "[127.0.0.1:9]" in str(info.value)
    assert info.value.command == "movep_canfd" and info.value.code == code


def test_per_command_meanings_override_the_generic_table():
    assert "does not support" in describe_code("set_arm_emergency_stop", -4)
    assert type(error_for_code("set_arm_emergency_stop", -4)) is ArmUnsupportedError
    assert "arrival check failed" in describe_code("movej", -4)
    assert type(error_for_code("movej", -4)) is ArmError
    assert "gripper did not reach" in describe_code("set_gripper_position", -4)
    assert type(error_for_code("set_gripper_position", -4)) is ArmTimeoutError
    # Refusal always reads as a refusal, whatever the command.
    assert str(error_for_code("set_arm_stop", 1)).startswith("controller refused set_arm_stop (code 1):")


def test_controller_error_codes_are_described():
    assert describe_controller_error(0x1003) == "0x1003 point unreachable (singularity)"
    assert describe_controller_error(0x1234).endswith("unknown controller error")


def test_arm_state_proprio_and_errors():
    state = ArmState(
        joint_positions=np.zeros(7),
        joint_velocities=np.zeros(7),
        ee_xyz=np.array([0.3, 0.1, 0.2]),
        ee_rpy=np.array([math.pi, 0.0, 0.5]),
        gripper_opening=0.04,
        error_codes=(0x1002,),
    )
    np.testing.assert_allclose(state.proprio(), [0.3, 0.1, 0.2, math.pi, 0.0, 0.5, 0.5], rtol=1e-6)
    assert state.has_error and state.describe_errors() == ["0x1002 target angle out of limit"]
    assert state.joint_names == JOINT_NAMES == tuple(f"joint{i}" for i in range(1, 8))


def test_shared_argument_checks_reject_bad_commands():
    arm = SimulatedArm(realtime=False)
    arm.connect()
    with pytest.raises(ValueError, match="joint3 target 200.0 deg is outside its limits"):
        arm.move_joints([0, 0, math.radians(200), 0, 0, 0, 0])
    with pytest.raises(ValueError, match="7 joint positions"):
        arm.move_joints([0, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        arm.stream_ee_target([0.3, float("nan"), 0.2], [math.pi, 0, 0])
    with pytest.raises(ValueError, match="speed must be in"):
        arm.move_joints(np.zeros(7), speed=0.0)
    with pytest.raises(ValueError, match="gripper opening"):
        arm.gripper_position(0.2)
    with pytest.raises(ValueError, match="force must be in"):
        arm.gripper_close(force=1.5)
