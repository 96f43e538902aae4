"""Driver safety rules: limits, frame mapping, chunk -> set-point planning, refusal without motion,
rate limits across chunks, tracking, the watchdog, and the streaming controller on a SimulatedArm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gf_eval.action_space import ChunkRejected, validate_chunk
from gf_realman_driver.arm import ArmConnectionError
from gf_realman_driver.kinematics import (
    RM75_DH_D,
    RM75_HOME,
    RM75_JOINT_UPPER,
    matrix_to_rpy,
    rm75_kinematics,
    rotation_error,
    rpy_to_matrix,
)
from gf_realman_driver.safety import (
    DEFAULT_JOINT_CHECKS,
    JOINT_LIMIT_MARGIN,
    JOINT_VELOCITY_FACTOR,
    MIN_SINGULAR_VALUE,
    ChunkExecutor,
    FrameMapping,
    GripperCommander,
    JointChecks,
    SafetyLimits,
    SafetyViolation,
    TargetPlanner,
    TrackingMonitor,
    Watchdog,
)
from gf_realman_driver.simulated_arm import SimulatedArm
from gf_realman_driver.streaming import StreamController

START_XYZ = np.array([0.25, 0.0, 0.25])  # inside the default workspace, 11 cm from its +x wall
START_RPY = np.array([math.pi, 0.0, 0.0])
# A box larger than the arm's reach, for tests where other rules (not the walls) must decide.
BEYOND_REACH = dict(workspace_min=(0.0, -0.6, 0.0), workspace_max=(0.8, 0.6, 0.7))


def chunk(steps: int, dx=0.0, dy=0.0, dz=0.0, droll=0.0, dpitch=0.0, dyaw=0.0, gripper=1.0) -> np.ndarray:
    """A (steps, 7) ee_delta_pose chunk repeating one action."""
    return np.tile([dx, dy, dz, droll, dpitch, dyaw, gripper], (steps, 1)).astype(np.float64)


# -- limits and mapping -------------------------------------------------------------------------


def test_limits_validate_their_numbers():
    with pytest.raises(ValueError, match="below workspace_max"):
        SafetyLimits(workspace_min=(0.5, -0.4, 0.0), workspace_max=(0.4, 0.4, 0.5))
    with pytest.raises(ValueError, match="floor_z"):
        SafetyLimits(floor_z=-0.1)
    with pytest.raises(ValueError, match="max_step_translation"):
        SafetyLimits(max_step_translation=0.0)
    limits = SafetyLimits.from_mapping({"workspace_min": [0.1, -0.3, 0.0], "floor_z": 0.05, "max_step_rotation": 0.2})
    assert limits.workspace_min == (0.1, -0.3, 0.0) and limits.floor_z == 0.05 and limits.max_step_rotation == 0.2
    with pytest.raises(ValueError, match="unknown safety limit"):
        SafetyLimits.from_mapping({"workspace_minn": [0, 0, 0]})


def test_identity_mapping_uses_the_action_space_scale():
    dp, dR, g = FrameMapping().map_action([0.5, -0.2, 0.1, 0.0, 0.0, 1.0, -1.0])
    np.testing.assert_allclose(dp, [0.05, -0.02, 0.01])  # 1.0 = 0.1 m
    np.testing.assert_allclose(dR, rpy_to_matrix([0, 0, 0.1]), atol=1e-12)  # 1.0 = 0.1 rad
    assert g == -1.0


def test_rotated_and_scaled_mapping():
    quarter_turn_z = ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    mapping = FrameMapping(rotation=quarter_turn_z, translation_scale=0.5, rotation_scale=0.5)
    dp, dR, _ = mapping.map_action([1.0, 0, 0, 1.0, 0, 0, 1.0])
    np.testing.assert_allclose(dp, [0.0, 0.05, 0.0], atol=1e-12)  # sim +x is RM75 +y, half as far
    np.testing.assert_allclose(dR, rpy_to_matrix([0.0, 0.05, 0.0]), atol=1e-12)  # sim roll -> RM75 pitch
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(10, 7))
    translations, rotvecs = mapping.map_actions(actions)
    for a, t, rv in zip(actions, translations, rotvecs):
        dp, dR, _ = mapping.map_action(a)
        np.testing.assert_allclose(t, dp, atol=1e-12)
        np.testing.assert_allclose(rpy_to_matrix(np.zeros(3)) @ dR, _rotvec_matrix(rv), atol=1e-12)
    with pytest.raises(ValueError, match="proper 3x3 rotation"):
        FrameMapping(rotation=((1, 0, 0), (0, 1, 0), (0, 0, -1)))  # a reflection


def _rotvec_matrix(rv) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rv).as_matrix()


# -- planning -----------------------------------------------------------------------------------


def test_plan_interpolates_at_the_streaming_period():
    planner = TargetPlanner(SafetyLimits(), control_period=0.05, stream_period=0.01)
    actions = chunk(4, dx=0.2, dz=-0.1, dyaw=0.5)
    actions[2:, 6] = -1.0
    plan = planner.plan(actions, START_XYZ, START_RPY, start_time=10.0)
    assert len(plan) == 20  # 4 steps x 5 set-points
    np.testing.assert_allclose(np.diff(plan.times), 0.01)
    assert plan.times[0] == pytest.approx(10.01) and plan.end_time == pytest.approx(10.2)
    np.testing.assert_allclose(plan.final_xyz, START_XYZ + 4 * np.array([0.02, 0.0, -0.01]), atol=1e-12)
    # Straight-line positions, evenly spaced: 4 mm / -2 mm per 10 ms.
    np.testing.assert_allclose(np.diff(plan.xyz, axis=0), np.tile([0.004, 0.0, -0.002], (19, 1)), atol=1e-12)
    # Orientation turns 0.05 rad per step about base z, reached exactly at each step's end.
    expected_final = rpy_to_matrix([0, 0, 0.2]) @ rpy_to_matrix(START_RPY)
    assert np.linalg.norm(rotation_error(expected_final, plan.final_rotation)) < 1e-12
    assert np.linalg.norm(rotation_error(expected_final, rpy_to_matrix(plan.rpy[-1]))) < 1e-9
    mid = rpy_to_matrix([0, 0, 0.01]) @ rpy_to_matrix(START_RPY)
    assert np.linalg.norm(rotation_error(mid, rpy_to_matrix(plan.rpy[0]))) < 1e-9
    np.testing.assert_array_equal(plan.gripper, [1.0] * 10 + [-1.0] * 10)
    np.testing.assert_array_equal(plan.step, np.repeat(np.arange(4), 5))


def test_planner_accepts_a_validated_chunk():
    data = chunk(3, dy=0.1).ravel()
    valid = validate_chunk(
        trial_id="t", step_index=0, horizon=3, execute_steps=0, action_dim=7, action_space="ee_delta_pose",
        data=data, expected_trial_id=None, next_step=None,
    )
    plan = TargetPlanner(SafetyLimits()).plan(valid, START_XYZ, START_RPY, 0.0)
    np.testing.assert_allclose(plan.final_xyz, START_XYZ + [0, 0.03, 0], atol=1e-6)


def test_stream_period_must_divide_the_control_period():
    with pytest.raises(ValueError, match="whole multiple"):
        TargetPlanner(SafetyLimits(), control_period=0.05, stream_period=0.03)


def test_workspace_violation_is_refused_and_nothing_is_produced():
    limits = SafetyLimits(workspace_max=(0.35, 0.2, 0.28))
    planner = TargetPlanner(limits)
    executor = ChunkExecutor(planner)
    # 0.25 + k * 0.025: step 3 ends at 0.35 (allowed); step 4 passes it at its first set-point.
    with pytest.raises(SafetyViolation) as info:
        executor.submit(chunk(6, dx=0.25), START_XYZ, START_RPY, now=0.0)
    assert info.value.reason == "workspace" and info.value.step == 4
    assert isinstance(info.value, ChunkRejected)
    assert "step 4: target x=0.3550 m outside the workspace" in str(info.value)  # first bad set-point
    assert not executor.active
    assert executor.next_setpoint(1.0) is None
    # The refused chunk left no trace in the rate history: a chunk using the full per-second
    # budget right away is accepted (in a box wide enough for the rate limit to bind first).
    wide = dict(workspace_min=(0.20, -0.30, 0.0), workspace_max=(0.36, 0.30, 0.28))
    fast = TargetPlanner(SafetyLimits(max_translation_per_second=0.2, **wide), control_period=0.05)
    with pytest.raises(SafetyViolation) as info:
        fast.plan(chunk(12, dy=0.2), START_XYZ, START_RPY, 0.0)  # 0.24 m within 1 s: refused at step 10
    assert info.value.reason == "translation_rate" and info.value.step == 10
    fast.plan(chunk(10, dy=0.2), START_XYZ, START_RPY, 0.0)  # 10 x 2 cm = 0.2 m: exactly at the limit


def test_floor_violation_is_refused():
    planner = TargetPlanner(SafetyLimits(floor_z=0.2))
    with pytest.raises(SafetyViolation) as info:
        planner.plan(chunk(5, dz=-0.15), START_XYZ, START_RPY, 0.0)  # 0.25 - k * 0.015
    assert info.value.reason == "floor" and info.value.step == 3  # 0.205 ok, 0.19 below the floor


def test_start_pose_outside_the_workspace_blocks_every_chunk():
    planner = TargetPlanner(SafetyLimits())
    outside = np.array([0.10, 0.0, 0.25])  # x below workspace_min 0.15
    with pytest.raises(SafetyViolation) as info:
        planner.plan(chunk(2, dx=0.2), outside, START_RPY, 0.0)  # even a move back towards it
    assert info.value.reason == "workspace" and info.value.step == 0


def test_per_step_limits():
    limits = SafetyLimits(max_step_translation=0.03, max_step_rotation=0.15)
    planner = TargetPlanner(limits)
    planner.plan(chunk(1, dx=0.3), START_XYZ, START_RPY, 0.0)  # exactly 3 cm: allowed
    actions = chunk(3, dx=0.1)
    actions[1, :3] = [0.3, 0.2, 0.0]  # 3.6 cm
    with pytest.raises(SafetyViolation) as info:
        planner.plan(actions, START_XYZ, START_RPY, 1.0)
    assert info.value.reason == "step_translation" and info.value.step == 1 and "36.1 mm" in str(info.value)
    with pytest.raises(SafetyViolation) as info:
        planner.plan(chunk(2, droll=1.0, dpitch=1.0, dyaw=1.0), START_XYZ, START_RPY, 2.0)  # ~0.17 rad
    assert info.value.reason == "step_rotation" and info.value.step == 0


def test_translation_rate_limit_within_and_across_chunks():
    # 40 cm in a line: refused by the rate limit, before the joint checks (the chunks accepted
    # below stay within reach).
    limits = SafetyLimits(max_step_translation=0.03, max_translation_per_second=0.3, **BEYOND_REACH)
    planner = TargetPlanner(limits)
    # 20 steps of 2 cm in 1 s: each step is fine, but 0.40 m/s > 0.30 m/s; step 15 tips it over.
    with pytest.raises(SafetyViolation) as info:
        planner.plan(chunk(20, dx=0.2), START_XYZ - [0.1, 0, 0], START_RPY, 0.0)
    assert info.value.reason == "translation_rate" and info.value.step == 15
    # Across chunks: 0.2 m in the first, then the second reaches 0.32 m within 1 s at its step 5.
    planner.plan(chunk(10, dy=0.2), START_XYZ, START_RPY, 0.0)
    with pytest.raises(SafetyViolation) as info:
        planner.plan(chunk(10, dy=-0.2), START_XYZ + [0, 0.2, 0], START_RPY, 0.5)
    assert info.value.reason == "translation_rate" and info.value.step == 5
    # Once the first chunk's steps are older than the window, the same chunk is fine.
    planner.plan(chunk(10, dy=-0.2), START_XYZ + [0, 0.2, 0], START_RPY, 1.5)


def test_rotation_rate_limit():
    planner = TargetPlanner(SafetyLimits(max_step_rotation=0.15, max_rotation_per_second=1.0))
    with pytest.raises(SafetyViolation) as info:
        planner.plan(chunk(20, dyaw=1.0), START_XYZ, START_RPY, 0.0)  # 0.1 rad per step = 2 rad/s
    assert info.value.reason == "rotation_rate" and info.value.step == 10


# -- joint checks -------------------------------------------------------------------------------


def first_refused_step(planner: TargetPlanner, actions: np.ndarray, reason: str) -> int:
    """The step a chunk is refused at for ``reason``, checked against the chunk cut just before it
    (accepted: the refusal names the first bad step, not a later one)."""
    with pytest.raises(SafetyViolation) as info:
        planner.plan(actions, START_XYZ, START_RPY, 0.0)
    assert info.value.reason == reason, info.value
    k = info.value.step
    planner.reset_history()
    planner.plan(actions[:k], START_XYZ, START_RPY, 0.0)
    return k


def test_every_setpoint_gets_a_joint_solution_inside_the_limits_and_speeds():
    kin = DEFAULT_JOINT_CHECKS.kinematics
    planner = TargetPlanner(SafetyLimits())
    plan = planner.plan(chunk(10, dx=0.1, dy=-0.15, dz=-0.05, dyaw=0.4), START_XYZ, START_RPY, 0.0)
    assert plan.joints.shape == (len(plan), 7)
    for q, xyz, rpy in zip(plan.joints, plan.xyz, plan.rpy):
        p, R = kin.forward(q)  # each solution puts the tool where the set-point is
        assert np.linalg.norm(p - xyz) < 1e-4 and np.linalg.norm(rotation_error(rpy_to_matrix(rpy), R)) < 1e-3
    assert np.all(plan.joints >= kin.lower + JOINT_LIMIT_MARGIN) and np.all(plan.joints <= kin.upper - JOINT_LIMIT_MARGIN)
    speeds = np.abs(np.diff(plan.joints, axis=0)) / planner.stream_period
    assert np.all(speeds <= JOINT_VELOCITY_FACTOR * kin.max_velocity)


def test_the_joint_path_starts_from_the_measured_joints():
    """The 7th joint makes the elbow free: the checks follow the arm's own elbow, not a guessed one."""
    kin = DEFAULT_JOINT_CHECKS.kinematics
    p, R = kin.forward(RM75_HOME)
    elbow_out = np.asarray(RM75_HOME) + np.radians([0, 0, 40, 0, 0, 0, 0])
    measured = kin.solve_ik(p, R, elbow_out, posture=elbow_out, max_iterations=200).q  # same pose, other elbow
    assert np.linalg.norm(kin.forward(measured)[0] - p) < 1e-4 and abs(measured[2] - RM75_HOME[2]) > 0.3
    planner = TargetPlanner(SafetyLimits())
    from_measured = planner.plan(chunk(2, dy=0.1), p, R, 0.0, start_joints=measured)
    guessed = planner.plan(chunk(2, dy=0.1), p, R, 1.0)  # no joints: the IK of the start pose from home
    assert np.max(np.abs(from_measured.joints[0] - measured)) < 0.05
    assert abs(guessed.joints[0][2] - measured[2]) > 0.3


