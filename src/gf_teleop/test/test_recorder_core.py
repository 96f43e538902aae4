"""The recorder's routing of messages into episode bags, without DDS (messages fed directly).

The streams imitate the lock-step sim bridge: every step an observation (clock, camera, joint and
EE state, one stamp) then the episode status; the policy's chunk after the status. Arrival order
across topics is shuffled the way an executor may hand messages over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from rclpy.serialization import serialize_message

from gf_eval.trials import make_trial
from gf_teleop import episodes as ep
from gf_teleop.recorder import EpisodeRecorder, RecorderConfig

STEP = 50_000_000


def _stamp(ns):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def observation(stamp: int, value: float):
    """Serialised (topic, bytes) of one observation whose content encodes ``value``."""
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, JointState

    from gf_bringup.images import image_to_msg
    from gf_teleop.importer import ee_state_msg

    image = np.full((8, 8, 3), int(value) % 256, np.uint8)
    info = CameraInfo(width=8, height=8)
    info.header.stamp = _stamp(stamp)
    joints = JointState(name=["j"], position=[value])
    joints.header.stamp = _stamp(stamp)
    return [
        (ep.CLOCK, serialize_message(Clock(clock=_stamp(stamp)))),
        (ep.IMAGE, serialize_message(image_to_msg(image, _stamp(stamp)))),
        (ep.CAMERA_INFO, serialize_message(info)),
        (ep.JOINT_STATES, serialize_message(joints)),
        (ep.EE_STATE, serialize_message(ee_state_msg(np.full(7, value, np.float32), stamp))),
    ]


def status(trial_id: str, step: int, stamp: int, done: bool = False, success: bool = False):
    from gf_interfaces.msg import EpisodeStatus

    msg = EpisodeStatus(trial_id=trial_id, step=step, done=done, success=success,
                        reason=("success" if success else "timeout") if done else "running", placed_card=-1)
    msg.header.stamp = _stamp(stamp)
    return (ep.EPISODE_STATUS, serialize_message(msg))


def chunk(trial_id: str, step: int, value: float):
    from gf_teleop.importer import chunk_msg

    return (ep.ACTION_CHUNK, serialize_message(chunk_msg(np.full(7, value, np.float32), trial_id, step, 0)))


def trial_msg(trial):
    from gf_eval.ros_msgs import trial_to_msg

    return (ep.TRIAL, serialize_message(trial_to_msg(trial)))


def episode_stream(trial, steps: int, t0: int, value0: float):
    """Messages of one lock-step episode in publishing order; the last status is done."""
    out = []
    for k in range(steps + 1):
        stamp = t0 + k * STEP
        out += observation(stamp, value0 + k)
        out.append(status(trial.trial_id, k, stamp, done=k == steps, success=k == steps))
        if k < steps:
            out.append(chunk(trial.trial_id, k, (value0 + k) / 1000.0))
    return out


def feed(recorder, messages):
    t = time.time_ns()
    for i, (topic, data) in enumerate(messages):
        recorder.on_message(topic, data, t + i * 1000)


def move(messages, item, before):
    """Deliver ``item`` just before ``before`` (both identified by identity in the list)."""
    messages.remove(item)
    messages.insert(messages.index(before), item)


@pytest.fixture
def trials():
    return make_trial("Demo", 0), make_trial("Demo", 1)


def test_episodes_are_split_exactly_despite_reordering(tmp_path, trials):
    t1, t2 = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path), operator="op"), log=lambda s: None)
    first = [trial_msg(t1)] + episode_stream(t1, 4, 0, 0)
    # Sim time does not move during a reset: episode 2 starts at episode 1's final stamp.
    second = [trial_msg(t2)] + episode_stream(t2, 3, 4 * STEP, 100)
    stream = first + second
    done1 = next(m for m in first if m[0] == ep.EPISODE_STATUS and b"success" in m[1])
    final_image1 = [m for m in first if m[0] == ep.IMAGE][-1]
    # The executor hands over: the done status before the final frame, the next trial's
    # announcement before that done status, episode 2's first chunk before its first status.
    move(stream, done1, final_image1)
    move(stream, second[0], done1)
    first_status2 = next(m for m in second if m[0] == ep.EPISODE_STATUS)
    first_chunk2 = next(m for m in second if m[0] == ep.ACTION_CHUNK)
    move(stream, first_chunk2, first_status2)
    feed(rec, stream)
    rec.close()
    entries = {e.trial_spec.trial_id: e for e in ep.read_manifest(tmp_path)}
    assert set(entries) == {t1.trial_id, t2.trial_id}
    for trial, steps, v0 in ((t1, 4, 0), (t2, 3, 100)):
        entry = entries[trial.trial_id]
        assert entry.complete and entry.success and entry.length == steps, entry
        episode = ep.load_episode(tmp_path, entry)
        np.testing.assert_array_equal(episode.proprio[:, 0], np.arange(steps, dtype=np.float32) + v0)
        np.testing.assert_allclose(episode.actions[:, 0], (np.arange(steps) + v0) / 1000.0, rtol=1e-6)
        np.testing.assert_array_equal(episode.images[:, 0, 0, 0], (np.arange(steps) + v0) % 256)
        counts = entry.extra["message_counts"]
        # steps + 1 observations (the final one too), one trial announcement, nothing foreign.
        assert counts[ep.IMAGE] == counts[ep.CLOCK] == counts[ep.EE_STATE] == steps + 1
        assert counts[ep.ACTION_CHUNK] == steps and counts[ep.TRIAL] == 1
        assert entry.operator == "op"


def test_lost_frame_and_late_start_make_an_episode_incomplete(tmp_path, trials):
    t1, t2 = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path)), log=lambda s: None)
    stream = [trial_msg(t1)] + episode_stream(t1, 4, 0, 0)
    stream.remove([m for m in stream if m[0] == ep.IMAGE][2])  # lost in transport
    feed(rec, stream)
    late = [trial_msg(t2)] + episode_stream(t2, 4, 4 * STEP, 50)
    first_status = next(m for m in late if m[0] == ep.EPISODE_STATUS)
    late = [late[0]] + late[late.index(first_status) + 3:]  # the recorder missed step 0
    feed(rec, late)
    rec.close()
    entries = {e.trial_spec.trial_id: e for e in ep.read_manifest(tmp_path)}
    assert not entries[t1.trial_id].complete
    assert entries[t1.trial_id].outcome["problems"] == ["missing observations: /camera/image_raw x1"]
    assert not entries[t2.trial_id].complete
    assert any("started at step" in p for p in entries[t2.trial_id].outcome["problems"])


def test_a_newer_trial_supersedes_an_unfinished_episode(tmp_path, trials):
    t1, t2 = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path)), log=lambda s: None)
    feed(rec, [trial_msg(t1)] + episode_stream(t1, 5, 0, 0)[:20])  # never finished
    feed(rec, [trial_msg(t2)] + episode_stream(t2, 2, 10 * STEP, 10))
    rec.close()
    entries = {e.trial_spec.trial_id: e for e in ep.read_manifest(tmp_path)}
    assert entries[t1.trial_id].outcome["reason"] == "superseded" and not entries[t1.trial_id].complete
    assert entries[t2.trial_id].complete and entries[t2.trial_id].length == 2


def test_manual_start_stop_and_discard(tmp_path, trials):
    t1, _ = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path), mode="manual", source="robot"), log=lambda s: None)
    feed(rec, [trial_msg(t1)])  # announced before recording starts: written at start
    first = rec.start()
    feed(rec, episode_stream(t1, 3, 0, 0)[:-1])  # stopped before the status after the 3rd chunk
    entry = rec.stop(success=True)
    # Steps count when the executor reported them: the last chunk's outcome was never seen.
    assert entry.episode_id == first and entry.success and entry.length == 2 and entry.complete
    assert ep.load_episode(tmp_path, entry).length == 2
    second = rec.start()
    feed(rec, episode_stream(t1, 2, 0, 0))
    assert rec.discard() == second
    assert not (tmp_path / "bags" / second).exists()
    assert [e.episode_id for e in ep.read_manifest(tmp_path)] == [first]
    with pytest.raises(RuntimeError):
        rec.start() and rec.start()


CRASHING_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {test_dir!r})
    from gf_bringup.runtime import configure_environment
    configure_environment()
    from test_recorder_core import episode_stream, trial_msg, feed
    from gf_eval.trials import make_trial
    from gf_teleop.recorder import EpisodeRecorder, RecorderConfig
    trial = make_trial("Demo", 3)
    rec = EpisodeRecorder(RecorderConfig(output_dir={out!r}, checkpoint_period_s=0.0), log=lambda s: None)
    stream = [trial_msg(trial)] + episode_stream(trial, 40, 0, 0)
    feed(rec, stream[:len(stream) // 2])
    print("fed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_recorder_leaves_a_readable_incomplete_bag(tmp_path):
    """SIGKILL mid-episode: the salvaged bag reads with rosbags and mcap, marked incomplete."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.rosbag2 import Reader

    from gf_teleop.bagcheck import check_bag
    from gf_teleop.recording import recover, unfinished_bags

    out = tmp_path / "demos"
    script = CRASHING_WRITER.format(test_dir=os.path.dirname(__file__), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and "fed" in proc.stdout, proc.stderr[-2000:]
    assert ep.read_manifest(out) == [] and len(unfinished_bags(out)) == 1
    [entry] = recover(out)
    assert not entry.complete and not entry.success and entry.outcome["reason"] == "recording_interrupted"
    assert ep.read_manifest(out) == [entry] and unfinished_bags(out) == []
    bag = out / entry.bag
    assert check_bag(bag) == []
    # Everything fed before the kill was checkpointed (period 0): the first half of 40 steps.
    with Reader(bag) as reader:
        statuses = [m for c, _, m in reader.messages() if c.topic == ep.EPISODE_STATUS]
    assert len(statuses) >= 19 and entry.length >= 19
    with open(next(bag.glob("*.mcap")), "rb") as f:
        decoded = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(topics=[ep.EE_STATE]))
    assert [round(m.proprio[0]) for _, _, _, m in decoded] == list(range(len(decoded))) and len(decoded) >= 19
    assert ep.load_episode(out, entry).length == entry.length
    custom = ep.bag_custom_data(bag)
    assert custom[ep.KEY_COMPLETE] == "false" and json.loads(custom[ep.KEY_OUTCOME])["reason"] == "recording_interrupted"


