"""Safety and timing a robot lab would trust: controller errors latch until an operator clears
them, frames are checked at connect, the fingertip (not the flange) is kept above the table,
set-points are jerk/acceleration-limited and restart from the measured pose after a stall, state
and gripper traffic never hold up a set-point, an arm that stops following its set-points is
stopped (a late one is not), and ~/home lifts first.

The Realman tests talk to the moving fake controller on 127.0.0.1 only."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from gf_eval.action_space import ChunkRejected
from gf_realman_driver.arm import ArmFrameMismatch
from gf_realman_driver.driver import ArmDriver, DriverSettings
from gf_realman_driver.kinematics import RM75_HOME
from gf_realman_driver.safety import ChunkExecutor, JointChecks, SafetyLimits, SafetyViolation, TargetPlanner, Watchdog
from gf_realman_driver.simulated_arm import SimulatedArm
from gf_realman_driver.smoothing import MotionLimits, SetpointSmoother, peak_acceleration
from gf_realman_driver.streaming import StreamController

COLLISION = 0x100D
LOCALHOST = "127.0.0.1"


def chunk(actions, trial_id: str = "t") -> dict:
    actions = np.asarray(actions, dtype=np.float32)
    return dict(trial_id=trial_id, step_index=0, horizon=actions.shape[0], execute_steps=0, action_dim=7,
                action_space="ee_delta_pose", data=actions.reshape(-1))


def moves(steps: int, delta_m, gripper: float = 1.0) -> np.ndarray:
    a = np.zeros((steps, 7), np.float32)
    a[:, :3] = np.asarray(delta_m) / 0.1
    a[:, 6] = gripper
    return a


def wait_for(predicate, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.01)


def sim_driver(arm=None, **settings) -> ArmDriver:
    arm = arm or SimulatedArm(realtime=True)
    settings.setdefault("motion_limits", MotionLimits())
    driver = ArmDriver(arm, TargetPlanner(SafetyLimits()), watchdog_timeout=2.0,
                       settings=DriverSettings(trial_gating=False, home_joints=RM75_HOME, reconnect_initial=0.02,
                                               reconnect_max=0.08, **settings),
                       on_event=lambda level, text: None)
    driver.start()
    assert driver.wait_connected(5.0)
    return driver


# -- controller errors ------------------------------------------------------------------------------


def test_a_controller_error_stops_and_latches_until_the_operator_clears_it():
    driver = sim_driver()
    arm = driver.arm
    try:
        driver.submit(**chunk(moves(30, [0.0, 0.005, 0.0])))  # 1.5 s of motion
        wait_for(lambda: arm.setpoints_received > 10, what="streaming")
        arm.inject_error(COLLISION)
        wait_for(lambda: driver.status().controller_error, what="the latch")
        status = driver.status()
        assert status.controller_errors == ["0x100D robotic arm collision"] and not status.motion_active
        received = arm.setpoints_received
        time.sleep(0.2)
        assert arm.setpoints_received == received  # nothing streamed after the error
        with pytest.raises(ChunkRejected) as info:
            driver.submit(**chunk(moves(2, [0.0, 0.005, 0.0])))
        assert info.value.reason == "controller_error" and "~/clear_error" in str(info.value)
        assert driver.resume() == (True, "not emergency-stopped") and driver.status().controller_error  # not this latch
        ok, message = driver.clear_controller_error()
        assert ok and message == "controller error cleared", message
        assert not driver.status().controller_error and arm.state().error_codes == ()
        driver.submit(**chunk(moves(2, [0.0, 0.005, 0.0])))  # accepted again
        wait_for(lambda: arm.setpoints_received > received, what="streaming again")
    finally:
        driver.shutdown()


def test_the_latch_holds_while_the_controller_still_reports_the_error():
    class StickyArm(SimulatedArm):
        def clear_controller_error(self) -> None:  # the controller refuses to clear (cause persists)
            pass

    driver = sim_driver(StickyArm(realtime=True))
    try:
        driver.arm.inject_error(0x1007)
        wait_for(lambda: driver.status().controller_error, what="the latch")
        ok, message = driver.clear_controller_error()
        assert not ok and "still reports 0x1007 joint overspeed" in message
        assert driver.status().controller_error
    finally:
        driver.shutdown()


def test_diagnostics_say_error_while_latched():
    from diagnostic_msgs.msg import DiagnosticStatus

    from gf_realman_driver.driver import DriverStatus
    from gf_realman_driver.driver_node import diagnostic_status

    latched = diagnostic_status(DriverStatus(connected=True, controller_error=True,
                                             controller_errors=["0x100D robotic arm collision"]), "RM75 at test")
    assert latched.level == DiagnosticStatus.ERROR and "0x100D robotic arm collision" in latched.message
    assert {kv.key: kv.value for kv in latched.values}["controller_error"] == "True"
    assert diagnostic_status(DriverStatus(connected=True), "RM75 at test").level == DiagnosticStatus.OK
    assert diagnostic_status(DriverStatus(connected=True, emergency_stopped=True), "x").level == DiagnosticStatus.WARN


# -- fingertip and frames ------------------------------------------------------------------------


def test_a_fingertip_target_below_the_table_is_refused():
    flange_down = np.array([math.pi, 0.0, 0.0])
    start = np.array([0.35, 0.0, 0.20])  # flange 20 cm up; a 15 cm gripper puts the fingertip at 5 cm
    down = np.tile([0.0, 0.0, -0.2, 0.0, 0.0, 0.0, 1.0], (2, 1))  # 2 x 2 cm down
    flange_only = TargetPlanner(SafetyLimits(floor_z=0.02))
    flange_only.plan(down, start, flange_down, 0.0)  # the flange stays at 16 cm: fine for the flange
    fingertip = TargetPlanner(SafetyLimits(floor_z=0.02, tcp_offset=(0.0, 0.0, 0.15)))
    with pytest.raises(SafetyViolation) as info:
        fingertip.plan(down, start, flange_down, 0.0)  # the fingertip would reach 1 cm
    assert info.value.reason == "floor" and "fingertip z 0.0" in info.value.detail
    # A tilt alone can swing the fingertip into the table too.
    limits = SafetyLimits(floor_z=0.02, tcp_offset=(0.0, 0.0, 0.15))
    assert limits.fingertip(start, flange_down)[2] == pytest.approx(0.05)
    with pytest.raises(SafetyViolation):
        limits.check_pose([0.35, 0.0, 0.16], flange_down)


@pytest.fixture
def fake():
    pytest.importorskip("Robotic_Arm.rm_robot_interface")
    from gf_realman_driver.fake_controller import FakeRealmanController
    from gf_realman_driver.realman_arm import wait_for_pending_connect

    assert wait_for_pending_connect(10.0)
    controller = FakeRealmanController(moving=True)
    yield controller
    controller.close()


def realman(fake, **kwargs):
    from gf_realman_driver.realman_arm import RealmanArm

    kwargs.setdefault("realtime_push", True)
    return RealmanArm(LOCALHOST, fake.port, connect_timeout=3.0, command_timeout_ms=500, **kwargs)


def test_a_frame_mismatch_refuses_to_stream(fake):
    arm = realman(fake, tool_frame="gf_tip", work_frame="Base")
    with pytest.raises(ArmFrameMismatch, match="active tool frame is 'Arm_Tip', configured 'gf_tip'"):
        arm.connect()
    assert not arm.is_connected
    fake.tool_name, fake.tool_pose = "gf_tip", [0.0, 0.0, 0.15, 0.0, 0.0, 0.0]
    arm = realman(fake, tool_frame="gf_tip", tool_frame_pose=[0.0, 0.0, 0.12, 0.0, 0.0, 0.0])
    with pytest.raises(ArmFrameMismatch, match="tool frame pose"):
        arm.connect()
    # Through the driver: it keeps refusing (and retrying), and never streams.
    fake.work_name = "Table"
    driver = ArmDriver(realman(fake, tool_frame="gf_tip", work_frame="Base"), TargetPlanner(SafetyLimits()),
                       settings=DriverSettings(trial_gating=False, reconnect_initial=0.05, reconnect_max=0.1),
                       on_event=lambda level, text: None)
    driver.start()
    try:
        wait_for(lambda: driver.status().connect_failures >= 2, what="refused connects")
        status = driver.status()
        assert not status.connected and "active work frame is 'Table', configured 'Base'" in status.last_error
        with pytest.raises(ChunkRejected):
            driver.submit(**chunk(moves(2, [0.01, 0.0, 0.0])))
    finally:
        driver.shutdown()
    assert "movep_canfd" not in fake.commands()
    # Matching frames connect.
    fake.work_name = "Base"
    arm = realman(fake, tool_frame="gf_tip", tool_frame_pose=[0.0, 0.0, 0.15, 0.0, 0.0, 0.0], work_frame="Base")
    arm.connect()
    arm.close()


# -- the UDP push and the moving fake controller ---------------------------------------------------


def test_the_documented_push_report_is_parsed():
    from gf_realman_driver.realman_arm import parse_push

    report = {"arm_err": 0, "sys_err": 0x100D, "state": "realtime_arm_joint_state",
              "joint_status": {"joint_position": [1000, -2000, 3000, 4000, 5000, 6000, 7000]},
              "waypoint": {"position": [578568, 127709, 345856], "euler": [2935, -100, 20]}}
    q, pose, errors = parse_push(json.dumps(report).encode())
    np.testing.assert_allclose(np.degrees(q), [1, -2, 3, 4, 5, 6, 7])
    np.testing.assert_allclose(pose, [0.578568, 0.127709, 0.345856, 2.935, -0.1, 0.02])
    assert errors == (0x100D,)
    report["err"] = {"err": ["4103"]}  # gen-4 spelling, as the SDK's structure has it
    assert sorted(parse_push(json.dumps(report).encode())[2]) == [4103, 0x100D]
    assert parse_push(b'{"state": "something_else"}') is None and parse_push(b"not json") is None


def test_state_comes_from_the_push_and_a_dropped_push_falls_back_to_queries(fake):
    arm = realman(fake)
    arm.connect()
    try:
        assert fake.last("set_realtime_push")["ip"] == LOCALHOST
        wait_for(lambda: arm.push_active, what="the first push")
        queries = fake.commands().count("get_current_arm_state")
        arm.stream_ee_target([0.30, 0.02, 0.26], [math.pi, 0.0, math.pi])
        wait_for(lambda: np.linalg.norm(arm.state().ee_xyz - [0.30, 0.02, 0.26]) < 1e-4, what="the arm to move")
        state = arm.state()
        assert "push_stale" not in state.flags
        assert fake.commands().count("get_current_arm_state") == queries  # no query: all from the push
        fake.drop_push = True
        wait_for(lambda: not arm.push_active, what="the push to go stale")
        state = arm.state()
        assert "push_stale" in state.flags and fake.commands().count("get_current_arm_state") > queries
        np.testing.assert_allclose(state.ee_xyz, [0.30, 0.02, 0.26], atol=1e-4)
    finally:
        arm.close()


def test_a_slow_gripper_reply_never_holds_back_the_state_push(fake):
    """Reports that waited for a slow gripper query would be stamped late: an arm that tracks well
    would look as if it lagged (and the tracking check would stop it)."""
    import threading

    arm = realman(fake)
    arm.connect()
    try:
        wait_for(lambda: arm.push_active, what="the first push")
        fake.reply_delay["get_gripper_state"] = 0.3
        time.sleep(arm.gripper_poll_period)  # the next state() polls the gripper
        reader = threading.Thread(target=arm.state)
        reader.start()
        time.sleep(0.05)  # the poll is waiting for its reply now
        before = arm.pushes_received
        time.sleep(0.2)
        assert reader.is_alive()  # still waiting
        assert arm.pushes_received - before >= 10 and arm.push_active  # a report every 5 ms went on arriving
        reader.join(2.0)
    finally:
        arm.close()


def test_a_controller_error_on_the_real_path_latches_and_streaming_cannot_clear_it(fake):
    settings = DriverSettings(trial_gating=False, motion_limits=MotionLimits(), state_period=0.01)
    driver = ArmDriver(realman(fake), TargetPlanner(SafetyLimits()), watchdog_timeout=2.0, settings=settings,
                       on_event=lambda level, text: None)
    driver.start()
    try:
        assert driver.wait_connected(5.0)
        driver.submit(**chunk(moves(30, [0.0, 0.004, 0.0])))
        wait_for(lambda: len(fake.arrivals("movep_canfd")) > 10, what="streaming")
        # A new motion command clears the error on this controller, so a set-point already on its
        # way can clear it before the report reaches the driver (more often on a loaded machine);
        # a collision the arm is still in reports again, as here until the driver has latched it.
        def collide_until_latched() -> bool:
            fake.inject_error(COLLISION)
            time.sleep(0.02)
            return driver.status().controller_error

        wait_for(collide_until_latched, what="the latch")
        sent = len(fake.arrivals("movep_canfd"))
        fake.inject_error(COLLISION)  # (a set-point may have crossed the first report on the wire)
        time.sleep(0.3)
        assert len(fake.arrivals("movep_canfd")) == sent and fake.errors == [COLLISION]
        with pytest.raises(ChunkRejected, match="controller error 0x100D robotic arm collision is latched"):
            driver.submit(**chunk(moves(2, [0.0, 0.004, 0.0])))
        assert "clear_system_err" not in fake.commands()
        ok, message = driver.clear_controller_error()
        assert ok, message
        assert fake.commands().count("clear_system_err") == 1 and fake.errors == [0]
        assert not driver.status().controller_error
    finally:
        driver.shutdown()


def test_a_slow_reply_never_holds_up_a_setpoint(fake):
    fake.reply_delay.update({"get_gripper_state": 0.3, "set_gripper_pick": 0.3, "set_gripper_release": 0.3,
                             "get_current_arm_state": 0.3})
    settings = DriverSettings(trial_gating=False, motion_limits=MotionLimits(), state_period=0.01)
    driver = ArmDriver(realman(fake), TargetPlanner(SafetyLimits()), watchdog_timeout=2.0, settings=settings,
                       on_event=lambda level, text: None)
    driver.start()
    try:
        assert driver.wait_connected(5.0)
        actions = moves(30, [0.0, 0.003, 0.0])
        actions[10:, 6] = -1.0  # close the gripper mid-way: its acknowledgement takes 0.3 s
        start = time.monotonic()
        driver.submit(**chunk(actions))
        wait_for(lambda: fake.last("set_gripper_pick") is not None, what="the gripper command")
        wait_for(lambda: not driver.status().motion_active, timeout=10.0, what="the end of the motion")
        arrivals = np.asarray([t for t in fake.arrivals("movep_canfd") if t >= start])
        slow = [t for t in fake.arrivals("get_gripper_state") + fake.arrivals("set_gripper_pick") if t >= start]
        assert slow
        # Every slow reply kept its caller waiting 0.3 s; the set-point stream went on meanwhile
        # (about 30 set-points per wait at 10 ms; fewer on a loaded machine, never none).
        during = [int(np.count_nonzero((arrivals > t) & (arrivals < t + 0.3))) for t in slow if arrivals[0] < t < arrivals[-1] - 0.3]
        assert during and min(during) >= 5, during
        assert np.max(np.diff(arrivals)) < 0.3, np.max(np.diff(arrivals))
    finally:
        driver.shutdown()


@pytest.mark.parametrize("fault", ["stuck", "lagging"])
def test_a_late_arm_streams_on_while_a_stuck_or_lagging_one_is_stopped(fake, fault):
    """The fake controller follows its set-points 40 ms late and pushes its state every 5 ms: at
    0.24 m/s the measured pose is well over 5 mm behind the newest set-point, yet on the path the
    set-points took, so normal motion never trips the tracking check. An arm that stops (or slows
    to 5 cm/s) without reporting an error is stopped within about the allowed latency."""
    fake.latency = 0.04
    limits = SafetyLimits()
    settings = DriverSettings(trial_gating=False, motion_limits=MotionLimits(), state_period=0.01)
    planner = TargetPlanner(limits)
    events: list[str] = []
    driver = ArmDriver(realman(fake), planner, watchdog_timeout=2.0, settings=settings,
                       on_event=lambda level, text: events.append(text))
    driver.start()
    try:
        assert driver.wait_connected(5.0)
        behind = []  # distance between the measured pose and the newest set-point the fake received
        for direction in (1, -1, 1):  # 0.24 m/s out, back, out again
            driver.submit(**chunk(moves(10, [0.0, 0.012 * direction, 0.0])))
            while driver.status().motion_active:
                newest = fake.last("movep_canfd")
                if newest is not None:
                    behind.append(np.linalg.norm(driver.latest_state.ee_xyz - np.asarray(newest["pose"][:3]) / 1e6))
                time.sleep(0.01)
        status = driver.status()
        assert status.safety_stops == 0 and status.chunks_accepted == 3, status.last_error
        assert max(behind) > 2 * limits.max_tracking_error  # a check against the newest set-point would have tripped
        if fault == "stuck":
            fake.moving = False  # frozen where it is; the state push goes on
        else:
            fake.max_linear_speed = 0.05
        faulted_at = np.asarray(fake.last("movep_canfd")["pose"][:3]) / 1e6  # the arm rests on its last set-point
        before_fault = len(fake.arrivals("movep_canfd"))
        driver.submit(**chunk(moves(10, [0.0, -0.012, 0.0])))
        wait_for(lambda: driver.status().safety_stops == 1, timeout=3.0, what="the tracking stop")
        # The stop's own report, not last_error: a later error (a reply late on a loaded machine)
        # overwrites that.
        stops = [text for text in events if text.startswith("safety stop")]
        assert len(stops) == 1 and stops[0].startswith("safety stop, arm stopped: tracking_error"), stops
        assert not driver.status().motion_active
        # What a stuck arm costs is how far its set-points ran ahead of it before the stop: the
        # latency allowance plus the 5 mm at 0.24 m/s, plus the ramp from rest and a few state and
        # push periods (0.25 s of slack). Counted in set-points and metres rather than seconds: a
        # loaded machine runs fewer ticks in the same time, so its delays cannot fail this alone.
        reaction = limits.tracking_latency + limits.max_tracking_error / 0.24 + 0.25
        after_fault = [np.asarray(m["pose"][:3]) / 1e6 for m in fake.messages("movep_canfd")[before_fault:]]
        assert len(after_fault) <= reaction / planner.stream_period, len(after_fault)
        ahead = max(np.linalg.norm(p - faulted_at) for p in after_fault)
        assert ahead < reaction * 0.24, ahead
        sent = len(fake.arrivals("movep_canfd"))
        time.sleep(0.2)
        assert len(fake.arrivals("movep_canfd")) == sent  # nothing streamed after the stop
    finally:
        driver.shutdown()


# -- smooth set-points --------------------------------------------------------------------------------


class RecordingArm(SimulatedArm):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sent: list[np.ndarray] = []

    def stream_ee_target(self, xyz, rpy) -> None:
        super().stream_ee_target(xyz, rpy)
        self.sent.append(np.asarray(xyz, dtype=np.float64).copy())


def test_a_200_ms_stall_resumes_with_no_step_above_the_acceleration_limit():
    period, limits = 0.01, MotionLimits(max_linear_acceleration=2.0, stall_after=0.03)
    arm = RecordingArm(realtime=False, latency_s=0.005)
    arm.connect()
    planner = TargetPlanner(SafetyLimits(), control_period=0.05, stream_period=period)
    controller = StreamController(arm, ChunkExecutor(planner), Watchdog(5.0), smoother=SetpointSmoother(period, limits))
    controller.submit(np.tile([0.0, 0.15, 0.0, 0.0, 0.0, 0.0, 1.0], (12, 1)), now=0.0)  # 0.3 m/s for 0.6 s
    t = 0.0
    for _ in range(30):  # 0.3 s of streaming
        t = round(t + period, 9)
        arm.advance(period)
        controller.tick(t)
    before = list(arm.sent)
    arm.advance(0.2)  # the control thread stalls for 200 ms; the arm holds its last set-point
    t = round(t + 0.2, 9)
    resume_at = arm.state().ee_xyz.copy()
    reference_jump = np.linalg.norm(controller.executor.next_setpoint(t).xyz - before[-1])
    for _ in range(100):
        t = round(t + period, 9)
        arm.advance(period)
        result = controller.tick(t)
        assert not result.safety_stop
    after = arm.sent[len(before):]
    assert controller.restarts == 2  # the start, and the stall
    assert reference_jump > 0.05  # the plan moved on 6 cm meanwhile: a raw step would be that large
    # From the measured pose at rest, every step (second difference) stays within the limit.
    peak = peak_acceleration([resume_at, resume_at, *after], period)
    assert peak <= limits.max_linear_acceleration * (1 + 1e-9), peak
    assert peak_acceleration(before, period) <= limits.max_linear_acceleration * (1 + 1e-9)
    assert np.linalg.norm(after[0] - resume_at) <= 0.5 * limits.max_linear_acceleration * period**2 + 1e-12


def test_smoothed_motion_arrives_at_the_target_at_rest():
    smoother = SetpointSmoother(0.01, MotionLimits())
    smoother.reset([0.3, 0.0, 0.2], [math.pi, 0.0, 0.0])
    points = [smoother.xyz.copy()] * 2
    for _ in range(200):
        xyz, rpy = smoother.step([0.35, 0.05, 0.2], [math.pi, 0.0, 0.3])
        points.append(xyz)
    assert smoother.at_rest_at([0.35, 0.05, 0.2], [math.pi, 0.0, 0.3])
    assert peak_acceleration(points, 0.01) <= MotionLimits().max_linear_acceleration * (1 + 1e-9)
    with pytest.raises(ValueError):
        MotionLimits(max_linear_jerk=0.0)


# -- home ------------------------------------------------------------------------------------------


def test_home_lifts_straight_up_before_the_joint_move():
    class OrderArm(RecordingArm):
        def move_joints(self, q, speed: float = 0.2, timeout: float = 30.0) -> None:
            self.sent.append("movej")
            super().move_joints(q, speed, timeout)

    driver = sim_driver(OrderArm(realtime=True), home_safe_z=0.25)
    arm = driver.arm
    try:
        driver.submit(**chunk(moves(6, [0.0, 0.0, -0.02])))  # 12 cm down, below the safe height
        wait_for(lambda: not driver.status().motion_active, what="the descent")
        low = arm.state().ee_xyz.copy()
        assert low[2] < 0.2
        arm.sent.clear()
        ok, message = driver.home()
        assert ok, message
        movej = next(i for i, item in enumerate(arm.sent) if isinstance(item, str))
        lift = np.asarray(arm.sent[:movej])
        assert lift.shape[0] > 5 and lift[-1][2] == pytest.approx(0.25, abs=1e-6)
        np.testing.assert_allclose(lift[:, :2], np.tile(low[:2], (len(lift), 1)), atol=1e-4)  # straight up
        assert np.all(np.diff(lift[:, 2]) >= -1e-9)
    finally:
        driver.shutdown()


def test_bench_against_the_moving_fake_controller_reports_acceleration(fake, capsys):
    from gf_realman_driver import bench

    assert bench.main(["--arm", "fake", "--seconds", "1.0", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["setpoints_sent"] > 50 and figures["max_accel"] == 5.0
    assert 0.0 < figures["peak_accel"] and "jitter_p99_ms" in figures


# -- planning beside the streaming ------------------------------------------------------------------


class SlowJointChecks(JointChecks):
    """The RM75's joint checks made slow (a long chunk on a loaded machine), with a hook that runs
    while a chunk is being planned."""

    def __init__(self, delay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay
        self.during = None  # called (no arguments) inside every check_path

    def check_path(self, *args, **kwargs):
        if self.during is not None:
            self.during()
        time.sleep(self.delay)
        return super().check_path(*args, **kwargs)


class TimedArm(SimulatedArm):
    """Records when each set-point arrives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.arrivals: list[float] = []

    def stream_ee_target(self, xyz, rpy) -> None:
        self.arrivals.append(time.monotonic())
        super().stream_ee_target(xyz, rpy)


