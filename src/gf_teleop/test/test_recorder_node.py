"""The recorder node over DDS: bags read back identical with rosbags and with mcap; SIGKILL safety;
the control service."""

from __future__ import annotations

import array
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from gf_teleop import episodes as ep

pytestmark = pytest.mark.slow


def _stamp(ns):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


class GraphImitation:
    """Publishes what the sim bridge, policy and eval node publish (with their QoS), and a raw
    'witness' subscription per topic that keeps the bytes DDS delivered."""

    def __init__(self, trial):
        import rclpy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image, JointState

        from gf_bringup.rosutil import latched_qos, reliable_qos, sensor_qos
        from gf_interfaces.msg import ActionChunk, EeState, EpisodeStatus, Trial, TrialResult
        from gf_teleop.recorder_node import subscription_qos

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("graph_imitation")
        self.trial = trial
        types = {ep.CLOCK: Clock, ep.IMAGE: Image, ep.CAMERA_INFO: CameraInfo, ep.JOINT_STATES: JointState,
                 ep.EE_STATE: EeState, ep.EPISODE_STATUS: EpisodeStatus, ep.ACTION_CHUNK: ActionChunk, ep.TRIAL: Trial,
                 ep.TRIAL_RESULT: TrialResult}
        qos = {ep.IMAGE: sensor_qos(), ep.CAMERA_INFO: sensor_qos(), ep.EPISODE_STATUS: latched_qos(1), ep.TRIAL: latched_qos(1)}
        self.pubs = {t: self.node.create_publisher(cls, t, qos.get(t, reliable_qos())) for t, cls in types.items()}
        self.published: dict[str, list] = {t: [] for t in types}
        self.witness: dict[str, list[bytes]] = {t: [] for t in types}
        for t, cls in types.items():
            self.node.create_subscription(cls, t, lambda data, t=t: self.witness[t].append(data),
                                          subscription_qos(t), raw=True)

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.rclpy.spin_once(self.node, timeout_sec=0.01)

    def wait_for_recorder(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        # Two subscribers per topic: the recorder and our witness.
        while any(p.get_subscription_count() < 2 for p in self.pubs.values()):
            assert time.monotonic() < deadline, "the recorder did not subscribe"
            self.spin(0.05)
        self.spin(0.5)

    def publish(self, topic: str, msg) -> None:
        self.pubs[topic].publish(msg)
        self.published[topic].append(msg)
        self.spin(0.003)

    def observation(self, k: int, stamp: int) -> None:
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, JointState

        from gf_bringup.images import image_to_msg
        from gf_teleop.importer import ee_state_msg

        rng = np.random.default_rng(k)
        self.publish(ep.CLOCK, Clock(clock=_stamp(stamp)))
        self.publish(ep.IMAGE, image_to_msg(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), _stamp(stamp)))
        info = CameraInfo(width=16, height=12, distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[float(k), 0, 8, 0, 100, 6, 0, 0, 1])
        info.header.stamp = _stamp(stamp)
        self.publish(ep.CAMERA_INFO, info)
        joints = JointState(name=["waist", "shoulder"], position=[0.1 * k, -0.2], velocity=[0.0, 0.5], effort=[1.0, 2.0])
        joints.header.stamp = _stamp(stamp)
        self.publish(ep.JOINT_STATES, joints)
        self.publish(ep.EE_STATE, ee_state_msg(rng.normal(size=7).astype(np.float32), stamp))

    def status(self, k: int, stamp: int, done: bool) -> None:
        from gf_interfaces.msg import EpisodeStatus

        msg = EpisodeStatus(trial_id=self.trial.trial_id, step=k, done=done, reason="success" if done else "running",
                            placed_card=1 if done else -1, success=done, upstream_success=done,
                            card_distances=[0.1, 0.02 * k, 0.3], chunks_executed=k)
        msg.header.stamp = _stamp(stamp)
        self.publish(ep.EPISODE_STATUS, msg)

    def chunk(self, k: int) -> None:
        from gf_teleop.importer import chunk_msg

        msg = chunk_msg(np.linspace(-0.5, 0.5, 7, dtype=np.float32) * (k % 3), self.trial.trial_id, k, time.time_ns())
        self.publish(ep.ACTION_CHUNK, msg)

    def episode(self, steps: int, done: bool = True, t0: int = 10**9) -> None:
        from gf_eval.ros_msgs import trial_to_msg

        self.publish(ep.TRIAL, trial_to_msg(self.trial, _stamp(t0)))
        self.spin(0.2)
        for k in range(steps + 1):
            stamp = t0 + k * 50_000_000
            self.observation(k, stamp)
            if k == steps and not done:
                break
            self.status(k, stamp, done=k == steps)
            if k < steps:
                self.chunk(k)
        if done:
            from gf_interfaces.msg import TrialResult

            self.publish(ep.TRIAL_RESULT, TrialResult(trial_id=self.trial.trial_id, protocol="Demo", index=self.trial.index,
                                                      placed_card=1, executed=True, recognised=True, success=True,
                                                      end_reason="success", steps=steps))

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def _start_recorder(helpers, out, *params):
    cmd = [helpers.exe("gf-recorder"), "--ros-args", "-p", f"output_dir:={out}", "-p", "operator:=tester", *params]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def assert_same(published, decoded, path: str = "msg") -> None:
    """Every field of an rclpy message equals the same field of a decoded object (any reader)."""
    for name, kind in published.get_fields_and_field_types().items():
        a, b = getattr(published, name), getattr(decoded, name)
        where = f"{path}.{name}"
        if hasattr(a, "get_fields_and_field_types"):
            assert_same(a, b, where)
        elif kind.startswith("sequence<") and "/" in kind:
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                assert_same(x, y, f"{where}[{i}]")
        elif isinstance(a, (bytes, bytearray, array.array, np.ndarray, list, tuple)):
            expected = np.asarray(bytearray(a) if isinstance(a, (bytes, bytearray)) else a).reshape(-1)
            actual = np.asarray(bytearray(b) if isinstance(b, (bytes, bytearray)) else b).reshape(-1)
            np.testing.assert_array_equal(expected, actual.astype(expected.dtype), err_msg=where)
        elif kind == "float":  # float32 fields: Python keeps the value rounded to float32 on assignment
            assert np.float32(a) == np.float32(b), where
        else:
            assert a == b, f"{where}: {a!r} != {b!r}"


