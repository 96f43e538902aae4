"""The driver node with the SimulatedArm (dry_run) through DDS: motion, refusals, watchdog, e-stop, home.

One driver process serves the module (trial gating off, watchdog 0.5 s, a workspace box whose
+y wall is 10 cm from the start); a probe node publishes chunks, calls the services and watches
/gf/ee_state and the driver's status.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WATCHDOG = 0.5
CONTROL_PERIOD = 0.05
PUBLISH_PERIOD = 0.02
HOME_XYZ = np.array([0.2849, 0.0, 0.2652])


@pytest.fixture(scope="module")
def driver(module_domain, ros_tools):
    node = ros_tools.NodeProcess(
        "gf-realman-driver", "-p", "dry_run:=true", "-p", "trial_gating:=false", "-p", f"watchdog_timeout_s:={WATCHDOG}",
        "-p", "workspace_max:=[0.36, 0.10, 0.28]", "-p", f"publish_rate_hz:={1 / PUBLISH_PERIOD}",
    )
    yield node
    assert node.stop() == 0, node.output[-3000:]
    assert "arm stopped and link closed" in node.output


@pytest.fixture(scope="module")
def probe(driver, ros_tools):
    p = ros_tools.Probe()
    p.wait_ready()
    yield p
    p.close()


def moves(steps: int, delta_m, gripper: float = 1.0) -> np.ndarray:
    """``steps`` identical actions translating by ``delta_m`` (m) each."""
    a = np.zeros((steps, 7), np.float32)
    a[:, :3] = np.asarray(delta_m) / 0.1
    a[:, 6] = gripper
    return a


def still_since(probe, t0: float, duration: float) -> float:
    """Largest EE displacement (m) within ``duration`` s from ``t0`` (ROS time; waits for it)."""
    time.sleep(max(0.0, t0 + duration - probe.now()))
    window = probe.ee_since(t0)
    assert len(window) >= 3, "too few EE states"
    return max(float(np.linalg.norm(e[1] - window[0][1])) for e in window)


def motion_times(probe, t0: float, until: float, tol: float = 1e-4) -> list[float]:
    """Stamps (s after t0) of the EE states that differ from their predecessor by more than ``tol``."""
    samples = probe.ee_since(t0)
    moving = [b[0] - t0 for a, b in zip(samples, samples[1:]) if np.linalg.norm(b[1] - a[1]) > tol and b[0] <= until]
    assert moving, f"the arm never moved; driver status {probe.status}"
    return moving


def last_motion(probe, t0: float, until: float, tol: float = 1e-4) -> float:
    """Time (s after t0) of the last EE state that differs from its predecessor by more than ``tol``."""
    return motion_times(probe, t0, until, tol)[-1]


def wait_rejected(probe, before: int, reason: str) -> None:
    probe.wait(lambda: probe.status.get("chunks_rejected", 0) > before, 10.0, f"a {reason} rejection")
    assert probe.status["last_rejection"].startswith(reason), probe.status


def test_a_chunk_moves_the_ee_by_the_commanded_delta(probe):
    start = probe.settle()
    delta = np.array([0.01, -0.01, 0.002])
    t0 = probe.now()
    probe.send(moves(5, delta))
    end = probe.settle()
    np.testing.assert_allclose(end - start, 5 * delta, atol=0.002)
    # 5 control steps of 50 ms streamed every 10 ms: the motion lasts about 0.24 s (driver clock).
    moving = motion_times(probe, t0, probe.now())
    assert 0.18 <= moving[-1] - moving[0] <= 0.5
    assert probe.status["chunks_accepted"] >= 1 and probe.status["connected"]


def test_a_target_outside_the_workspace_is_refused_and_the_arm_does_not_move(probe):
    start = probe.settle()
    wall = 0.10 - start[1]
    before = probe.status["chunks_rejected"]
    t0 = probe.now()
    probe.send(moves(int(wall / 0.025) + 2, [0.0, 0.025, 0.0]))  # the last steps cross y = 0.10
    wait_rejected(probe, before, "workspace")
    assert "outside the workspace" in probe.status["last_rejection"]
    assert still_since(probe, t0, 0.6) < 5e-4
    # ... and the table floor (z = 0.02 m): a chunk whose last steps go below it is refused whole.
    before = probe.status["chunks_rejected"]
    t0 = probe.now()
    probe.send(moves(int((start[2] - 0.02) / 0.025) + 2, [0.0, 0.0, -0.025]))
    wait_rejected(probe, before, "floor")
    assert still_since(probe, t0, 0.6) < 5e-4


@pytest.mark.parametrize("case", ["nan", "inf", "oversized_value", "too_long", "bad_length", "bad_dim", "unknown_space", "too_fast"])
def test_malformed_and_oversized_chunks_are_rejected_and_never_move_the_arm(probe, case):
    probe.settle()
    before = probe.status["chunks_rejected"]
    good = moves(3, [0.01, 0.0, 0.0])
    reason = {
        "nan": "not_finite", "inf": "not_finite", "oversized_value": "out_of_range", "too_long": "bad_horizon",
        "bad_length": "bad_length", "bad_dim": "bad_action_dim", "unknown_space": "unknown_action_space",
        "too_fast": "step_translation",
    }[case]
    t0 = probe.now()
    if case in ("nan", "inf"):
        bad = good.copy()
        bad[1, 0] = np.nan if case == "nan" else np.inf
        probe.send(bad)
    elif case == "oversized_value":
        bad = good.copy()
        bad[2, 1] = 1.5
        probe.send(bad)
    elif case == "too_long":
        probe.send(np.zeros((300, 7), np.float32))
    elif case == "bad_length":
        probe.send(good, data=good.reshape(-1)[:-2])
    elif case == "bad_dim":
        probe.send(good, action_dim=6)
    elif case == "unknown_space":
        probe.send(good, action_space="joint_positions")
    else:
        probe.send(moves(2, [0.05, 0.0, 0.0]))  # 5 cm per 50 ms step: inside the space, beyond the step limit
    wait_rejected(probe, before, reason)
    assert probe.status["rejections"][reason] >= 1
    assert still_since(probe, t0, 0.5) < 5e-4


def test_the_watchdog_stops_motion_within_its_timeout_plus_one_control_period(probe):
    probe.settle()
    fired = probe.status["watchdog_fired"]
    t0 = probe.now()
    probe.send(moves(20, [-0.005, 0.0, 0.0]))  # 1 s of motion at 0.1 m/s; no chunk follows
    probe.settle(timeout=5.0)
    moving = motion_times(probe, t0, t0 + 3.0)
    # On the driver's clock (state stamps), from the start of the motion (~15 ms after the chunk
    # arrived: first set-point plus the arm's latency): stopped by the watchdog, not by the end of
    # the chunk at 1 s, within the timeout plus one control period (plus one state period of
    # sampling).
    duration = moving[-1] - moving[0]
    assert WATCHDOG - 0.1 <= duration <= WATCHDOG + CONTROL_PERIOD + PUBLISH_PERIOD, duration
    travelled = np.linalg.norm(probe.ee_since(t0)[-1][1] - probe.ee_since(t0)[0][1])
    assert 0.035 <= travelled <= 0.06
    probe.wait(lambda: probe.status["watchdog_fired"] > fired, 5.0, "the watchdog count")


def test_emergency_stop_stops_and_blocks_motion_until_resume(probe):
    probe.settle()
    t0 = probe.now()
    probe.send(moves(30, [0.0, 0.004, 0.0]))
    time.sleep(0.3)
    assert probe.call("emergency_stop")
    answered = probe.now()
    time.sleep(0.3)
    # The service answers after the arm was stopped: no motion measured after the answer (states
    # are stamped when read, every 20 ms, so the first read after the stop may follow it by that).
    assert last_motion(probe, t0, answered + 1.0) <= answered - t0 + PUBLISH_PERIOD + 0.01, "the arm kept moving after the e-stop"
    probe.wait(lambda: probe.status.get("emergency_stopped"), 5.0, "the e-stop flag")
    # Latched: new chunks are refused and the arm stays put.
    before = probe.status["chunks_rejected"]
    t1 = probe.now()
    probe.send(moves(4, [0.0, -0.01, 0.0]))
    wait_rejected(probe, before, "emergency_stop")
    assert still_since(probe, t1, 0.5) < 5e-4
    assert not probe.call("home"), "home must be refused while e-stopped"
    # Released: motion works again.
    assert probe.call("resume")
    probe.wait(lambda: not probe.status.get("emergency_stopped"), 5.0, "the e-stop flag to clear")
    start = probe.settle()
    probe.send(moves(4, [0.0, -0.01, 0.0]))
    end = probe.settle()
    np.testing.assert_allclose(end - start, [0.0, -0.04, 0.0], atol=0.002)


def test_home_moves_to_the_home_posture(probe):
    probe.send(moves(3, [0.0, 0.0, -0.02]))  # within reach from where the earlier tests left the arm
    probe.settle()
    assert probe.call("home", timeout=60.0)
    np.testing.assert_allclose(probe.settle(), HOME_XYZ, atol=1e-3)
    assert probe.ee[-1][2] == pytest.approx(1.0, abs=0.01)  # gripper open