def slow_driver(checks: SlowJointChecks, *, trial_gating: bool = False) -> ArmDriver:
    driver = ArmDriver(TimedArm(realtime=True), TargetPlanner(SafetyLimits(), joint_checks=checks), watchdog_timeout=2.0,
                       settings=DriverSettings(trial_gating=trial_gating, motion_limits=MotionLimits()),
                       on_event=lambda level, text: None)
    driver.start()
    assert driver.wait_connected(5.0)
    return driver


def test_planning_a_chunk_never_holds_up_a_setpoint():
    """The joint checks take milliseconds (here 80 ms): the tick must not wait for them. Chunks are
    planned back to back beside the streaming; the set-points go on arriving while every one of them
    is planned, and at the streaming period (under a lock shared with the tick, every plan would
    hold back a set-point for at least the planning time)."""
    period, delay = 0.01, 0.08
    checks = SlowJointChecks(delay)
    driver = slow_driver(checks)
    arm = driver.arm
    streamed_meanwhile: list[bool] = []

    def wait_for_setpoints() -> None:  # set-points keep arriving while this plan is made
        target = len(arm.arrivals) + 3
        deadline = time.monotonic() + 1.0
        while len(arm.arrivals) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        streamed_meanwhile.append(len(arm.arrivals) >= target)

    try:
        driver.submit(**chunk(moves(4, [0.0, 0.002, 0.0])))
        wait_for(lambda: len(arm.arrivals) > 5, what="streaming")
        checks.during = wait_for_setpoints
        planning: list[tuple[float, float]] = []
        for i in range(12):  # 100 ms of motion per chunk, planned in >= 80 ms: the queue never runs dry
            started = time.monotonic()
            driver.submit(**chunk(moves(2, [0.0, 0.002 * (-1) ** i, 0.0])))
            planning.append((started, time.monotonic()))
        checks.during = None
        assert streamed_meanwhile == [True] * 12
        arrivals = np.asarray(arm.arrivals)
        gaps = [b - a for a, b in zip(arrivals[:-1], arrivals[1:])
                if any(start < b and a < end for start, end in planning)]  # gaps that overlap a planning
        assert len(gaps) > 50
        # The tick keeps its period beside the planning. (A loaded machine delays a few ticks by
        # itself, so the tail is judged by its 95th percentile; any gap as long as a planning would
        # mean a tick waited for one.)
        assert np.median(gaps) <= 1.5 * period, np.median(gaps)
        assert np.percentile(gaps, 95) <= 2 * period, np.percentile(gaps, 95)
        assert max(gaps) < delay, max(gaps)
        assert driver.status().chunks_accepted == 13
    finally:
        driver.shutdown()