def test_recorded_bag_is_message_for_message_what_was_published(tmp_path, fresh_domain, helpers):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.rosbag2 import Reader

    from gf_eval.trials import make_trial
    from gf_teleop.bagcheck import check_bag
    from gf_teleop.bagtypes import typestore

    out = tmp_path / "demos"
    recorder = _start_recorder(helpers, out)
    graph = GraphImitation(make_trial("Demo", 5))
    try:
        graph.wait_for_recorder()
        graph.episode(steps=12)
        [entry] = helpers.wait_for(lambda: ep.read_manifest(out) if out.exists() else [], 30, what="the manifest line")
        graph.spin(0.5)
    finally:
        graph.close()
        helpers.stop_process(recorder)
    assert entry.complete and entry.success and entry.length == 12 and entry.operator == "tester"
    assert entry.outcome["placed_card"] == 1 and entry.outcome["eval_success"] is True
    bag = out / entry.bag
    assert check_bag(bag) == []

    # rosbags: the stored bytes are the bytes DDS delivered (no re-encoding), and they decode to
    # what was published.
    store = typestore()
    stored: dict[str, list[bytes]] = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            stored.setdefault(conn.topic, []).append(bytes(raw))
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
    assert set(stored) == set(graph.published)
    for topic, sent in graph.published.items():
        assert len(stored[topic]) == len(graph.witness[topic]) == len(sent), topic
        for x, y in zip(stored[topic], graph.witness[topic]):
            # Same bytes; a network transport pads the CDR payload to 4 bytes, the in-process
            # delivery to our witness does not.
            assert x[:len(y)] == y and len(x) - len(y) < 4 and not any(x[len(y):]), topic
        assert len(stored[topic]) == len(sent), topic
        for msg, raw in zip(sent, stored[topic]):
            assert_same(msg, store.deserialize_cdr(raw, ep.TOPIC_TYPES[topic]), topic)
    assert qos[ep.IMAGE].reliability.name == "BEST_EFFORT" and qos[ep.TRIAL].durability.name == "TRANSIENT_LOCAL"

    # mcap + mcap-ros2-support: an independent reader and decoder (definitions from the file).
    with open(next(bag.glob("*.mcap")), "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        decoded: dict[str, list] = {}
        for schema, channel, message, obj in reader.iter_decoded_messages():
            assert schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
            decoded.setdefault(channel.topic, []).append(obj)
            # The same bytes as rosbags read, in the same order per topic.
            assert bytes(message.data) == stored[channel.topic][len(decoded[channel.topic]) - 1]
        f.seek(0)
        metadata = {m.name: m.metadata for m in make_reader(f).iter_metadata()}
    for topic, sent in graph.published.items():
        assert len(decoded[topic]) == len(sent), topic
        for msg, obj in zip(sent, decoded[topic]):
            assert_same(msg, obj, topic)
    assert "rosbag2" in metadata  # rosbag2's serialized metadata record, as ros2 bag writes it

    # The episode API on top of it.
    episode = ep.load_episode(out, entry)
    images = [m for m in graph.published[ep.IMAGE]]
    np.testing.assert_array_equal(episode.images[3].reshape(-1), np.frombuffer(bytes(images[3].data), np.uint8))
    np.testing.assert_array_equal(episode.proprio[5], np.asarray(graph.published[ep.EE_STATE][5].proprio, np.float32))
    np.testing.assert_array_equal(episode.actions[7], np.asarray(graph.published[ep.ACTION_CHUNK][7].data, np.float32))


def test_sigkill_mid_episode_leaves_a_readable_bag(tmp_path, fresh_domain, helpers):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.rosbag2 import Reader

    from gf_eval.trials import make_trial
    from gf_teleop.bagcheck import check_bag

    out = tmp_path / "demos"
    recorder = _start_recorder(helpers, out)
    graph = GraphImitation(make_trial("Demo", 9))
    try:
        graph.wait_for_recorder()
        graph.episode(steps=30, done=False)  # the episode is still running...
        graph.spin(1.0)  # ...long enough for a checkpoint (0.2 s)
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(timeout=10)
    finally:
        graph.close()
        helpers.stop_process(recorder)
    assert ep.read_manifest(out) == []
    repaired = subprocess.run([helpers.exe("gf-demos"), "repair", str(out)], capture_output=True, text=True, timeout=120)
    assert repaired.returncode == 0 and "1 bag(s) recovered" in repaired.stdout, repaired.stdout + repaired.stderr
    [entry] = ep.read_manifest(out)
    assert not entry.complete and entry.outcome["reason"] == "recording_interrupted"
    bag = out / entry.bag
    assert check_bag(bag) == []
    with Reader(bag) as reader:
        steps = [m.step for c, _, m in ((c, t, reader_deser(c, raw)) for c, t, raw in reader.messages())
                 if c.topic == ep.EPISODE_STATUS]
    assert steps == list(range(30)) and entry.length == 29
    with open(next(bag.glob("*.mcap")), "rb") as f:
        images = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(topics=[ep.IMAGE]))
    assert len(images) == 31
    assert ep.load_episode(out, entry).length == 29
    assert json.loads(ep.bag_custom_data(bag)[ep.KEY_OUTCOME])["reason"] == "recording_interrupted"


