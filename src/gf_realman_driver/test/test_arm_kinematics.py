"""RM75 kinematics: FK agrees with the vendor SDK's own model; Jacobian; IK accuracy and limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gf_realman_driver.kinematics import (
    RM75_HOME,
    RM75_JOINT_LOWER,
    RM75_JOINT_MAX_VELOCITY,
    RM75_JOINT_UPPER,
    rm75_kinematics,
    rotation_error,
    rpy_to_matrix,
)


@pytest.fixture(scope="module")
def sdk_algo():
    sdk = pytest.importorskip("Robotic_Arm.rm_robot_interface")
    return sdk.Algo(sdk.rm_robot_arm_model_e.RM_MODEL_RM_75_E, sdk.rm_force_type_e.RM_MODEL_RM_B_E)


def test_fk_matches_the_vendor_sdk_rm75_model(sdk_algo):
    """The SDK's offline algorithm library is Realman's own RM75 model: agree to float32 precision."""
    kin = rm75_kinematics()
    rng = np.random.default_rng(0)
    for q in [np.zeros(7), np.asarray(RM75_HOME), *rng.uniform(kin.lower, kin.upper, size=(40, 7))]:
        ref = np.asarray(sdk_algo.rm_algo_forward_kinematics([math.degrees(a) for a in q], 1))
        p, R = kin.forward(q)
        np.testing.assert_allclose(p, ref[:3], atol=5e-6)
        np.testing.assert_allclose(R, rpy_to_matrix(ref[3:]), atol=5e-6)


def test_limits_and_speeds_match_the_vendor_sdk(sdk_algo):
    np.testing.assert_allclose(np.degrees(RM75_JOINT_UPPER), sdk_algo.rm_algo_get_joint_max_limit(), atol=1e-4)
    np.testing.assert_allclose(np.degrees(RM75_JOINT_LOWER), sdk_algo.rm_algo_get_joint_min_limit(), atol=1e-4)
    np.testing.assert_allclose(np.degrees(RM75_JOINT_MAX_VELOCITY), sdk_algo.rm_algo_get_joint_max_speed(), atol=1e-4)


def test_euler_convention_matches_the_sdk(sdk_algo):
    rpy = [0.3, -0.4, 1.1]
    m = sdk_algo.rm_algo_euler2matrix(rpy)
    np.testing.assert_allclose(np.asarray(list(m.data)).reshape(4, 4)[:3, :3], rpy_to_matrix(rpy), atol=1e-6)


def test_straight_arm_height_and_reach():
    kin = rm75_kinematics()
    p, _ = kin.forward(np.zeros(7))
    np.testing.assert_allclose(p, [0, 0, 0.8505], atol=1e-9)
    # Shoulder-to-flange reach is 0.256 + 0.21 + 0.144 = 0.61 m.
    p, _ = kin.forward([0, math.pi / 2, 0, 0, 0, 0, 0])
    assert math.isclose(np.linalg.norm(p - [0, 0, 0.2405]), 0.61, abs_tol=1e-9)


def test_home_points_the_flange_down_over_the_table():
    p, R = rm75_kinematics().forward(RM75_HOME)
    assert 0.2 < p[0] < 0.4 and abs(p[1]) < 1e-9 and 0.2 < p[2] < 0.35
    np.testing.assert_allclose(R[:, 2], [0, 0, -1], atol=1e-9)  # tool z axis points down


def test_jacobian_matches_finite_differences():
    kin = rm75_kinematics(tool_offset=(0.0, 0.0, 0.12))
    q = np.asarray(RM75_HOME) + 0.1
    J = kin.jacobian(q)
    p0, R0 = kin.forward(q)
    h = 1e-6
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = h
        p1, R1 = kin.forward(q + dq)
        np.testing.assert_allclose((p1 - p0) / h, J[:3, i], atol=1e-5)
        np.testing.assert_allclose(rotation_error(R1, R0) / h, J[3:, i], atol=1e-5)


def test_ik_reaches_a_nearby_pose():
    kin = rm75_kinematics()
    p, _ = kin.forward(RM75_HOME)
    target_p = p + [0.06, -0.08, -0.05]
    target_R = rpy_to_matrix([math.pi - 0.2, 0.1, math.pi + 0.3])
    result = kin.solve_ik(target_p, target_R, RM75_HOME, posture=RM75_HOME)
    assert result.converged
    p1, R1 = kin.forward(result.q)
    assert np.linalg.norm(p1 - target_p) < 1e-4
    assert np.linalg.norm(rotation_error(target_R, R1)) < 1e-3


def test_ik_never_leaves_the_joint_limits():
    """A target that needs a joint past its limit ends unconverged at the limit, not beyond it."""
    upper = np.asarray(RM75_JOINT_UPPER).copy()
    upper[1] = math.radians(30.0)  # joint2 may lean forward only 30 deg
    kin = rm75_kinematics(upper=upper)
    reachable_q = np.asarray(RM75_HOME).copy()
    reachable_q[1] = math.radians(60.0)  # a pose that needs joint2 = 60 deg on the full arm
    target_p, target_R = rm75_kinematics().forward(reachable_q)
    result = kin.solve_ik(target_p, target_R, RM75_HOME, max_iterations=200)
    assert not result.converged
    assert kin.within_limits(result.q)
    assert result.q[1] <= upper[1]
    # From many random starts and far targets, the answer is always inside the limits.
    rng = np.random.default_rng(1)
    full = rm75_kinematics()
    for _ in range(20):
        q_target = rng.uniform(full.lower, full.upper)
        tp, tR = full.forward(q_target)
        res = kin.solve_ik(tp, tR, rng.uniform(kin.lower, kin.upper), max_iterations=40)
        assert kin.within_limits(res.q)


def test_ik_reports_pose_and_jacobian_and_a_warm_start_changes_nothing():
    """Following a path, the previous answer's pose and Jacobian stand in for one forward kinematics
    (the planner's joint checks solve every set-point): the answers must be the same."""
    kin = rm75_kinematics()
    p, R = kin.forward(RM75_HOME)
    first = kin.solve_ik(p + [0.004, 0.0, -0.002], R, RM75_HOME)
    fk_p, fk_R = kin.forward(first.q)
    np.testing.assert_allclose(first.pose[0], fk_p, atol=1e-12)
    np.testing.assert_allclose(first.pose[1], fk_R, atol=1e-12)
    np.testing.assert_allclose(first.jacobian, kin.jacobian(first.q), atol=1e-12)
    target = p + [0.008, 0.003, -0.004]
    cold = kin.solve_ik(target, R, first.q)
    warm = kin.solve_ik(target, R, first.q, previous=first)
    np.testing.assert_array_equal(warm.q, cold.q)
    assert warm.converged and warm.iterations == cold.iterations
