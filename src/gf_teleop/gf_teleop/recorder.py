"""The episode recorder's logic: which received message goes into which episode bag (ROS-free).

Input is what a raw ROS subscription delivers: topic, serialised CDR bytes, receive time. The
node (recorder_node.py) only forwards messages and commands here.

Modes:

* ``auto`` (simulation, the demo generator, evaluations): an episode starts with the first
  /gf/episode_status of each newly announced /gf/trial (the reset observation) and ends with the
  status that says ``done`` (or a /gf/trial_result for a trial that ended without one, e.g. a
  policy timeout). A newer trial starting before the end closes the old bag as incomplete.
* ``manual`` (teleoperation): ``start()`` / ``stop(success)`` / ``discard()`` from a service or
  a key; everything received in between goes into the bag.

Episode boundaries in lock-step simulation. The bridge publishes an observation (clock, camera,
joint and EE state, all with the same sim-time stamp) and then the status. Across topics the
arrival order is not guaranteed, and the next episode's first observation carries the same stamp
as the previous episode's last one (sim time does not advance during a reset). So a finished
episode stays open ("closing") until each sensor topic it used has delivered its message with the
final stamp (plus the trial result, when an evaluator publishes one), or ``close_timeout_s``;
messages with a trial id (trial, chunk, status, result) are routed by that id.

Completeness: an episode is complete when it was recorded from step 0 to its end and every
executed step has its observation on every sensor topic in the bag (a lost camera frame makes it
incomplete, so the demo generator records it again).
"""

from __future__ import annotations

import json
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gf_eval.trials import TrialSpec
from gf_teleop import episodes as ep
from gf_teleop.recording import EpisodeRecording, recover, unique_episode_id

# Topics whose messages start with a stamp (std_msgs/Header or rosgraph_msgs/Clock).
SENSOR_TOPICS = (ep.IMAGE, ep.CAMERA_INFO, ep.JOINT_STATES, ep.EE_STATE, ep.CLOCK, ep.SIM_STATE)
# Sensor topics whose observation every executed step needs (others are kept but not required).
REQUIRED_TOPICS = (ep.IMAGE, ep.EE_STATE)
ORPHAN_LIMIT = 256


def cdr_stamp(data: bytes | memoryview) -> int:
    """Stamp (ns) of a serialised message that starts with builtin_interfaces/Time."""
    little = data[1] == 1  # CDR encapsulation: 0x0001 = little endian
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass
class RecorderConfig:
    """What to record and where (node parameters; see recorder_node.py)."""

    output_dir: str = "demos"
    mode: str = "auto"
    topics: tuple[str, ...] = ep.DEFAULT_TOPICS
    operator: str = ""
    source: str = "sim"
    close_timeout_s: float = 2.0
    checkpoint_period_s: float = 0.2
    fsync: bool = False


@dataclass
class _Episode:
    rec: EpisodeRecording
    trial_id: str | None
    first_step: int | None = None
    last_status: object | None = None
    result: object | None = None
    final_stamp: int | None = None
    pending: set = field(default_factory=set)
    deadline: float = 0.0
    last_stamp: dict = field(default_factory=dict)  # sensor topic -> newest stamp
    stamps: dict = field(default_factory=dict)  # sensor topic -> set of stamps
    step_stamps: dict = field(default_factory=dict)  # step -> stamp of its first status
    chunks: list = field(default_factory=list)  # deserialised chunks (small)
    period_ns: int = ep.DEFAULT_CONTROL_PERIOD_NS  # sim time per control step (from the Trial)
    dirty: bool = False
    last_checkpoint: float = 0.0


