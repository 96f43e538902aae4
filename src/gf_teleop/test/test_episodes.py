"""The episode format: manifest, bag metadata (rosbag2 v9), type hashes, loading and alignment."""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import yaml

from gf_teleop import episodes as ep
from gf_teleop.bagcheck import check_bag, check_metadata_v9


def test_array_episode_reads_back_exactly(synthetic_demo, demo_trial):
    demo_dir, (images, proprio, actions) = synthetic_demo
    [entry] = ep.read_manifest(demo_dir)
    assert entry.complete and entry.success and entry.length == len(actions)
    assert entry.operator == "tester" and entry.trial_spec == demo_trial
    episode = ep.load_episode(demo_dir, entry)
    assert episode.images.dtype == np.uint8 and episode.images.shape == images.shape
    np.testing.assert_array_equal(episode.images, images)
    np.testing.assert_array_equal(episode.proprio, proprio)
    np.testing.assert_array_equal(episode.actions, actions)
    assert episode.proprio.dtype == episode.actions.dtype == np.float32
    assert episode.instruction == demo_trial.instruction and episode.trial == demo_trial
    # Without images the arrays are the same, the camera is not decoded.
    light = ep.load_episode(demo_dir, entry, images=False)
    np.testing.assert_array_equal(light.actions, actions)
    assert light.images.shape[0] == len(actions)


def test_bag_metadata_is_rosbag2_v9_with_custom_data(synthetic_demo, demo_trial):
    demo_dir, _ = synthetic_demo
    [entry] = ep.read_manifest(demo_dir)
    bag = demo_dir / entry.bag
    assert check_bag(bag) == []
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["storage_identifier"] == "mcap"
    assert info["relative_file_paths"] == [f"{bag.name}.mcap"]
    custom = info["custom_data"]
    assert custom[ep.KEY_INSTRUCTION] == demo_trial.instruction
    assert json.loads(custom[ep.KEY_TRIAL]) == json.loads(demo_trial.to_json())
    layout = json.loads(custom[ep.KEY_LAYOUT])
    assert [c["emoji_id"] for c in layout["cards"]] == list(demo_trial.emoji_ids)
    assert json.loads(custom[ep.KEY_OUTCOME])["success"] is True
    assert custom[ep.KEY_OPERATOR] == "tester" and custom[ep.KEY_COMPLETE] == "true"


def test_metadata_check_rejects_what_rosbag2_would_not_read(synthetic_demo):
    demo_dir, _ = synthetic_demo
    bag = demo_dir / ep.read_manifest(demo_dir)[0].bag
    good = yaml.safe_load((bag / "metadata.yaml").read_text())
    assert check_metadata_v9(good, bag) == []
    info = "rosbag2_bagfile_information"

    def broken(mutate):
        data = copy.deepcopy(good)
        mutate(data[info])
        return check_metadata_v9(data, bag)

    assert any("version" in e for e in broken(lambda i: i.update(version=8)))
    assert any("message_count" in e for e in broken(lambda i: i.update(message_count=i["message_count"] + 1)))
    assert any("custom_data" in e for e in broken(lambda i: i.update(custom_data={"k": 3})))
    assert any("ros_distro" in e for e in broken(lambda i: i.pop("ros_distro")))
    assert any("RIHS01" in e for e in broken(lambda i: i["topics_with_message_count"][0]["topic_metadata"].update(
        type_description_hash="RIHS01_nothex")))
    # Version 9 stores offered QoS profiles as a YAML list, version 8 as a string.
    assert any("offered_qos_profiles" in e for e in broken(lambda i: i["topics_with_message_count"][0]["topic_metadata"].update(
        offered_qos_profiles="- history: 3")))
    assert any("file missing" in e for e in broken(lambda i: i.update(relative_file_paths=["other.mcap"])))


def test_type_hashes_and_definitions_match_rosidl():
    """rosbags' RIHS01 hashes of our messages equal the ones rosidl generated at build time."""
    from gf_teleop.bagtypes import interface_dir, typestore

    store = typestore()
    checked = 0
    for path in sorted((interface_dir() / "msg").glob("*.json")):
        name = f"gf_interfaces/msg/{path.stem}"
        hashes = {h["type_name"]: h["hash_string"] for h in json.loads(path.read_text())["type_hashes"]}
        assert store.hash_rihs01(name) == hashes[name], name
        checked += 1
    assert checked == 8
    definition, _ = store.generate_msgdef("gf_interfaces/msg/Trial", ros_version=2)
    assert "string spec_json" in definition and "MSG: gf_interfaces/EmojiLayout" in definition


def _chunk(trial_id, step, rows, execute_steps=0, space="ee_delta_pose"):
    from types import SimpleNamespace

    data = np.asarray(rows, dtype=np.float32).reshape(-1)
    return SimpleNamespace(trial_id=trial_id, step_index=step, horizon=len(rows), execute_steps=execute_steps,
                           action_dim=7, action_space=space, data=data)