def test_a_chunk_towards_the_edge_of_the_reach_is_refused_near_the_singularity():
    planner = TargetPlanner(SafetyLimits(**BEYOND_REACH))
    executor = ChunkExecutor(planner)
    # Slowly (0.1 m/s): faster, the elbow would exceed its speed limit first as it nears straight.
    outward = chunk(50, dx=0.05)  # 5 mm per step from x = 0.25 to the stretched arm and beyond
    k = first_refused_step(planner, outward, "singularity")
    assert 0 < k < len(outward)
    planner.reset_history()
    with pytest.raises(SafetyViolation, match="smallest singular value") as info:
        executor.submit(outward, START_XYZ, START_RPY, now=0.0)
    assert info.value.step == k and not executor.active  # refused whole: nothing streams
    # The last set-point accepted is still clear of it; the arm was stretched (elbow opening) on the way.
    plan = planner.plan(outward[:k], START_XYZ, START_RPY, 0.0)
    smallest = np.linalg.svd(DEFAULT_JOINT_CHECKS.kinematics.jacobian(plan.joints[-1]), compute_uv=False)[-1]
    assert MIN_SINGULAR_VALUE <= smallest
    assert abs(plan.joints[-1][3]) < abs(plan.joints[0][3])


def test_a_setpoint_near_a_joint_limit_is_refused():
    # Reaching out opens the elbow (joint4): with its range cut to >= 80 deg the arm runs out of it.
    # (The elbow angle is fixed by the wrist's distance from the shoulder: no redundancy helps.)
    lower = -np.asarray(RM75_JOINT_UPPER)
    lower[3] = math.radians(80.0)
    checks = JointChecks(rm75_kinematics(lower=lower))
    planner = TargetPlanner(SafetyLimits(**BEYOND_REACH), joint_checks=checks)
    outward = chunk(10, dx=0.1)  # 1 cm per step
    k = first_refused_step(planner, outward, "joint_limit")
    plan = planner.plan(outward[:k], START_XYZ, START_RPY, 0.0)
    assert np.all(plan.joints[:, 3] >= lower[3] + JOINT_LIMIT_MARGIN)
    # Reaching in (the elbow closes) is fine, and so is the same chunk on the unrestricted arm.
    planner.plan(chunk(10, dx=-0.04), START_XYZ, START_RPY, 10.0)
    TargetPlanner(SafetyLimits(**BEYOND_REACH)).plan(outward, START_XYZ, START_RPY, 0.0)