class EpisodeRecorder:
    """Routes received messages into episode bags; see the module docstring."""

    def __init__(self, config: RecorderConfig, expect_result: Callable[[], bool] = lambda: False,
                 qos: dict | None = None, log: Callable[[str], None] = print):
        from gf_teleop.bagtypes import typestore

        self.config = config
        self.dir = Path(config.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.expect_result = expect_result
        self.qos = qos if qos is not None else {}
        self.log = log
        self.store = typestore()
        self.current: _Episode | None = None
        self.closing: _Episode | None = None
        # The newest announcement: (spec or None, serialised Trial, receive time, trial id).
        self.latest_trial: tuple[TrialSpec | None, bytes, int, str] | None = None
        self.orphans: deque = deque(maxlen=ORPHAN_LIMIT)
        self.finished: list[ep.EpisodeEntry] = []
        self.seen_topics: set[str] = set()
        self.announced: str | None = None  # announced trial whose episode has not opened yet
        self.discarded: bytes | None = None  # auto mode: the announcement whose episode was discarded
        self.latest_period_ns = ep.DEFAULT_CONTROL_PERIOD_NS
        self.recovered = recover(self.dir)
        for entry in self.recovered:
            self.log(f"recovered unfinished bag {entry.bag} (marked incomplete, {entry.length} steps)")

    # --- commands ----------------------------------------------------------------------------

    @property
    def recording(self) -> bool:
        return self.current is not None

    def start(self, episode_id: str | None = None) -> str:
        """Start an episode now (manual mode); returns its id."""
        if self.current is not None:
            raise RuntimeError(f"already recording {self.current.rec.episode_id}")
        trial = self.latest_trial[0] if self.latest_trial else None
        self.current = self._open(trial, episode_id)
        if self.latest_trial is not None:
            self.current.rec.write(ep.TRIAL, self.latest_trial[1], time.time_ns())
        return self.current.rec.episode_id

    def stop(self, success: bool | None = None, reason: str = "operator_stop") -> ep.EpisodeEntry | None:
        """End the current episode and keep it (``success`` from the operator, else the sim's)."""
        if self.closing is not None:
            self._finalize(self.closing)
        if self.current is None:
            return None
        episode, self.current = self.current, None
        return self._finalize(episode, reason=reason, success=success, ended=True)

    def discard(self) -> str | None:
        """Drop the current (or just finished, still closing) episode; returns its id."""
        episode = self.current or self.closing
        if episode is None:
            return None
        if episode is self.current:
            self.current = None
            if self.config.mode == "auto" and self.latest_trial and self.latest_trial[3] == episode.trial_id:
                self.discarded = bytes(self.latest_trial[1])  # its next statuses must not open a partial episode
        else:
            self.closing = None
        episode.rec.discard()
        self.log(f"discarded {episode.rec.episode_id}")
        return episode.rec.episode_id

    def close(self) -> None:
        """Shut down: finish a closing episode, keep an unfinished one as incomplete."""
        if self.closing is not None:
            self._finalize(self.closing)
        if self.current is not None:
            episode, self.current = self.current, None
            self._finalize(episode, reason="recorder_stopped")

    # --- input -------------------------------------------------------------------------------

    def on_message(self, topic: str, data: bytes, t_ns: int | None = None) -> None:
        """One received message (serialised) on a recorded topic."""
        t_ns = time.time_ns() if t_ns is None else t_ns
        if topic == ep.TRIAL:
            self._on_trial(data, t_ns)
        elif topic == ep.EPISODE_STATUS:
            self._on_status(data, t_ns)
        elif topic == ep.TRIAL_RESULT:
            self._on_result(data, t_ns)
        elif topic == ep.ACTION_CHUNK:
            self._on_chunk(data, t_ns)
        elif topic in SENSOR_TOPICS:
            self._on_sensor(topic, data, t_ns)
        else:
            if self.current is not None:
                self.current.rec.write(topic, data, t_ns)

    def tick(self, now: float | None = None) -> None:
        """Periodic work: closing timeouts and checkpoints (call a few times per second)."""
        now = time.monotonic() if now is None else now
        if self.closing is not None and now >= self.closing.deadline:
            self._finalize(self.closing)
        current = self.current
        if current is not None and current.result is not None and now >= current.deadline and self.config.mode == "auto":
            self._finalize(current, ended=True)  # scored, and no done status came: it ended
        for episode in (self.current, self.closing):
            if episode is not None:
                self._checkpoint(episode, now, force=False)

    # --- routing -----------------------------------------------------------------------------

    def _deserialize(self, data: bytes, topic: str):
        return self.store.deserialize_cdr(data, ep.TOPIC_TYPES[topic])

    def _by_trial(self, trial_id: str) -> _Episode | None:
        for episode in (self.current, self.closing):
            if episode is not None and episode.trial_id == trial_id:
                return episode
        return None

    def _on_trial(self, data: bytes, t_ns: int) -> None:
        msg = self._deserialize(data, ep.TRIAL)
        trial = TrialSpec.from_dict(json.loads(msg.spec_json)) if msg.spec_json else None
        self.latest_trial = (trial, data, t_ns, msg.trial_id)
        self.latest_period_ns = int(round(1e9 / msg.control_rate_hz)) if msg.control_rate_hz > 0 else ep.DEFAULT_CONTROL_PERIOD_NS
        episode = self._by_trial(msg.trial_id)
        if episode is not None:
            episode.rec.write(ep.TRIAL, data, t_ns)
        elif self.config.mode != "auto" and self.current is not None:
            self.current.rec.write(ep.TRIAL, data, t_ns)
        elif self.config.mode == "auto":
            self.announced = msg.trial_id  # observations from now on may be this trial's
        # Auto mode opens the episode with the trial's first status (its reset observation): the
        # executor may hand us the announcement before the previous episode's final status.

    def _on_status(self, data: bytes, t_ns: int) -> None:
        msg = self._deserialize(data, ep.EPISODE_STATUS)
        episode = self._by_trial(msg.trial_id)
        if episode is None:
            if (self.config.mode == "auto" and self.latest_trial and self.latest_trial[3] == msg.trial_id
                    and self.latest_trial[1] != self.discarded):  # a discarded trial stays unrecorded until announced anew
                if self.current is not None:
                    old, self.current = self.current, None
                    self._finalize(old, reason="superseded")
                trial, trial_data, trial_t, _ = self.latest_trial
                self.announced = None
                self.current = episode = self._open(trial, None, trial_id=msg.trial_id)
                episode.rec.write(ep.TRIAL, trial_data, trial_t)
                self._flush_orphans(episode, first_stamp=ep.stamp_ns(msg.header.stamp))
            elif self.config.mode == "manual" and self.current is not None:
                episode = self.current
            else:
                return
        episode.rec.write(ep.EPISODE_STATUS, data, t_ns)
        step, stamp = int(msg.step), ep.stamp_ns(msg.header.stamp)
        if episode.first_step is None:
            episode.first_step = step
        episode.step_stamps.setdefault(step, stamp)
        episode.last_status = msg
        episode.dirty = True
        self._checkpoint(episode, time.monotonic(), force=False)
        if msg.done and episode is self.current and self.config.mode == "auto":
            self._begin_closing(episode, stamp)

    def _begin_closing(self, episode: _Episode, final_stamp: int) -> None:
        if self.closing is not None:
            self._finalize(self.closing)
        self.current = None
        episode.final_stamp = final_stamp
        episode.pending = {t for t, s in episode.last_stamp.items() if s != final_stamp}
        if self.expect_result() and episode.result is None:
            episode.pending.add(ep.TRIAL_RESULT)
        episode.deadline = time.monotonic() + self.config.close_timeout_s
        self.closing = episode
        # Observations held back while the next trial was announced: the final ones are ours.
        held = [o for o in self.orphans if o[0] != ep.ACTION_CHUNK]
        for o in held:
            self.orphans.remove(o)
        for topic, data, t_ns in held:
            self._on_sensor(topic, data, t_ns)
        if not episode.pending and self.closing is episode:
            self._finalize(episode)

    def _on_result(self, data: bytes, t_ns: int) -> None:
        msg = self._deserialize(data, ep.TRIAL_RESULT)
        episode = self._by_trial(msg.trial_id)
        if episode is None:
            return
        episode.rec.write(ep.TRIAL_RESULT, data, t_ns)
        episode.result = msg
        if episode is self.closing:
            episode.pending.discard(ep.TRIAL_RESULT)
            if not episode.pending:
                self._finalize(episode)
        elif self.config.mode == "auto":
            # Scored before we saw its done status: either that status is still queued behind
            # (a busy recorder) or there is none (policy timeout). Wait for it a little.
            episode.deadline = time.monotonic() + self.config.close_timeout_s

    def _on_chunk(self, data: bytes, t_ns: int) -> None:
        msg = self._deserialize(data, ep.ACTION_CHUNK)
        episode = self._by_trial(msg.trial_id) or self.current
        if episode is None:
            if self.config.mode == "auto":
                # Handed over before its trial's first status (or even its announcement).
                self.orphans.append((ep.ACTION_CHUNK, data, t_ns))
            return
        self._write_chunk(episode, data, t_ns, msg)

    def _write_chunk(self, episode: _Episode, data: bytes, t_ns: int, msg=None) -> None:
        episode.rec.write(ep.ACTION_CHUNK, data, t_ns)
        episode.chunks.append(msg if msg is not None else self._deserialize(data, ep.ACTION_CHUNK))
        episode.dirty = True

    def _flush_orphans(self, episode: _Episode, first_stamp: int) -> None:
        """Messages of a trial that the executor handed over before the trial's first status.

        A busy recorder may even get them before the trial's announcement, so they are matched
        by content: chunks by trial id, observations by stamp (from the reset observation on;
        of two with the same topic and stamp -- the previous episode's last observation and this
        one's first -- the later one).
        """
        sensors: dict[tuple[str, int], tuple[bytes, int]] = {}
        for topic, data, t_ns in sorted(self.orphans, key=lambda o: o[2]):
            if topic == ep.ACTION_CHUNK:
                msg = self._deserialize(data, ep.ACTION_CHUNK)
                if msg.trial_id == episode.trial_id:
                    self._write_chunk(episode, data, t_ns, msg)
            else:
                stamp = cdr_stamp(data)
                if stamp >= first_stamp:
                    sensors[(topic, stamp)] = (data, t_ns)
        for (topic, stamp), (data, t_ns) in sorted(sensors.items(), key=lambda kv: kv[1][1]):
            self._write_sensor(episode, topic, data, t_ns, stamp)
        self.orphans.clear()

    def _on_sensor(self, topic: str, data: bytes, t_ns: int) -> None:
        stamp = cdr_stamp(data)
        closing = self.closing
        if closing is not None and (
            (topic in closing.pending and stamp == closing.final_stamp) or stamp < closing.final_stamp
        ):
            self._write_sensor(closing, topic, data, t_ns, stamp)
            if stamp == closing.final_stamp:
                closing.pending.discard(topic)
                if not closing.pending:
                    self._finalize(closing)
            return
        current = self.current
        if current is not None and (self.announced is None or self.config.mode != "auto"):
            self._write_sensor(current, topic, data, t_ns, stamp)
        elif self.config.mode == "auto":
            # No episode, or a new trial was announced while the current one has not ended:
            # hold the message until its episode is known.
            self.orphans.append((topic, data, t_ns))

    def _write_sensor(self, episode: _Episode, topic: str, data: bytes, t_ns: int, stamp: int | None = None) -> None:
        stamp = cdr_stamp(data) if stamp is None else stamp
        self.seen_topics.add(topic)
        episode.rec.write(topic, data, t_ns)
        episode.last_stamp[topic] = stamp
        episode.stamps.setdefault(topic, set()).add(stamp)
        episode.dirty = True

    # --- bags --------------------------------------------------------------------------------

    def _open(self, trial: TrialSpec | None, episode_id: str | None, trial_id: str | None = None) -> _Episode:
        if trial is not None:
            base = trial.trial_id
        else:
            base = f"{self.config.source}-{time.strftime('%Y%m%d-%H%M%S')}"
        rec = EpisodeRecording(
            self.dir, unique_episode_id(self.dir, episode_id or base), trial=trial, operator=self.config.operator,
            source=self.config.source, qos=self.qos, fsync=self.config.fsync,
        ).open()
        return _Episode(rec=rec, trial_id=trial_id if trial_id is not None else (trial.trial_id if trial else None),
                        last_checkpoint=time.monotonic(), period_ns=self.latest_period_ns)

    def _checkpoint(self, episode: _Episode, now: float, force: bool) -> None:
        if episode.dirty and (force or now - episode.last_checkpoint >= self.config.checkpoint_period_s):
            episode.rec.checkpoint()
            episode.dirty = False
            episode.last_checkpoint = now

    def _finalize(self, episode: _Episode, reason: str | None = None, success: bool | None = None,
                  ended: bool = False) -> ep.EpisodeEntry:
        if episode is self.closing:
            self.closing = None
        if episode is self.current:
            self.current = None
        status, result = episode.last_status, episode.result
        done = bool(status is not None and status.done) or result is not None or ended
        outcome: dict = {}
        if status is not None:
            outcome.update(
                reason=status.reason, steps=int(status.step), placed_card=int(status.placed_card),
                upstream_success=bool(status.upstream_success), cube_released=bool(status.cube_released),
                arm_still=bool(status.arm_still), chunks_executed=int(status.chunks_executed),
                chunks_rejected=int(status.chunks_rejected), card_distances=[round(float(d), 4) for d in status.card_distances],
            )
        if result is not None:
            outcome.update(reason=result.end_reason, executed=bool(result.executed), recognised=bool(result.recognised),
                           eval_success=bool(result.success), eval_wall_time=round(float(result.wall_time), 3))
        if reason is not None and not (status is not None and status.done) and result is None:
            outcome["reason"] = reason
        # Executed steps: the sim's count when there is one, else the chunks the executor would run.
        if status is not None:
            length = int(status.step) - int(episode.first_step or 0)
        else:
            length = len(ep.executed_actions(episode.chunks, episode.trial_id, lockstep=False)[0])
        missing = self._missing_observations(episode)
        problems = []
        if status is not None and episode.trial_id is not None:
            executed = len(ep.executed_actions(episode.chunks, episode.trial_id, length)[0])
            if executed < length:
                problems.append(f"chunks for {length - executed} of {length} executed steps missing")
        if episode.first_step not in (None, 0):
            problems.append(f"recording started at step {episode.first_step}")
        if missing:
            problems.append("missing observations: " + ", ".join(f"{t} x{n}" for t, n in missing.items()))
        if not done:
            problems.append(f"episode did not end ({outcome.get('reason', reason)})")
        if problems:
            outcome["problems"] = problems
        if success is None:
            success = bool(result.success) if result is not None else bool(status is not None and status.success)
        complete = done and not problems
        entry = episode.rec.finish(success=bool(success), length=length, complete=complete, outcome=outcome)
        self.finished.append(entry)
        self.log(f"episode {entry.episode_id}: {outcome.get('reason', '?')}, {length} steps, success={entry.success}, "
                 f"complete={entry.complete}" + (f" ({'; '.join(problems)})" if problems else ""))
        return entry

    def _missing_observations(self, episode: _Episode) -> dict[str, int]:
        """Per required sensor topic in the bag: executed steps without an observation."""
        if not episode.step_stamps:
            return {}
        last = max(episode.step_stamps)
        if episode.last_status is not None and episode.last_status.done:
            last = int(episode.last_status.step) - 1  # the final observation has no action
        stamps = ep.fill_step_stamps(episode.step_stamps, last, episode.period_ns)
        needed = [stamps[k] for k in range(episode.first_step or 0, last + 1) if k in stamps]
        if len(needed) < last + 1 - (episode.first_step or 0):
            return {ep.EPISODE_STATUS: last + 1 - (episode.first_step or 0) - len(needed)}
        out = {}
        for topic in REQUIRED_TOPICS:
            if topic not in self.config.topics or topic not in self.seen_topics:
                continue
            have = episode.stamps.get(topic, set())
            n = sum(1 for s in needed if s not in have)
            if n:
                out[topic] = n
        return out
