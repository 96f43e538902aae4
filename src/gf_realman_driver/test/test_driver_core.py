"""ArmDriver without ROS: streaming thread, trial gating, e-stop, home, reconnection with backoff,
and that no failure (not even a bug) leaves the control thread dead or the arm moving."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gf_eval.action_space import ChunkRejected
from gf_realman_driver.arm import ArmCommandRefused, ArmConnectionError
from gf_realman_driver.driver import ArmDriver, Backoff, DriverSettings
from gf_realman_driver.kinematics import RM75_HOME
from gf_realman_driver.safety import SafetyLimits, TargetPlanner
from gf_realman_driver.simulated_arm import SimulatedArm


class FlakyArm(SimulatedArm):
    """A SimulatedArm whose first ``failures`` connects fail and whose set-points can be made to fail."""

    def __init__(self, failures: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.failures = failures
        self.connect_calls = 0
        self.stream_error: Exception | None = None

    def connect(self) -> None:
        self.connect_calls += 1
        if self.connect_calls <= self.failures:
            raise ArmConnectionError(f"simulated connect failure {self.connect_calls}")
        super().connect()

    def stream_ee_target(self, xyz, rpy) -> None:
        if self.stream_error is not None:
            raise self.stream_error
        super().stream_ee_target(xyz, rpy)


def make_driver(arm=None, gating: bool = False, watchdog: float = 1.0, **settings):
    arm = arm or SimulatedArm(realtime=True)
    events: list[tuple[str, str]] = []
    driver = ArmDriver(
        arm, TargetPlanner(SafetyLimits()), watchdog_timeout=watchdog,
        settings=DriverSettings(trial_gating=gating, home_joints=RM75_HOME, reconnect_initial=0.02, reconnect_max=0.08,
                                **settings),
        on_event=lambda level, text: events.append((level, text)),
    )
    driver.events = events
    return driver


@pytest.fixture
def driver():
    d = make_driver()
    d.start()
    assert d.wait_connected(5.0)
    yield d
    d.shutdown()


def chunk(actions, trial_id: str = "t", **fields) -> dict:
    actions = np.asarray(actions, dtype=np.float32)
    out = dict(trial_id=trial_id, step_index=0, horizon=actions.shape[0], execute_steps=0, action_dim=7,
               action_space="ee_delta_pose", data=actions.reshape(-1))
    out.update(fields)
    return out


def moves(steps: int, delta_m) -> np.ndarray:
    a = np.zeros((steps, 7), np.float32)
    a[:, :3] = np.asarray(delta_m) / 0.1
    a[:, 6] = 1.0
    return a


def wait_idle(driver, timeout: float = 5.0) -> np.ndarray:
    """Wait until nothing is queued and the simulated arm has come to rest; return the EE position."""
    deadline = time.monotonic() + timeout
    while driver.status().motion_active and time.monotonic() < deadline:
        time.sleep(0.01)
    last = driver.arm.state().ee_xyz
    while time.monotonic() < deadline:
        time.sleep(0.05)  # longer than the simulated controller's latency
        now = driver.arm.state().ee_xyz
        if np.linalg.norm(now - last) < 1e-7:
            return now
        last = now
    raise AssertionError("the arm did not come to rest")


def test_backoff_doubles_up_to_the_maximum_and_resets():
    b = Backoff(0.5, 4.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_a_chunk_is_streamed_and_moves_the_ee_by_its_delta(driver):
    start = driver.arm.state().ee_xyz
    plan = driver.submit(**chunk(moves(4, [0.01, 0.005, -0.01])))
    assert len(plan) == 4 * 5  # 50 ms steps streamed every 10 ms
    end = wait_idle(driver)
    np.testing.assert_allclose(end - start, [0.04, 0.02, -0.04], atol=1e-3)
    s = driver.status()
    # A late tick skips to the newest due set-point, so a busy machine may send a few less.
    assert s.chunks_accepted == 1 and 15 <= s.setpoints_sent <= 20 and s.connected


def test_refusals_queue_nothing_and_are_counted_by_reason(driver):
    start = driver.arm.state().ee_xyz
    bad = moves(2, [0.0, 0.0, 0.0])
    bad[0, 3] = np.nan
    for fields, reason in (
        (chunk(bad), "not_finite"),
        (chunk(moves(12, [0.0, 0.0, -0.025])), "floor"),
        (chunk(moves(1, [0.0, 0.0, 0.0]), horizon=3), "bad_length"),
    ):
        with pytest.raises(ChunkRejected) as info:
            driver.submit(**fields)
        assert info.value.reason == reason
    s = driver.status()
    assert s.chunks_rejected == 3 and s.rejections == {"not_finite": 1, "floor": 1, "bad_length": 1}
    assert not s.motion_active
    np.testing.assert_allclose(wait_idle(driver), start, atol=1e-6)


def test_trial_gating_follows_announcements_and_episode_ends():
    d = make_driver(gating=True)
    d.start()
    try:
        assert d.wait_connected(5.0)
        with pytest.raises(ChunkRejected, match="no trial"):
            d.submit(**chunk(moves(1, [0.01, 0, 0]), "A"))
        d.start_trial("A", stamp_ns=100)
        with pytest.raises(ChunkRejected) as info:
            d.submit(**chunk(moves(1, [0.01, 0, 0]), "B"))
        assert info.value.reason == "stale_trial"
        d.submit(**chunk(moves(20, [0, 0.005, 0]), "A"))
        d.end_trial("A", stamp_ns=50)  # an older "done" (a previous attempt's) changes nothing
        assert d.status().trial_running and d.status().motion_active
        d.end_trial("A", stamp_ns=200)
        s = d.status()
        assert not s.trial_running and not s.motion_active  # the arm was stopped at once
        with pytest.raises(ChunkRejected) as info:
            d.submit(**chunk(moves(1, [0.01, 0, 0]), "A"))
        assert info.value.reason == "episode_done"
        d.start_trial("A", stamp_ns=100)  # the same announcement again (latched copy): still over
        assert not d.status().trial_running
        d.start_trial("A", stamp_ns=300)  # a new attempt of the same trial
        assert d.status().trial_running
        # A late joiner may see the "done" before the announcement it belongs to.
        d.end_trial("C", stamp_ns=500)
        d.start_trial("C", stamp_ns=400)
        assert not d.status().trial_running
        s = d.status()
        assert s.chunks_ignored == 3 and s.chunks_rejected == 0  # not the policy's fault
    finally:
        d.shutdown()


def test_emergency_stop_latches_until_resume(driver):
    driver.submit(**chunk(moves(30, [0, 0.004, 0])))
    time.sleep(0.3)
    ok, _ = driver.emergency_stop()
    assert ok and not driver.status().motion_active
    held = wait_idle(driver)
    with pytest.raises(ChunkRejected, match="emergency stop"):
        driver.submit(**chunk(moves(2, [0.01, 0, 0])))
    assert driver.home() == (False, "emergency stop is latched; resume first")
    time.sleep(0.2)
    np.testing.assert_allclose(driver.arm.state().ee_xyz, held, atol=1e-6)
    assert driver.resume()[0]
    driver.submit(**chunk(moves(2, [0.0, 0.01, 0])))
    np.testing.assert_allclose(wait_idle(driver) - held, [0, 0.02, 0], atol=1e-3)


def test_home_goes_to_the_home_posture_and_refuses_chunks_meanwhile(driver):
    driver.submit(**chunk(moves(4, [0.01, 0.01, 0])))
    wait_idle(driver)
    ok, message = driver.home()
    assert ok, message
    np.testing.assert_allclose(driver.arm.state().joint_positions, RM75_HOME, atol=1e-6)


def test_a_shutdown_during_homing_stops_it_and_says_so_without_calling_it_a_failure(driver):
    import threading

    driver.submit(**chunk(moves(4, [0.01, 0.01, 0])))
    wait_idle(driver)
    result = []
    homing = threading.Thread(target=lambda: result.append(driver.home()))
    homing.start()
    deadline = time.monotonic() + 5.0
    while not driver.status().homing and time.monotonic() < deadline:
        time.sleep(0.005)
    assert driver.status().homing
    driver.shutdown()  # Ctrl-C of the graph while an operator's ~/home runs
    homing.join(10.0)
    assert result == [(False, "homing stopped: the driver is shutting down")]


def test_connect_failures_back_off_then_connect_and_a_dropped_link_reconnects():
    arm = FlakyArm(failures=3, realtime=True)
    d = make_driver(arm)
    d.start()
    try:
        assert d.wait_connected(5.0)
        s = d.status()
        assert s.connect_failures == 3 and s.connects == 1
        delays = [float(text.rsplit("retrying in ", 1)[1].split(" s")[0]) for lvl, text in d.events if "retrying" in text]
        assert delays == [0.02, 0.04, 0.08]
        d.submit(**chunk(moves(40, [0, 0.002, 0])))
        time.sleep(0.2)
        arm.simulate_disconnect()  # the cable is pulled mid-motion
        deadline = time.monotonic() + 5
        while d.status().connects < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        s = d.status()
        assert s.connects == 2 and s.connected and not s.motion_active  # old motion is not resumed
        assert any("lost the arm" in text for _, text in d.events)
    finally:
        d.shutdown()


def test_a_refused_setpoint_stops_motion_but_keeps_the_link(driver):
    driver.arm.__class__ = FlakyArm  # switch behaviour in place (same state)
    driver.arm.failures, driver.arm.connect_calls = 0, 1
    driver.arm.stream_error = ArmCommandRefused("controller refused movep_canfd (code 1): test")
    driver.submit(**chunk(moves(10, [0.003, 0, 0])))
    time.sleep(0.2)
    s = driver.status()
    assert s.connected and not s.motion_active and "refused movep_canfd" in s.last_error
    driver.arm.stream_error = None
    driver.submit(**chunk(moves(2, [0.003, 0, 0])))  # and it works again
    wait_idle(driver)
    assert driver.status().chunks_accepted == 2


def test_a_bug_in_a_tick_stops_the_arm_without_killing_the_control_thread(driver):
    driver.arm.__class__ = FlakyArm
    driver.arm.failures, driver.arm.connect_calls = 0, 1
    driver.arm.stream_error = ZeroDivisionError("a bug")
    driver.submit(**chunk(moves(10, [0.003, 0, 0])))
    time.sleep(0.2)
    assert any("internal error in the control loop (ZeroDivisionError" in text for _, text in driver.events)
    assert not driver.status().motion_active
    driver.arm.stream_error = None
    start = driver.arm.state().ee_xyz
    driver.submit(**chunk(moves(2, [0.0, 0.01, 0])))
    np.testing.assert_allclose(wait_idle(driver) - start, [0, 0.02, 0], atol=1e-3)


def test_shutdown_stops_the_arm_and_closes_the_link():
    d = make_driver()
    d.start()
    assert d.wait_connected(5.0)
    d.submit(**chunk(moves(40, [0, 0.003, 0])))
    time.sleep(0.2)
    d.shutdown()
    assert not d.arm.is_connected and not d.connected
    with pytest.raises(ChunkRejected, match="not connected"):
        d.submit(**chunk(moves(1, [0.0, 0, 0])))


def test_an_emergency_stop_interrupts_homing(driver):
    import threading

    driver.submit(**chunk(moves(10, [0.005, 0.01, 0])))  # well away from home (and inside the workspace)
    wait_idle(driver)
    result = {}
    homing = threading.Thread(target=lambda: result.update(home=driver.home()))
    homing.start()
    time.sleep(0.3)
    assert driver.status().homing
    assert driver.emergency_stop()[0]
    homing.join(5.0)
    ok, message = result["home"]
    assert not ok and "emergency stop" in message
    assert not driver.status().homing and driver.status().emergency_stopped
    assert not np.allclose(driver.arm.state().joint_positions, RM75_HOME, atol=1e-3)  # stopped on the way