def test_an_arm_resting_a_hair_outside_a_wall_can_hold_and_back_off_but_not_push_on():
    """Jogged against the +y wall, the measured pose reads a fraction of a millimetre outside it.
    Planned from there, even a chunk that holds still was refused, the watchdog stopped the arm and
    the operator was stuck at the wall; now a start within 1 mm is planned from the wall itself."""
    limits = SafetyLimits()
    executor = ChunkExecutor(TargetPlanner(limits))
    at_wall = np.array([0.28, limits.workspace_max[1] + 0.0003, 0.15])
    held = executor.submit(chunk(4), at_wall, START_RPY, now=0.0)
    assert held.xyz[:, 1] == pytest.approx(limits.workspace_max[1])  # held at the wall, not beyond it
    executor.cancel()
    executor.submit(chunk(4, dy=-0.1), at_wall, START_RPY, now=10.0)  # backing off
    executor.cancel()
    with pytest.raises(SafetyViolation, match="outside the workspace"):
        executor.submit(chunk(4, dy=0.05), at_wall, START_RPY, now=20.0)  # pushing on
    executor.cancel()
    with pytest.raises(SafetyViolation, match="outside the workspace"):  # really outside: not moved in
        executor.submit(chunk(4), at_wall + [0.0, 0.005, 0.0], START_RPY, now=30.0)