def result_msg(trial, reason: str, steps: int):
    from gf_interfaces.msg import TrialResult

    return (ep.TRIAL_RESULT, serialize_message(TrialResult(trial_id=trial.trial_id, end_reason=reason, steps=steps,
                                                           success=reason == "success", placed_card=-1)))


def test_a_score_ahead_of_the_status_backlog_waits_for_the_end(tmp_path, trials):
    """A busy recorder may get the trial result before the statuses queued on another topic."""
    t1, _ = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path)), expect_result=lambda: True, log=lambda s: None)
    stream = [trial_msg(t1)] + episode_stream(t1, 6, 0, 0)
    cut = len(stream) // 3
    feed(rec, stream[:cut] + [result_msg(t1, "success", 6)] + stream[cut:])
    rec.close()
    [entry] = ep.read_manifest(tmp_path)
    assert entry.complete and entry.length == 6 and entry.outcome["reason"] == "success"


def test_a_policy_timeout_ends_the_episode_on_its_score(tmp_path, trials):
    t1, _ = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path), close_timeout_s=0.0), log=lambda s: None)
    stream = [trial_msg(t1)] + episode_stream(t1, 8, 0, 0)
    feed(rec, stream[:25] + [result_msg(t1, "policy_timeout", 3)])  # the policy went silent
    assert ep.read_manifest(tmp_path) == []
    rec.tick(time.monotonic() + 1)
    [entry] = ep.read_manifest(tmp_path)
    assert entry.complete and not entry.success and entry.outcome["reason"] == "policy_timeout"