def test_racing_submits_are_planned_one_after_the_other():
    """Two chunks submitted at once (the core does not rely on the node's single callback thread):
    both are accepted, the second planned from where the first ends, as if they came in turn."""
    import threading

    driver = slow_driver(SlowJointChecks(0.05))
    try:
        plans, errors = [], []

        def submit(delta) -> None:
            try:
                plans.append(driver.submit(**chunk(moves(4, delta))))
            except ChunkRejected as exc:
                errors.append(exc)

        threads = [threading.Thread(target=submit, args=(d,)) for d in ([0.003, 0.0, 0.0], [0.0, 0.003, 0.0])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5.0)
        assert errors == [] and len(plans) == 2
        first, second = plans
        assert second.start_time == pytest.approx(first.end_time)
        np.testing.assert_allclose(second.start_xyz, first.final_xyz)
        assert len(driver.controller.executor.planner.history()) == 8
    finally:
        driver.shutdown()


def test_the_planning_gives_way_to_a_due_tick():
    """Python hands its interpreter lock to a waiting thread only every switch interval (5 ms), so
    planning (pure Python) beside the streaming would still delay a tick by that much, once per
    hand-over. The planning therefore pauses before every joint solve while a tick is due, until
    the tick has run."""
    import threading

    pauses = []
    planner = TargetPlanner(SafetyLimits())
    plan = planner.draft(moves(3, [0.0, 0.002, 0.0]), [0.28, 0.0, 0.15], [math.pi, 0.0, 0.0], 0.0,
                         pause=lambda: pauses.append(1))
    assert len(pauses) == 1 + len(plan)  # the start pose, then every set-point

    driver = ArmDriver(SimulatedArm(), planner, settings=DriverSettings(trial_gating=False),
                       on_event=lambda level, text: None)
    period = planner.stream_period
    driver._tick(time.monotonic() - period + 0.02)  # a tick ran; the next one is due in 20 ms
    started = time.monotonic()
    driver._yield_to_tick()
    assert time.monotonic() - started < 0.005  # not due yet: no pause
    driver._tick(time.monotonic() - period + 0.0005)  # the next tick is due in 0.5 ms
    waited = []
    planning = threading.Thread(target=lambda: (driver._yield_to_tick(), waited.append(time.monotonic())))
    planning.start()
    time.sleep(0.004)
    assert planning.is_alive() and not waited  # it waits for the tick, even past its due time
    ticked = time.monotonic()
    driver._tick(ticked)
    planning.join(1.0)
    assert waited and waited[0] >= ticked
    driver._tick(time.monotonic() - 3 * period)  # a loop that stopped ticking holds up nothing
    started = time.monotonic()
    driver._yield_to_tick()
    assert time.monotonic() - started < 0.005