def reader_deser(conn, raw):
    from gf_teleop.bagtypes import typestore

    return typestore().deserialize_cdr(raw, conn.msgtype)


def test_control_service_starts_stops_and_discards(tmp_path, fresh_domain, helpers):
    import rclpy

    from gf_eval.trials import make_trial
    from gf_interfaces.srv import Command

    out = tmp_path / "manual"
    recorder = _start_recorder(helpers, out, "-p", "mode:=manual", "-p", "source:=robot")
    graph = GraphImitation(make_trial("Demo", 2))
    control = graph.node.create_client(Command, "/recorder/control")
    state = graph.node.create_client(Command, "/recorder/get_state")

    def call(client, request):
        future = client.call_async(request)
        rclpy.spin_until_future_complete(graph.node, future, timeout_sec=20)
        return future.result()

    def command(label):
        request = Command.Request()
        request.command = label
        return call(control, request).success

    try:
        graph.wait_for_recorder()
        assert control.wait_for_service(timeout_sec=30)
        assert call(state, Command.Request()).message == "idle"
        assert not command("stop") and not command("discard") and not command("fly")
        assert command("start")
        assert call(state, Command.Request()).message.startswith("recording:")
        graph.episode(steps=4)
        graph.spin(0.3)
        assert command("failure")
        assert command("start")
        graph.episode(steps=2)
        graph.spin(0.3)
        assert command("discard")
    finally:
        graph.close()
        helpers.stop_process(recorder)
    [entry] = ep.read_manifest(out)
    assert not entry.success and entry.complete and entry.length == 4 and entry.extra["source"] == "robot"
    assert len(list((out / "bags").iterdir())) == 1