def test_statuses_lost_by_a_busy_recorder_do_not_break_the_episode(tmp_path, trials):
    """The bridge's status topic keeps only its newest message, so a recorder that falls behind
    can miss some; sim time (one control period per step) still aligns every observation."""
    t1, _ = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path)), log=lambda s: None)
    stream = [trial_msg(t1)] + episode_stream(t1, 10, 0, 0)
    lost = [m for m in stream if m[0] == ep.EPISODE_STATUS][3:7]
    feed(rec, [m for m in stream if m not in lost])
    rec.close()
    [entry] = ep.read_manifest(tmp_path)
    assert entry.complete and entry.length == 10
    episode = ep.load_episode(tmp_path, entry)
    np.testing.assert_array_equal(episode.proprio[:, 0], np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(episode.images[:, 0, 0, 0], np.arange(10))


def test_a_busy_recorder_gets_the_reset_observation_before_the_trial(tmp_path, trials):
    """When several subscriptions are ready at once the executor serves them in creation order:
    the new trial's first observation and chunk can come before its announcement."""
    t1, t2 = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path)), log=lambda s: None)
    first = [trial_msg(t1)] + episode_stream(t1, 3, 0, 0)
    second = [trial_msg(t2)] + episode_stream(t2, 3, 3 * STEP, 10)
    first_status2 = next(m for m in second if m[0] == ep.EPISODE_STATUS)
    head = second[1:second.index(first_status2)]  # reset observation of trial 2
    chunk0 = next(m for m in second if m[0] == ep.ACTION_CHUNK)
    rest = [m for m in second[second.index(first_status2):] if m is not chunk0]
    feed(rec, first + head + [chunk0, second[0], first_status2] + rest[1:])
    rec.close()
    entries = {e.trial_spec.trial_id: e for e in ep.read_manifest(tmp_path)}
    for trial, v0 in ((t1, 0), (t2, 10)):
        assert entries[trial.trial_id].complete, entries[trial.trial_id].outcome
        episode = ep.load_episode(tmp_path, entries[trial.trial_id])
        np.testing.assert_array_equal(episode.proprio[:, 0], np.arange(3, dtype=np.float32) + v0)
        assert entries[trial.trial_id].extra["message_counts"][ep.IMAGE] == 4