def test_a_setpoint_beyond_the_reach_is_refused_as_unreachable_when_no_other_check_names_it():
    # On the real RM75 the singularity, joint-limit or joint-speed check always fires first on the
    # way out; with those switched off what is left is the pose the IK cannot reach at all.
    kin = rm75_kinematics(lower=[-6.2] * 7, upper=[6.2] * 7)
    checks = JointChecks(kin, min_singular_value=0.0, velocity_factor=100.0)
    planner = TargetPlanner(SafetyLimits(**BEYOND_REACH), joint_checks=checks)
    outward = chunk(50, dx=0.05)  # 5 mm per step, straight out past the stretched arm
    k = first_refused_step(planner, outward, "unreachable")
    with pytest.raises(SafetyViolation, match=rf"step {k}: no joint solution \(closest [\d.]+ mm"):
        planner.plan(outward, START_XYZ, START_RPY, 10.0)
    plan = planner.plan(outward[:k], START_XYZ, START_RPY, 20.0)  # up to there, every set-point is solved
    assert np.linalg.norm(kin.forward(plan.joints[-1])[0] - plan.xyz[-1]) < 1e-4


def test_a_setpoint_that_needs_a_joint_too_fast_is_refused():
    slow = rm75_kinematics(max_velocity=[0.5] * 7)  # rad/s, well below the RM75's 3.1-3.9
    planner = TargetPlanner(SafetyLimits(), joint_checks=JointChecks(slow))
    fast_chunk = chunk(4, dy=0.2)  # 0.4 m/s: about 1.6 rad/s at the base for a 0.25 m lever
    with pytest.raises(SafetyViolation, match=r"joint\d would turn at \d+ deg/s") as info:
        planner.plan(fast_chunk, START_XYZ, START_RPY, 0.0)
    assert info.value.reason == "joint_velocity" and info.value.step == 0
    planner.plan(chunk(4, dy=0.01), START_XYZ, START_RPY, 0.0)  # 0.02 m/s: slow enough
    TargetPlanner(SafetyLimits()).plan(fast_chunk, START_XYZ, START_RPY, 0.0)  # the real arm's speeds


