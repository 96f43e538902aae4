"""The policy node's decision rules in stream mode (real robot): pairing by time, pacing, trials."""

import time

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from gf_bringup import names
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


def test_a_chunk_computed_while_its_trial_ended_is_not_published(node):
    """A done status that arrives during inference voids the chunk: nothing goes out for a finished
    trial, so the count logged at the end of the trial is every chunk the trial got."""
    trial = make_trial("Val", 0)
    published = []
    node.pub_chunk = type("Recorder", (), {"publish": staticmethod(published.append)})()
    node.needs_privileged = False
    node._on_trial(trial_to_msg(trial, ns_to_stamp(1)))
    node._store(node._ee)(ee_at(5))
    obs = node._build(node._ee[5], None, None, 0, 5)
    node.backend.act = lambda o: ActionPlan(np.zeros((4, 7), np.float32), execute_steps=3)
    node._infer_and_publish(obs)
    assert len(published) == 1

    def act_while_the_trial_ends(o):
        node._on_status(EpisodeStatus(trial_id=trial.trial_id, done=True))
        return ActionPlan(np.zeros((4, 7), np.float32), execute_steps=3)

    node.backend.act = act_while_the_trial_ends
    node._infer_and_publish(obs)
    assert len(published) == 1 and node._trial_done


def test_lock_step_answers_a_step_once_and_again_only_when_it_is_still_asked_for_later():
    """Messages in, chunks out: a status repeated at once (a rejection) gets no second chunk; the
    same step asked again after ``answer_again_s`` (the chunk was lost) is answered again."""
    from geometry_msgs.msg import Point

    from gf_bringup.rosutil import latched_qos, multi_threaded_executor, reliable_qos, status_qos
    from gf_interfaces.msg import ActionChunk, SimState, Trial

    context = rclpy.Context()
    rclpy.init(context=context)
    policy = PolicyNode(context=context, parameter_overrides=[
        Parameter("backend", value="chance"), Parameter("trigger", value="status"), Parameter("answer_again_s", value=2.0)])
    probe = rclpy.create_node("probe", context=context)
    chunks = []
    probe.create_subscription(ActionChunk, names.ACTION_CHUNK, chunks.append, reliable_qos())
    pub_trial = probe.create_publisher(Trial, names.TRIAL, latched_qos(1))
    pub_ee = probe.create_publisher(EeState, names.EE_STATE, reliable_qos())
    pub_status = probe.create_publisher(EpisodeStatus, names.EPISODE_STATUS, status_qos())
    pub_truth = probe.create_publisher(SimState, names.SIM_STATE, reliable_qos())  # the chance expert's input
    executor = multi_threaded_executor(2, context=context)
    for n in (policy, probe):
        executor.add_node(n)
    import threading

    threading.Thread(target=executor.spin, daemon=True).start()
    trial = make_trial("Val", 0)

    def wait_for(count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(chunks) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def ask(step: int) -> None:
        status = EpisodeStatus(trial_id=trial.trial_id, step=step)
        status.header.stamp = ns_to_stamp(1_000 + step)
        pub_status.publish(status)

    try:
        while policy.count_subscribers(names.EPISODE_STATUS) == 0 or probe.count_subscribers(names.ACTION_CHUNK) == 0:
            time.sleep(0.01)
        pub_trial.publish(trial_to_msg(trial, ns_to_stamp(1)))
        time.sleep(0.2)
        pub_ee.publish(ee_at(1_000))
        truth = SimState(trial_id=trial.trial_id, card_positions=[Point(x=0.2, y=y, z=0.0) for y in (0.9, 0.7, 0.5)])
        truth.header.stamp, truth.tcp_pose.orientation.w = ns_to_stamp(1_000), 1.0
        pub_truth.publish(truth)
        ask(0)
        wait_for(1)
        ask(0)  # the bridge rejected something and published the same step again
        time.sleep(0.5)
        assert [c.step_index for c in chunks] == [0]
        time.sleep(1.6)
        ask(0)  # re-announced: the first chunk never arrived
        wait_for(2)
        assert [c.step_index for c in chunks] == [0, 0] and all(c.trial_id == trial.trial_id for c in chunks)
    finally:
        executor.shutdown()
        policy.close()
        policy.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=context)
