"""The policy node's decision rules in stream mode (real robot): pairing by time, pacing, trials."""

import time

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from gf_bringup.images import image_to_msg
from gf_bringup.rosutil import ns_to_stamp
from gf_eval.ros_msgs import trial_to_msg
from gf_eval.trials import make_trial
from gf_interfaces.msg import EeState, EpisodeStatus
from gf_policy.backend import ActionPlan
from gf_policy.policy_node import PolicyNode


@pytest.fixture
def node():
    context = rclpy.Context()
    rclpy.init(context=context)
    n = PolicyNode(context=context, parameter_overrides=[
        Parameter("backend", value="chance"), Parameter("trigger", value="stream"), Parameter("stream_sync_s", value=0.05),
    ])
    yield n
    n.close()
    n.destroy_node()
    rclpy.shutdown(context=context)


def ee_at(ns: int) -> EeState:
    msg = EeState()
    msg.header.stamp = ns_to_stamp(ns)
    msg.proprio = [0.1] * 7
    return msg


def image_at(ns: int) -> Image:
    return image_to_msg(np.zeros((8, 8, 3), np.uint8), ns_to_stamp(ns))


def test_stream_mode_pairs_the_newest_image_with_the_nearest_ee_state(node):
    node.needs_image, node.needs_privileged = True, False  # as a camera policy on a real robot
    node._on_trial(trial_to_msg(make_trial("Val", 0), ns_to_stamp(1)))
    store_ee, store_image = node._store(node._ee), node._store(node._images)
    for ns in (1_000_000_000, 1_100_000_000, 1_200_000_000):
        store_ee(ee_at(ns))
    store_image(image_at(1_130_000_000))  # 30 ms after one EE state, 70 ms before the next
    obs = node._latest_observation()
    assert obs is not None and obs.image is not None and obs.stamp_ns == 1_130_000_000
    store_image(image_at(1_400_000_000))  # 200 ms after the newest EE state: no decision yet
    assert node._latest_observation() is None
    store_ee(ee_at(1_390_000_000))
    assert node._latest_observation().stamp_ns == 1_400_000_000


def test_stream_mode_waits_until_the_executed_part_of_a_chunk_has_run(node):
    node.needs_privileged = False
    node._on_trial(trial_to_msg(make_trial("Val", 0), ns_to_stamp(1)))
    node._store(node._ee)(ee_at(5))
    obs = node._build(node._ee[5], None, None, 0, 5)
    node.backend.act = lambda o: ActionPlan(np.zeros((4, 7), np.float32), execute_steps=3)
    before = time.monotonic()
    node._infer_and_publish(obs)
    assert node._next_stream_decision == pytest.approx(before + 3 / 20.0, abs=0.05)


def test_finished_and_reannounced_trials(node):
    trial = make_trial("Val", 0)
    node._on_trial(trial_to_msg(trial, ns_to_stamp(1)))
    resets = []
    node.backend.reset = resets.append
    node._on_status(EpisodeStatus(trial_id=trial.trial_id, done=True))
    assert node._trial_done
    node._on_trial(trial_to_msg(trial, ns_to_stamp(1)))  # the latched announcement again: nothing new
    assert resets == [] and node._trial_done
    node._on_trial(trial_to_msg(trial, ns_to_stamp(2)))  # announced anew (a re-run): reset, act again
    assert resets == [trial] and not node._trial_done
