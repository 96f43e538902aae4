"""Trial gating in the driver node (SimulatedArm over DDS): only the running trial's chunks move the arm,
and the end of its episode stops the arm at once."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probe(module_domain, ros_tools):
    driver = ros_tools.NodeProcess("gf-realman-driver", "-p", "dry_run:=true", "-p", "trial_gating:=true",
                                   "-p", "watchdog_timeout_s:=2.0")
    p = ros_tools.Probe()
    p.wait_ready()
    yield p
    p.close()
    assert driver.stop() == 0, driver.output[-3000:]


def moves(steps: int, delta_m) -> np.ndarray:
    a = np.zeros((steps, 7), np.float32)
    a[:, :3] = np.asarray(delta_m) / 0.1
    a[:, 6] = 1.0
    return a


def announce(probe, trial_id: str) -> int:
    stamp = probe.node.get_clock().now()
    msg = probe.Trial(trial_id=trial_id, protocol="Touch", instruction="Touch something.")
    msg.header.stamp = stamp.to_msg()
    probe.pub_trial.publish(msg)
    probe.wait(lambda: probe.status.get("trial_id") == trial_id and probe.status.get("trial_running"), 10.0, "the trial")
    return stamp.nanoseconds


def end(probe, trial_id: str) -> None:
    msg = probe.EpisodeStatus(trial_id=trial_id, done=True, reason="gripper_closed", placed_card=-1)
    msg.header.stamp = probe.node.get_clock().now().to_msg()
    probe.pub_episode.publish(msg)


def test_chunks_move_the_arm_only_while_their_trial_runs(probe):
    start = probe.settle()
    ignored = probe.status["chunks_ignored"]
    probe.send(moves(3, [0.01, 0, 0]), trial_id="Touch-0000-0")  # nothing announced yet
    probe.wait(lambda: probe.status["chunks_ignored"] > ignored, 10.0, "an ignored chunk")
    assert np.linalg.norm(probe.settle() - start) < 5e-4

    announce(probe, "Touch-0000-0")
    probe.send(moves(3, [0.01, 0, 0]), trial_id="Touch-0000-0")
    moved = probe.settle()
    np.testing.assert_allclose(moved - start, [0.03, 0, 0], atol=0.002)
    assert probe.status["trial_chunks_accepted"] == 1

    ignored = probe.status["chunks_ignored"]
    probe.send(moves(3, [0.01, 0, 0]), trial_id="Touch-0009-0")  # another trial's chunk: stale
    probe.wait(lambda: probe.status["chunks_ignored"] > ignored, 10.0, "a stale chunk")
    assert np.linalg.norm(probe.settle() - moved) < 5e-4

    rejected = probe.status["trial_chunks_rejected"]
    probe.send(moves(2, [np.nan, 0, 0]), trial_id="Touch-0000-0")
    probe.wait(lambda: probe.status["trial_chunks_rejected"] == rejected + 1, 10.0, "a counted rejection")


def test_the_end_of_the_episode_stops_the_arm_and_a_new_attempt_runs_again(probe):
    announce(probe, "Touch-0001-0")
    probe.settle()
    t0 = probe.now()
    probe.send(moves(30, [0, -0.005, 0]), trial_id="Touch-0001-0")  # 1.5 s of motion
    time.sleep(0.4)
    end(probe, "Touch-0001-0")
    probe.wait(lambda: not probe.status["trial_running"], 5.0, "the trial to end")
    t_ended = probe.now()  # the driver reported the end (after stopping the arm)
    stopped = probe.settle()
    samples = probe.ee_since(t0)
    moving = [b[0] for a, b in zip(samples, samples[1:]) if np.linalg.norm(b[1] - a[1]) > 1e-4]
    assert moving and moving[-1] <= t_ended + 0.03, "the arm kept moving after the episode ended"
    assert np.linalg.norm(stopped - samples[0][1]) < 0.04  # far less than the 15 cm the chunk asked for

    ignored = probe.status["chunks_ignored"]
    probe.send(moves(3, [0.01, 0, 0]), trial_id="Touch-0001-0")  # the policy is still streaming
    probe.wait(lambda: probe.status["chunks_ignored"] > ignored, 10.0, "an ignored chunk after the end")
    assert np.linalg.norm(probe.settle() - stopped) < 5e-4

    announce(probe, "Touch-0001-0")  # the operator voided it: the same trial, a new announcement
    probe.send(moves(3, [0.0, 0.01, 0]), trial_id="Touch-0001-0")
    np.testing.assert_allclose(probe.settle() - stopped, [0, 0.03, 0], atol=0.002)