@pytest.mark.parametrize("meanwhile, reason", [
    ("emergency_stop", "emergency_stop"),
    ("emergency_stop_and_resume", "stale_plan"),
    ("trial_announced_again", "stale_trial"),
])
def test_a_plan_overtaken_by_a_stop_or_a_new_trial_is_never_run(meanwhile, reason):
    """Between the planning (outside the lock) and its commit, the arm is e-stopped (and even
    resumed), or the trial is announced again (a new attempt): the plan, made from a start that no
    longer holds, is refused, queues nothing and leaves no steps in the rate history."""
    import threading

    checks = SlowJointChecks()
    driver = slow_driver(checks, trial_gating=meanwhile == "trial_announced_again")
    arm = driver.arm
    planner = driver.controller.executor.planner
    try:
        driver.start_trial("t", stamp_ns=100)
        driver.submit(**chunk(moves(20, [0.0, 0.003, 0.0])))  # 1 s of motion
        wait_for(lambda: len(arm.arrivals) > 5, what="streaming")
        planning, go = threading.Event(), threading.Event()

        def hold() -> None:  # the chunk is being planned: the world moves on meanwhile
            planning.set()
            assert go.wait(5.0)

        checks.during = hold
        refused: list[ChunkRejected] = []

        def submit() -> None:
            try:
                driver.submit(**chunk(moves(10, [0.003, 0.0, 0.0])))
            except ChunkRejected as exc:
                refused.append(exc)

        submitter = threading.Thread(target=submit)
        submitter.start()
        assert planning.wait(5.0)
        history = planner.history()
        if meanwhile.startswith("emergency_stop"):
            assert driver.emergency_stop()[0]
            if meanwhile == "emergency_stop_and_resume":
                assert driver.resume()[0]
        else:
            driver.start_trial("t", stamp_ns=200)  # a new attempt: the old one's motion was stopped
        go.set()
        submitter.join(5.0)
        checks.during = None
        assert [exc.reason for exc in refused] == [reason], refused
        assert planner.history() == history  # the refused plan's steps never entered the rate window
        status = driver.status()
        assert not status.motion_active and not driver.controller.executor.active
        if reason == "stale_trial":
            assert status.chunks_ignored == 1 and status.chunks_rejected == 0
        else:
            assert status.rejections == {reason: 1} and status.chunks_rejected == 1
        assert ("being planned" in str(refused[0])) == (reason != "emergency_stop")
        received, held = len(arm.arrivals), arm.state().ee_xyz.copy()
        time.sleep(0.3)
        assert len(arm.arrivals) == received  # nothing of the stale plan was streamed
        np.testing.assert_allclose(arm.state().ee_xyz, held, atol=1e-4)
        if meanwhile == "emergency_stop":
            driver.resume()
        driver.submit(**chunk(moves(2, [0.003, 0.0, 0.0])))  # the next chunk starts afresh
        wait_for(lambda: len(arm.arrivals) > received, what="streaming again")
    finally:
        driver.shutdown()