def test_every_corner_of_the_default_workspace_is_reachable_pointing_down():
    DEFAULT_JOINT_CHECKS.check_workspace(SafetyLimits())  # no error
    # A 15 cm gripper on the flange lifts the flange 15 cm: the upper corners leave the reach.
    with pytest.raises(ValueError, match=r"corner\(s\) of the workspace box") as info:
        DEFAULT_JOINT_CHECKS.check_workspace(SafetyLimits(tcp_offset=(0.0, 0.0, 0.15)))
    hi = SafetyLimits().workspace_max
    assert f"({hi[0]:.3f}, {hi[1]:.3f}, {hi[2]:.3f}) m" in str(info.value)


def test_a_workspace_corner_beyond_the_arms_length_is_named():
    limits = SafetyLimits(workspace_min=(0.15, -0.40, 0.0), workspace_max=(0.65, 0.40, 0.55))  # the old default box
    with pytest.raises(ValueError) as info:
        DEFAULT_JOINT_CHECKS.check_workspace(limits)
    # Corners farther from the shoulder than the arm is long (shoulder to flange) cannot be reached.
    shoulder, length = np.array([0.0, 0.0, RM75_DH_D[0]]), sum(RM75_DH_D[1:])
    lo, hi = limits.workspace_min, limits.workspace_max
    corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    far = [c for c in corners if np.linalg.norm(np.asarray(c) - shoulder) > length]
    assert far
    for c in far:
        assert f"({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}) m" in str(info.value)


