"""Bags recorded before ActionChunk gained its signature fields stay readable and replayable.

The old bag is made here: a synthetic episode whose /gf/action_chunk connection is rewritten with
the definition ActionChunk had before issue 20 (embedded in the bag, as rosbag2 does), its
messages encoded with that definition.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from gf_teleop import episodes as ep

# ActionChunk.msg as it was before the signature fields (comments dropped: they are not part of the type).
OLD_ACTION_CHUNK = """std_msgs/Header header
string trial_id
uint32 step_index
uint32 horizon
uint32 execute_steps
uint32 action_dim
string action_space
float32[] data
"""
CHUNK_TYPE = "gf_interfaces/msg/ActionChunk"


def old_store():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(OLD_ACTION_CHUNK, CHUNK_TYPE))
    return store


@pytest.fixture
def old_demo(synthetic_demo, tmp_path):
    """(directory, entry, actions) of a demo whose bag carries the pre-signature ActionChunk."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from gf_teleop.bagtypes import typestore

    demo_dir, (_, _, actions) = synthetic_demo
    [entry] = ep.read_manifest(demo_dir)
    src = demo_dir / entry.bag
    out_dir = tmp_path / "old"
    dst = out_dir / entry.bag
    dst.parent.mkdir(parents=True)
    old, new = old_store(), typestore()
    old_chunk = old.types[CHUNK_TYPE]
    with Reader(src) as reader, Writer(dst, version=ep.ROSBAG2_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=old if c.msgtype == CHUNK_TYPE else new)
                 for c in reader.connections}
        for conn, t, raw in reader.messages():
            if conn.msgtype == CHUNK_TYPE:
                m = new.deserialize_cdr(raw, CHUNK_TYPE)
                raw = old.serialize_cdr(old_chunk(
                    header=m.header, trial_id=m.trial_id, step_index=m.step_index, horizon=m.horizon,
                    execute_steps=m.execute_steps, action_dim=m.action_dim, action_space=m.action_space, data=m.data,
                ), CHUNK_TYPE)
            writer.write(conns[conn.id], t, raw)
        for key, value in ep.bag_custom_data(src).items():
            writer.set_custom_data(key, value)
    (out_dir / ep.MANIFEST).write_text((demo_dir / ep.MANIFEST).read_text())
    with Reader(dst) as reader:
        [chunk_conn] = [c for c in reader.connections if c.msgtype == CHUNK_TYPE]
        assert "key_id" not in chunk_conn.msgdef.data  # really the old definition
        assert chunk_conn.digest != new.hash_rihs01(CHUNK_TYPE)
    return out_dir, entry, actions


def test_a_bag_with_the_old_action_chunk_loads(old_demo):
    directory, entry, actions = old_demo
    episode = ep.load_episode(directory, entry)
    np.testing.assert_array_equal(episode.actions, actions)
    chunks = [m for _, _, m in ep.read_messages(directory / entry.bag, (ep.ACTION_CHUNK,))]
    assert chunks and not hasattr(chunks[0], "signature")  # decoded as it was written


def test_to_ros_message_fills_new_fields_with_defaults():
    from gf_interfaces.msg import ActionChunk
    from gf_teleop.bagtypes import to_ros_message

    store = old_store()
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=3, nanosec=4), frame_id="base_link")
    decoded = types[CHUNK_TYPE](header=header, trial_id="T", step_index=2, horizon=1, execute_steps=0, action_dim=7,
                                action_space="ee_delta_pose", data=np.arange(7, dtype=np.float32))
    msg = to_ros_message(decoded, ActionChunk)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (3, 4, "base_link")
    assert (msg.trial_id, msg.step_index, msg.action_dim) == ("T", 2, 7)
    assert list(msg.data) == list(range(7))
    assert (msg.key_id, msg.sequence, len(msg.signature)) == ("", 0, 0)


@pytest.mark.slow
def test_an_old_bag_replays_as_todays_message(old_demo, fresh_domain, helpers):
    """gf-replay play publishes the old chunks as today's ActionChunk (fields copied, new ones default)."""
    import rclpy

    from gf_interfaces.msg import ActionChunk
    from gf_teleop.recorder_node import subscription_qos

    directory, entry, actions = old_demo
    rclpy.init()
    node = rclpy.create_node("old_bag_listener")
    got: list = []
    node.create_subscription(ActionChunk, ep.ACTION_CHUNK, got.append, subscription_qos(ep.ACTION_CHUNK))
    player = subprocess.Popen([helpers.exe("gf-replay"), "play", str(directory / entry.bag), "--rate", "4",
                               "--delay", "0.5", "--wait-subscribers", "1", "--topics", ep.ACTION_CHUNK,
                               "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while player.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.05)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    assert player.returncode == 0, player.stdout.read()
    assert len(got) == len(actions)
    np.testing.assert_array_equal(np.stack([np.asarray(m.data, np.float32) for m in got]), actions)
    assert {m.trial_id for m in got} == {entry.trial_spec.trial_id}
    assert all(m.key_id == "" and m.sequence == 0 and len(m.signature) == 0 for m in got)