def test_the_executor_commits_a_plan_only_from_a_start_that_still_holds():
    period = 0.01
    planner = TargetPlanner(SafetyLimits(), stream_period=period)
    executor = ChunkExecutor(planner)
    here, down = np.array([0.28, 0.0, 0.15]), np.array([math.pi, 0.0, 0.0])
    step = moves(4, [0.0, 0.004, 0.0])

    request = executor.prepare(here, down, now=0.0)
    plan = executor.plan(step, request)
    assert planner.history() == () and not executor.active  # planned, nothing recorded or queued yet
    queued = executor.commit(request, plan, now=0.03)  # committed 30 ms later: starts then, not in the past
    assert queued.times[0] == pytest.approx(0.03 + period) and queued.start_time == pytest.approx(0.03)
    assert [h[0] for h in planner.history()] == pytest.approx(0.03 + 0.05 * np.arange(1, 5))
    np.testing.assert_allclose(queued.xyz, plan.xyz)  # the same motion, later

    # Two plans from the same start: the second is refused once the first is queued.
    first = executor.prepare(here, down, now=0.05)
    second = executor.prepare(here, down, now=0.05)
    plan_first, plan_second = executor.plan(step, first), executor.plan(step, second)
    executor.commit(first, plan_first)
    with pytest.raises(SafetyViolation) as info:
        executor.commit(second, plan_second)
    assert info.value.reason == "stale_plan" and "another chunk was queued" in info.value.detail

    # A cancel (stop, e-stop, watchdog, reconnect) between planning and commit: refused, nothing left behind.
    request = executor.prepare(here, down, now=0.1)
    plan = executor.plan(step, request)
    history = planner.history()
    executor.cancel()
    with pytest.raises(SafetyViolation) as info:
        executor.commit(request, plan, now=0.1)
    assert info.value.reason == "stale_plan" and "dropped" in info.value.detail
    assert not executor.active and planner.history() == history

    # The rates are checked again at the commit against the history as it is by then.
    fresh = TargetPlanner(SafetyLimits(max_translation_per_second=0.30), stream_period=period)
    there = here + [0.0, -0.1, 0.0]  # 0.2 m in 0.5 s, there and back: fine once, not twice within a second
    snapshot = fresh.history()
    a = fresh.draft(moves(10, [0.0, 0.02, 0.0]), there, down, 0.0, history=snapshot)
    b = fresh.draft(moves(10, [0.0, -0.02, 0.0]), a.final_xyz, down, 0.5, history=snapshot)
    fresh.commit(a)
    with pytest.raises(SafetyViolation) as info:
        fresh.commit(b)
    assert info.value.reason == "translation_rate"
    assert len(fresh.history()) == 10


def test_peak_acceleration_measures_each_run_between_restarts_on_its_own():
    period = 0.01
    moving = [[0.001 * i, 0.0, 0.0] for i in range(10)]  # 0.1 m/s, no acceleration
    held = [[0.009, 0.0, 0.0]] * 5  # a stall: the arm holds the last set-point, then restarts at rest there
    assert peak_acceleration(moving, period) == pytest.approx(0.0, abs=1e-9)
    # Read as one sequence, the stop looks like 0.001 m / period^2 = 10 m/s^2 ...
    assert peak_acceleration(moving + held, period) == pytest.approx(10.0)
    # ... but nothing was sent while it stalled: the runs on either side are each at constant speed.
    assert peak_acceleration(moving + held, period, restarts=[10]) == pytest.approx(0.0, abs=1e-9)
    # A real jump inside a run still counts.
    jump = moving + [[0.02, 0.0, 0.0]]
    assert peak_acceleration(jump + held, period, restarts=[11]) == pytest.approx(0.01 / period**2, rel=1e-6)