# -- executor -----------------------------------------------------------------------------------


def test_executor_queues_chunks_and_hands_out_due_setpoints():
    executor = ChunkExecutor(TargetPlanner(SafetyLimits()))
    first = executor.submit(chunk(2, dx=0.1), START_XYZ, START_RPY, now=0.0)
    second = executor.submit(chunk(2, dy=0.1), START_XYZ, START_RPY, now=0.02)
    # The second chunk follows the first in time and in space.
    assert second.start_time == pytest.approx(first.end_time)
    np.testing.assert_allclose(second.start_xyz, first.final_xyz)
    assert executor.next_setpoint(0.005) is None  # nothing due yet
    sp = executor.next_setpoint(0.01)
    assert sp.time == pytest.approx(0.01) and sp.step == 0
    sp = executor.next_setpoint(0.035)  # late: the newest due one, older ones skipped
    assert sp.time == pytest.approx(0.03)
    assert executor.next_setpoint(0.035) is None  # nothing twice
    sp = executor.next_setpoint(0.5)
    np.testing.assert_allclose(sp.xyz, START_XYZ + [0.02, 0.02, 0.0], atol=1e-12)
    assert not executor.active
    # Idle: the next chunk composes on the last target (target-delta control) ...
    third = executor.submit(chunk(1, dz=0.1), START_XYZ + [0.02, 0.02, 0.0], START_RPY, now=1.0)
    np.testing.assert_allclose(third.start_xyz, START_XYZ + [0.02, 0.02, 0.0], atol=1e-12)
    # ... and after cancel() it starts from the measured pose.
    executor.cancel()
    measured = START_XYZ + [0.021, 0.019, 0.0]
    fourth = executor.submit(chunk(1, dz=0.1), measured, START_RPY, now=2.0)
    np.testing.assert_allclose(fourth.start_xyz, measured)


def test_executor_refuses_when_the_arm_lags_far_behind():
    executor = ChunkExecutor(TargetPlanner(SafetyLimits(max_tracking_error=0.05)))
    executor.submit(chunk(2, dx=0.1), START_XYZ, START_RPY, now=0.0)
    executor.next_setpoint(1.0)
    with pytest.raises(SafetyViolation) as info:
        executor.submit(chunk(1, dx=0.1), START_XYZ - [0.04, 0.0, 0.0], START_RPY, now=1.0)  # 6 cm off
    assert info.value.reason == "tracking_error"


# -- tracking -----------------------------------------------------------------------------------


def line_of_setpoints(monitor: TrackingMonitor, speed: float, until: float, period: float = 0.01):
    """Record set-points moving along +x at ``speed`` from START_XYZ every ``period`` until ``until``."""
    times = np.arange(period, until + 1e-9, period)
    for t in times:
        monitor.record(t, START_XYZ + [speed * t, 0.0, 0.0], START_RPY)
    return lambda t: START_XYZ + [speed * min(max(t, 0.0), times[-1]), 0.0, 0.0]


def test_tracking_allows_the_latency_but_not_a_stuck_or_displaced_arm():
    limits = SafetyLimits()
    monitor = TrackingMonitor(limits)
    speed = 0.3
    sent_at = line_of_setpoints(monitor, speed, 1.0)
    t = 0.5
    # Following half the allowed latency behind: far from the newest set-point, on the path.
    late = sent_at(t - limits.tracking_latency / 2)
    assert np.linalg.norm(late - sent_at(t)) > limits.max_tracking_error
    monitor.check(late, START_RPY, t)
    # Sideways off the path, or turned away: beyond the tolerances (just inside them: fine).
    for scale, refused in ((0.8, False), (1.2, True)):
        sideways = late + [0.0, scale * limits.max_tracking_error, 0.0]
        turned = rpy_to_matrix([0.0, 0.0, scale * limits.max_tracking_rotation]) @ rpy_to_matrix(START_RPY)
        for xyz, rot in ((sideways, START_RPY), (late, matrix_to_rpy(turned))):
            if refused:
                with pytest.raises(SafetyViolation) as info:
                    monitor.check(xyz, rot, t)
                assert info.value.reason == "tracking_error"
            else:
                monitor.check(xyz, rot, t)
    # Stuck where it was at 0.3 s: fine while the latency can explain it, refused once it cannot.
    stuck = sent_at(0.3)
    monitor.check(stuck, START_RPY, 0.3 + limits.tracking_latency)
    with pytest.raises(SafetyViolation, match="from where its set-points could have taken it"):
        monitor.check(stuck, START_RPY, 0.3 + limits.tracking_latency + 1.5 * limits.max_tracking_error / speed)
    # After the motion the arm must have arrived at the last set-point.
    monitor.check(sent_at(1.0), START_RPY, 3.0)
    with pytest.raises(SafetyViolation):
        monitor.check(sent_at(0.95), START_RPY, 3.0)
    monitor.clear()  # stopped: expected nowhere
    monitor.check(stuck, START_RPY, 3.0)