def test_a_discarded_auto_episode_stays_out_of_the_manifest_until_its_trial_is_announced_anew(tmp_path, trials):
    """`x` while the operator drives: the rest of that trial must not be recorded as a partial
    episode; the next trial (or the same one announced again) is recorded as usual."""
    from gf_eval.ros_msgs import trial_to_msg

    t1, t2 = trials
    rec = EpisodeRecorder(RecorderConfig(output_dir=str(tmp_path), operator="op"), log=lambda s: None)
    stream = episode_stream(t1, 6, 0, 0)
    cut = next(i for i, m in enumerate(stream) if m[0] == ep.EPISODE_STATUS and i > 20)
    feed(rec, [trial_msg(t1)] + stream[:cut])
    assert rec.discard() is not None
    feed(rec, stream[cut:])  # the trial runs on after the discard
    feed(rec, [trial_msg(t2)] + episode_stream(t2, 3, 6 * STEP, 100))
    again = (ep.TRIAL, serialize_message(trial_to_msg(t1, _stamp(99 * STEP))))  # t1 re-run: announced anew
    feed(rec, [again] + episode_stream(t1, 2, 9 * STEP, 200))
    rec.close()
    entries = [(e.trial_spec.trial_id, e.length, e.complete) for e in ep.read_manifest(tmp_path)]
    assert entries == [(t2.trial_id, 3, True), (t1.trial_id, 2, True)]