def test_executed_actions_follow_the_executors_rule():
    a = np.full(7, 0.1, np.float32)
    b = np.full(7, 0.2, np.float32)
    nan = np.full(7, np.nan, np.float32)
    chunks = [
        _chunk("T", 0, [a]),  # runs step 0
        _chunk("T", 0, [b]),  # stale: step 0 already ran
        _chunk("other", 1, [b]),  # another trial
        _chunk("T", 1, [nan]),  # malformed
        _chunk("T", 1, [b, a, b], execute_steps=2),  # runs steps 1-2 (two of three rows)
        _chunk("T", 3, [a * 20]),  # out of range: refused, never clipped into motion
        _chunk("T", 3, [b, b]),  # runs steps 3-4
    ]
    actions, origin = ep.executed_actions(chunks, "T")
    np.testing.assert_array_equal(actions, np.stack([a, b, a, b, b]))
    assert origin == [0, 4, 4, 6, 6]
    # The episode length cuts a chunk that outlives the episode.
    assert len(ep.executed_actions(chunks, "T", length=4)[0]) == 4


def test_manifest_torn_last_line_and_latest_entry_win(tmp_path):
    demo = tmp_path / "d"
    demo.mkdir()
    base = dict(bag="bags/a", trial={}, success=False, length=3, complete=False, outcome={}, operator="x")
    ep.append_manifest(demo, ep.EpisodeEntry(episode_id="a", **base))
    ep.append_manifest(demo, ep.EpisodeEntry(episode_id="b", **{**base, "bag": "bags/b"}))
    ep.append_manifest(demo, ep.EpisodeEntry(episode_id="a", **{**base, "complete": True}))
    with open(demo / ep.MANIFEST, "ab") as f:
        f.write(b'{"episode_id": "c", "bag": "bags/c", "tri')  # a writer killed mid-line
    entries = ep.read_manifest(demo)
    assert [e.episode_id for e in entries] == ["b", "a"] and entries[1].complete
    # The next append starts on a fresh line and the torn one stays ignored.
    ep.append_manifest(demo, ep.EpisodeEntry(episode_id="d", **{**base, "bag": "bags/d"}))
    with pytest.warns(UserWarning, match="torn manifest line"):
        assert [e.episode_id for e in ep.read_manifest(demo)] == ["b", "a", "d"]
    with pytest.raises(FileNotFoundError):
        ep.read_manifest(tmp_path / "missing")


def _append_many(args):
    demo, worker = args
    for i in range(50):
        ep.append_manifest(demo, ep.EpisodeEntry(
            episode_id=f"w{worker}-{i}", bag=f"bags/w{worker}-{i}", trial={}, success=True, length=i, complete=True,
            outcome={"pad": "x" * 3000}, operator=str(worker)))


def test_manifest_appends_from_several_processes_stay_whole(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(tmp_path, w) for w in range(4)])
    entries = ep.read_manifest(tmp_path)
    assert len(entries) == 200 and len({e.episode_id for e in entries}) == 200


def test_manifest_is_what_the_id_protocol_reads(synthetic_demo, demo_trial):
    from gf_eval.trials import combinations_from_manifest

    demo_dir, _ = synthetic_demo
    [combo] = combinations_from_manifest(demo_dir / ep.MANIFEST)
    assert combo.emoji_ids == demo_trial.emoji_ids and combo.target_index == demo_trial.target_index


def test_a_lost_camera_frame_is_an_error_not_a_shift(tmp_path, demo_trial, helpers):
    """An executed step without its image must not silently pair actions with other frames."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from gf_teleop.bagtypes import typestore
    from gf_teleop.importer import write_array_episode

    images, proprio, actions = helpers.synthetic_arrays()
    entry = write_array_episode(tmp_path / "full", images=images, proprio=proprio, actions=actions, trial=demo_trial,
                                success=True)
    src = tmp_path / "full" / entry.bag
    dst_dir = tmp_path / "lossy"
    dst = dst_dir / entry.bag
    dst.parent.mkdir(parents=True)
    skipped = 0
    with Reader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=typestore()) for c in reader.connections}
        for conn, t, raw in reader.messages():
            if conn.topic == ep.IMAGE and skipped == 0 and t > reader.start_time + 100_000_000:
                skipped += 1  # drop the frame of step 2
                continue
            writer.write(conns[conn.id], t, raw)
    with pytest.raises(ep.EpisodeError, match="no camera image for step"):
        ep.load_episode(dst_dir, entry)
    assert ep.load_episode(dst_dir, entry, images=False).length == len(actions)


def test_entry_from_bag_reads_a_bag_without_its_manifest(synthetic_demo):
    demo_dir, (_, _, actions) = synthetic_demo
    [entry] = ep.read_manifest(demo_dir)
    directory, alone = ep.entry_from_bag(demo_dir / entry.bag)
    assert alone.episode_id == entry.episode_id and alone.trial_spec == entry.trial_spec and alone.success
    np.testing.assert_array_equal(ep.load_episode(directory, alone).actions, actions)
    assert isinstance(directory, Path)