# -- watchdog -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_watchdog_fires_once_after_the_timeout():
    clock = FakeClock(100.0)
    dog = Watchdog(0.5, clock=clock)
    clock.t = 1000.0
    assert not dog.armed and not dog.poll()  # nothing to watch before the first chunk
    dog.feed()
    clock.t += 0.5
    assert not dog.expired() and not dog.poll()  # exactly at the timeout: not yet
    clock.t += 0.001
    assert dog.expired() and dog.poll()
    assert not dog.poll() and not dog.armed and dog.fired_count == 1  # once only
    dog.feed()
    clock.t += 0.3
    dog.feed()  # a new chunk restarts the timeout
    clock.t += 0.4
    assert not dog.poll() and dog.remaining() == pytest.approx(0.1)
    dog.disarm()
    clock.t += 10
    assert not dog.poll()
    with pytest.raises(ValueError):
        Watchdog(0.0)


# -- the streaming controller on a simulated arm --------------------------------------------------


def make_controller(timeout: float = 0.5, limits: SafetyLimits | None = None, mapping: FrameMapping | None = None):
    arm = SimulatedArm(realtime=False, latency_s=0.005)
    arm.connect()
    planner = TargetPlanner(limits or SafetyLimits(), mapping, control_period=0.05, stream_period=0.01)
    return arm, StreamController(arm, ChunkExecutor(planner), Watchdog(timeout))


def run(arm: SimulatedArm, controller: StreamController, t: float, until: float, period: float = 0.01) -> tuple[float, list]:
    results = []
    while t < until - 1e-9:
        t = round(t + period, 9)
        arm.advance(period)
        results.append((t, controller.tick(t)))
    return t, results


def test_a_chunk_moves_the_arm_by_the_commanded_delta():
    arm, controller = make_controller(timeout=2.0)
    s0 = arm.state()
    controller.submit(chunk(8, dx=0.08, dy=-0.1, dz=-0.1, dyaw=0.5), now=0.0)
    run(arm, controller, 0.0, 0.6)
    s1 = arm.state()
    np.testing.assert_allclose(s1.ee_xyz - s0.ee_xyz, [0.064, -0.08, -0.08], atol=3e-4)
    expected = rpy_to_matrix([0, 0, 0.4]) @ rpy_to_matrix(s0.ee_rpy)
    assert np.linalg.norm(rotation_error(expected, rpy_to_matrix(s1.ee_rpy))) < 2e-3
    assert controller.setpoints_sent == 40 and arm.setpoints_ignored == 0


def test_frame_mapping_is_applied_end_to_end():
    quarter_turn_z = ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    arm, controller = make_controller(timeout=2.0, mapping=FrameMapping(rotation=quarter_turn_z))
    s0 = arm.state()
    controller.submit(chunk(5, dx=0.2), now=0.0)  # sim +x
    run(arm, controller, 0.0, 0.4)
    np.testing.assert_allclose(arm.state().ee_xyz - s0.ee_xyz, [0.0, 0.1, 0.0], atol=3e-4)  # RM75 +y


def test_refused_chunk_does_not_move_the_arm_or_feed_the_watchdog():
    arm, controller = make_controller(limits=SafetyLimits(workspace_max=(0.30, 0.4, 0.55)))
    s0 = arm.state()  # x = 0.285
    with pytest.raises(SafetyViolation):
        controller.submit(chunk(4, dx=0.1), now=0.0)  # 0.295, 0.305: out at step 1
    assert not controller.watchdog.armed
    _, results = run(arm, controller, 0.0, 0.3)
    assert all(r.setpoint is None for _, r in results)
    assert arm.setpoints_received == 0
    np.testing.assert_array_equal(arm.state().joint_positions, s0.joint_positions)


