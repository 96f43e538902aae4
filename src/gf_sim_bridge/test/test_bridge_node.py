"""The sim bridge node: malformed or stale action chunks are rejected, counted, and never move the arm."""

import array
import threading
import time

import numpy as np
import pytest
import rclpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import JointState

from gf_bringup import names
from gf_bringup.rosutil import latched_qos, multi_threaded_executor, reliable_qos
from gf_eval.ros_msgs import trial_to_msg
from gf_eval.trials import make_trial
from gf_interfaces.msg import ActionChunk, EpisodeStatus
from gf_interfaces.srv import ResetTrial
from gf_sim_bridge.bridge_node import SimBridgeNode

pytestmark = pytest.mark.slow
TRIAL = make_trial("Val", 0)


class Harness:
    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.bridge = SimBridgeNode(context=self.context)
        self.node = rclpy.create_node("chunk_tester", context=self.context)
        self.status: EpisodeStatus | None = None
        self.joints: JointState | None = None
        self.cond = threading.Condition()
        self.node.create_subscription(EpisodeStatus, names.EPISODE_STATUS, self._on_status, latched_qos(1))
        self.node.create_subscription(JointState, names.JOINT_STATES, lambda m: setattr(self, "joints", m), reliable_qos())
        self.pub = self.node.create_publisher(ActionChunk, names.ACTION_CHUNK, reliable_qos())
        self.client = self.node.create_client(ResetTrial, "reset_trial")
        self.executor = multi_threaded_executor(2, context=self.context)
        self.executor.add_node(self.bridge)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_status(self, msg):
        with self.cond:
            self.status = msg
            self.cond.notify_all()

    def wait(self, predicate, timeout=20.0):
        with self.cond:
            assert self.cond.wait_for(lambda: self.status is not None and predicate(self.status), timeout), self.status

    def reset(self):
        assert self.client.wait_for_service(timeout_sec=20)
        future = self.client.call_async(ResetTrial.Request(trial=trial_to_msg(TRIAL)))
        deadline = time.time() + 30
        while not future.done() and time.time() < deadline:
            time.sleep(0.01)
        assert future.result().ok
        self.wait(lambda s: s.trial_id == TRIAL.trial_id and s.step == 0)
        while self.pub.get_subscription_count() == 0:
            time.sleep(0.01)

    def send(self, **fields):
        msg = ActionChunk(trial_id=TRIAL.trial_id, step_index=self.status.step, horizon=1, execute_steps=0,
                          action_dim=7, action_space="ee_delta_pose")
        data = fields.pop("data", [0.0] * 7)
        for k, v in fields.items():
            setattr(msg, k, v)
        msg.data = array.array("f", np.asarray(data, dtype=np.float32).tobytes())
        self.pub.publish(msg)

    def close(self):
        self.executor.shutdown()
        self.bridge.close()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    h.reset()
    yield h
    h.close()


def finite(low=-1.0, high=1.0):
    return st.floats(low, high, allow_nan=False, width=32)


MALFORMED = st.one_of(
    st.builds(lambda i, bad: {"data": [0.0] * i + [bad] + [0.0] * (6 - i)}, st.integers(0, 6),
              st.sampled_from([float("nan"), float("inf"), -float("inf")])),
    st.builds(lambda n: {"data": [0.0] * n}, st.integers(0, 20).filter(lambda n: n != 7)),
    st.builds(lambda d: {"action_dim": d, "data": [0.0] * d}, st.integers(1, 12).filter(lambda d: d != 7)),
    st.builds(lambda name: {"action_space": name}, st.text(max_size=12).filter(lambda t: t != "ee_delta_pose")),
    st.builds(lambda i, v: {"data": [0.0] * i + [v] + [0.0] * (6 - i)}, st.integers(0, 6),
              st.one_of(st.floats(1.01, 1e6), st.floats(-1e6, -1.01))),
    st.builds(lambda t: {"trial_id": t}, st.text(max_size=20).filter(lambda t: t != TRIAL.trial_id)),
    st.builds(lambda k: {"step_index": k}, st.integers(1, 1000)),
    st.builds(lambda h: {"horizon": h, "data": [0.0] * 7 * max(h, 0)}, st.sampled_from([0, 257, 1000])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=MALFORMED)
def test_malformed_chunks_are_rejected_and_never_move_the_arm(harness, bad):
    before = harness.status
    positions = np.array(harness.joints.position) if harness.joints else None
    harness.send(**bad)
    harness.wait(lambda s: s.chunks_rejected == before.chunks_rejected + 1)
    assert harness.status.step == before.step == 0
    assert harness.status.chunks_executed == 0
    assert harness.status.last_rejection
    if positions is not None:
        assert np.array_equal(np.array(harness.joints.position), positions)


def test_a_valid_chunk_after_rejections_still_runs(harness):
    before = harness.status
    harness.send(data=[0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0])
    harness.wait(lambda s: s.step == before.step + 1)
    assert harness.status.chunks_executed == before.chunks_executed + 1
    assert harness.status.chunks_rejected == before.chunks_rejected


def test_ctrl_c_while_the_simulator_is_still_loading_stops_the_node_at_once_and_quietly():
    """A graph stopped right after it started: the bridge is still building its scene."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen([str(Path(sys.executable).parent / "gf-sim-bridge")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    time.sleep(1.5)  # rclpy is up, the ManiSkill scene is being built
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "sim bridge ready" not in output, output[-3000:]