def test_watchdog_stops_motion_within_timeout_plus_one_period():
    timeout, period = 0.3, 0.01
    arm, controller = make_controller(timeout=timeout)
    controller.submit(chunk(40, dy=0.045), now=0.0)  # 2 s of motion, and then silence
    t, results = run(arm, controller, 0.0, 1.0, period)
    fired = [t for t, r in results if r.watchdog_fired]
    assert len(fired) == 1
    assert timeout < fired[0] <= timeout + period + 1e-9
    assert all(r.setpoint is None for t, r in results if t >= fired[0])
    received = arm.setpoints_received
    assert received == round(timeout / period)  # one set-point per tick until the watchdog fired
    # The arm is stopped: nothing moves afterwards.
    q = arm.state().joint_positions
    run(arm, controller, t, t + 0.2)
    np.testing.assert_array_equal(arm.state().joint_positions, q)
    assert arm.setpoints_received == received
    # The next valid chunk starts from the measured pose, and the watchdog re-arms.
    plan = controller.submit(chunk(2, dy=0.1), now=t + 0.2)
    np.testing.assert_allclose(plan.start_xyz, arm.state().ee_xyz)
    assert controller.watchdog.armed


def test_gripper_commands_follow_the_chunk_without_flooding():
    arm, controller = make_controller(timeout=2.0)
    actions = chunk(6, dx=0.05)
    actions[2:, 6] = -1.0
    controller.submit(actions, now=0.0)
    _, results = run(arm, controller, 0.0, 1.5)
    commands = [r.gripper_command for _, r in results if r.gripper_command is not None]
    assert commands == [("open", 0.08), ("close", 0.0)]
    assert arm.state().gripper_opening == pytest.approx(0.0)


def test_gripper_commander_deadband():
    g = GripperCommander(max_opening=0.08, deadband=0.1)
    assert g.command_for(1.0) == ("open", 0.08)
    assert g.command_for(0.95) is None
    assert g.command_for(0.0) == ("position", pytest.approx(0.04))
    assert g.command_for(0.1) is None  # 4 mm change < 8 mm deadband
    assert g.command_for(0.3) == ("position", pytest.approx(0.052))
    assert g.command_for(-1.0) == ("close", 0.0)
    assert g.command_for(-0.95) is None
    g.reset()
    assert g.command_for(-1.0) == ("close", 0.0)


def test_arm_failure_during_a_tick_drops_the_queued_motion():
    arm, controller = make_controller()
    controller.submit(chunk(10, dy=0.1), now=0.0)
    run(arm, controller, 0.0, 0.1)
    arm.simulate_disconnect()
    with pytest.raises(ArmConnectionError):
        controller.tick(0.11)
    assert not controller.executor.active and controller.executor.last_sent is None


class BlockedArm(SimulatedArm):
    """A SimulatedArm that can be blocked: it then ignores set-points without reporting an error
    (held by an obstacle, or a controller that silently drops them)."""

    blocked = False

    def stream_ee_target(self, xyz, rpy) -> None:
        if not self.blocked:
            super().stream_ee_target(xyz, rpy)


def test_a_late_but_following_arm_streams_on_and_a_blocked_one_is_stopped():
    limits = SafetyLimits()
    latency = limits.tracking_latency / 2  # well beyond what a naive 5 mm check of the newest set-point allows
    arm = BlockedArm(realtime=False, latency_s=latency)
    arm.connect()
    planner = TargetPlanner(limits)
    controller = StreamController(arm, ChunkExecutor(planner), Watchdog(5.0))
    step = 0.012  # m per control step
    speed = step / planner.control_period
    controller.submit(chunk(16, dy=step / 0.1), now=0.0)  # 0.24 m/s for 0.8 s
    t, results = run(arm, controller, 0.0, 0.5)
    behind = np.linalg.norm(arm.state().ee_xyz - controller.executor.last_sent.xyz)
    assert behind > limits.max_tracking_error and not any(r.safety_stop for _, r in results)
    arm.blocked = True
    blocked_at = t
    t, results = run(arm, controller, t, 1.0)
    stops = [(when, r.safety_stop) for when, r in results if r.safety_stop]
    assert len(stops) == 1 and stops[0][1].startswith("tracking_error")
    # Stopped once the latency cannot explain the gap any more (within a few ticks of it).
    assert stops[0][0] - blocked_at <= limits.tracking_latency + limits.max_tracking_error / speed + 3 * planner.stream_period
    assert not controller.executor.active and all(r.setpoint is None for when, r in results if when > stops[0][0])
