"""The demonstration format: one rosbag2 bag per episode plus a JSON-lines manifest (ROS-free).

A demo directory looks like::

    DIR/manifest.jsonl                 one line per episode (appended + fsynced, never rewritten)
    DIR/bags/<episode_id>/metadata.yaml   rosbag2 metadata, version 9, custom_data (below)
    DIR/bags/<episode_id>/<episode_id>.mcap  MCAP storage, message definitions embedded

Bags hold the topics of ``TOPICS`` as they were received (serialised CDR, no re-encoding).
``custom_data`` keys (all strings): ``gf.format``, ``gf.episode_id``, ``gf.instruction``,
``gf.trial`` (TrialSpec JSON), ``gf.layout`` (cards, target and cube as JSON), ``gf.outcome``
(JSON), ``gf.operator``, ``gf.source`` (sim, teleop, upstream-import), ``gf.complete``.

A manifest line has ``episode_id``, ``bag`` (relative to the directory), ``trial`` (the
TrialSpec dict, so ``gf_eval.trials.combinations_from_manifest`` reads it for the ID protocol),
``success``, ``length`` (control steps with an action), ``complete`` (the bag holds the episode
from its first observation to its end and was closed cleanly; a crashed recording is recovered
up to the crash and marked incomplete), ``outcome`` and ``operator``; other keys land in
``EpisodeEntry.extra``. If an episode id appears twice, the last line wins.

``load_episode`` turns a bag into aligned arrays: row t holds the observation the action of
step t was chosen from (image, proprio) and that action. In lock-step recordings (the sim) an
observation belongs to step t through the /gf/episode_status with the same stamp; the action of
step t is found by replaying the executor's rule (gf_eval.action_space.validate_chunk) over the
recorded chunks, so rejected or stale chunks never enter the data. Recordings without episode
status (a real robot streaming) pair each executed action with the newest observation received
before it.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from gf_bringup import names
from gf_eval.action_space import ChunkRejected, validate_chunk
from gf_eval.trials import TrialSpec

MANIFEST = "manifest.jsonl"
BAGS_DIR = "bags"
FORMAT = "gf-episode-v1"
ROSBAG2_VERSION = 9

# Topics as bags name them: namespace-free (gf_bringup.names.recorded).
IMAGE = names.recorded(names.IMAGE)
CAMERA_INFO = names.recorded(names.CAMERA_INFO)
JOINT_STATES = names.recorded(names.JOINT_STATES)
EE_STATE = names.recorded(names.EE_STATE)
ACTION_CHUNK = names.recorded(names.ACTION_CHUNK)
TRIAL = names.recorded(names.TRIAL)
EPISODE_STATUS = names.recorded(names.EPISODE_STATUS)
TRIAL_RESULT = names.recorded(names.TRIAL_RESULT)
CLOCK = names.recorded(names.CLOCK)
SIM_STATE = names.recorded(names.SIM_STATE)

# Topic -> ROS type of everything the recorder knows how to record.
TOPIC_TYPES: dict[str, str] = {
    IMAGE: "sensor_msgs/msg/Image",
    CAMERA_INFO: "sensor_msgs/msg/CameraInfo",
    JOINT_STATES: "sensor_msgs/msg/JointState",
    EE_STATE: "gf_interfaces/msg/EeState",
    ACTION_CHUNK: "gf_interfaces/msg/ActionChunk",
    TRIAL: "gf_interfaces/msg/Trial",
    EPISODE_STATUS: "gf_interfaces/msg/EpisodeStatus",
    TRIAL_RESULT: "gf_interfaces/msg/TrialResult",
    CLOCK: "rosgraph_msgs/msg/Clock",
    SIM_STATE: "gf_interfaces/msg/SimState",
}
# What training needs (issue 5) plus the scored result and sim time; /gf/sim_state is opt-in.
DEFAULT_TOPICS: tuple[str, ...] = (
    IMAGE, CAMERA_INFO, JOINT_STATES, EE_STATE, ACTION_CHUNK, TRIAL, EPISODE_STATUS, TRIAL_RESULT, CLOCK,
)

KEY_FORMAT = "gf.format"
KEY_EPISODE_ID = "gf.episode_id"
KEY_INSTRUCTION = "gf.instruction"
KEY_TRIAL = "gf.trial"
KEY_LAYOUT = "gf.layout"
KEY_OUTCOME = "gf.outcome"
KEY_OPERATOR = "gf.operator"
KEY_SOURCE = "gf.source"
KEY_COMPLETE = "gf.complete"


class EpisodeError(ValueError):
    """A bag that cannot be turned into an episode; the message says which and why."""


@dataclass
class EpisodeEntry:
    """One manifest line."""

    episode_id: str
    bag: str  # path relative to the manifest's directory
    trial: dict  # TrialSpec.to_dict(); {} when the recording had no trial
    success: bool
    length: int
    complete: bool
    outcome: dict
    operator: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}

    @classmethod
    def from_dict(cls, data: dict) -> "EpisodeEntry":
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = {"episode_id", "bag"} - set(data)
        if missing:
            raise KeyError(f"manifest line without {sorted(missing)}")
        return cls(
            episode_id=str(data["episode_id"]), bag=str(data["bag"]), trial=dict(data.get("trial") or {}),
            success=bool(data.get("success", False)), length=int(data.get("length", 0)),
            complete=bool(data.get("complete", False)), outcome=dict(data.get("outcome") or {}),
            operator=str(data.get("operator", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @property
    def trial_spec(self) -> TrialSpec | None:
        return TrialSpec.from_dict(self.trial) if self.trial else None


def manifest_path(demo_dir: str | Path) -> Path:
    return Path(demo_dir) / MANIFEST


def recorded_entries(demo_dir: str | Path) -> list[EpisodeEntry]:
    """``read_manifest`` for readers of a demo directory: ``FileNotFoundError`` when it has no
    manifest (naming the subdirectories that have one), rather than zero episodes."""
    if not manifest_path(demo_dir).exists():
        nested = sorted(str(p.parent) for p in Path(demo_dir).glob(f"*/{MANIFEST}")) if Path(demo_dir).is_dir() else []
        hint = f"; demo directories inside it: {', '.join(nested)}" if nested else ""
        raise FileNotFoundError(f"{demo_dir} is not a demo directory (no {MANIFEST}){hint}")
    return read_manifest(demo_dir)


def read_manifest(demo_dir: str | Path) -> list[EpisodeEntry]:
    """The episodes of a demo directory in manifest order (last line wins per episode id).

    A line torn by a crash during an append is skipped; a JSON line that is not an episode raises.
    A directory without a manifest yet has no episodes.
    """
    path = manifest_path(demo_dir)
    if not Path(demo_dir).is_dir():
        raise FileNotFoundError(f"demo directory {demo_dir} does not exist")
    if not path.exists():
        return []
    entries: dict[str, EpisodeEntry] = {}
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            # A line torn by a writer killed mid-append (later appends start on a new line).
            if i != len(lines) - 1:
                warnings.warn(f"{path}:{i + 1}: skipping a torn manifest line", stacklevel=2)
            continue
        try:
            entry = EpisodeEntry.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{i + 1}: not a manifest line ({exc})") from exc
        entries.pop(entry.episode_id, None)  # keep the order of the latest line
        entries[entry.episode_id] = entry
    return list(entries.values())


def append_manifest(demo_dir: str | Path, entry: EpisodeEntry) -> None:
    """Append one line, flushed and fsynced; safe with several recorders in one directory."""
    path = manifest_path(demo_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry.to_dict(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # workers share one manifest
        try:
            # A previous writer killed mid-line leaves a torn line: start on a fresh one.
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclass
class Episode:
    """A demonstration as aligned arrays (row t: observation at step t and the action taken)."""

    images: np.ndarray  # (T, H, W, 3) uint8
    proprio: np.ndarray  # (T, 7) float32
    actions: np.ndarray  # (T, 7) float32: the action executed at step t (ee_delta_pose units)
    instruction: str
    trial: TrialSpec | None
    entry: EpisodeEntry

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def read_messages(bag: str | Path, topics: tuple[str, ...] | None = None):
    """Yield (topic, receive time ns, deserialised message) of a bag in time order.

    Messages are decoded with the definitions the bag embeds (``bagtypes.BagTypes``), so a bag
    written before a message gained fields reads as it was written.
    """
    from rosbags.rosbag2 import Reader

    from gf_teleop.bagtypes import BagTypes

    try:
        reader = Reader(Path(bag))
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types; name the bag
        raise EpisodeError(f"{bag}: not a readable rosbag2 bag ({type(exc).__name__}: {exc})") from exc
    with reader:
        types = BagTypes(reader.connections)
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:
            return  # rosbags reads every topic when given no connections
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, t, types.deserialize(raw, conn.msgtype)


def bag_custom_data(bag: str | Path) -> dict[str, str]:
    """The rosbag2 custom_data of a bag (from metadata.yaml)."""
    import yaml

    meta = Path(bag) / "metadata.yaml"
    if not meta.exists():
        raise EpisodeError(f"{bag}: no metadata.yaml (an unfinished recording? run `gf-demos repair`)")
    info = yaml.safe_load(meta.read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
    return dict(info.get("custom_data") or {})


@dataclass
class _Streams:
    trial_msgs: list = field(default_factory=list)
    statuses: list = field(default_factory=list)  # (t, msg)
    ee: dict = field(default_factory=dict)  # stamp -> proprio
    images: dict = field(default_factory=dict)  # stamp -> Image message
    chunks: list = field(default_factory=list)  # (t, msg)
    timeline: list = field(default_factory=list)  # (t, kind, stamp) for stream alignment


def _collect(bag: Path, with_images: bool) -> _Streams:
    s = _Streams()
    topics = (TRIAL, EPISODE_STATUS, EE_STATE, ACTION_CHUNK) + ((IMAGE,) if with_images else ())
    for topic, t, msg in read_messages(bag, topics):
        if topic == TRIAL:
            s.trial_msgs.append(msg)
        elif topic == EPISODE_STATUS:
            s.statuses.append((t, msg))
        elif topic == EE_STATE:
            stamp = stamp_ns(msg.header.stamp)
            s.ee.setdefault(stamp, np.asarray(msg.proprio, dtype=np.float32))
            s.timeline.append((t, "ee", stamp))
        elif topic == IMAGE:
            stamp = stamp_ns(msg.header.stamp)
            s.images.setdefault(stamp, msg)
            s.timeline.append((t, "image", stamp))
        elif topic == ACTION_CHUNK:
            s.chunks.append((t, msg))
    return s


DEFAULT_CONTROL_PERIOD_NS = 50_000_000  # 20 Hz, the simulated task's control rate


def fill_step_stamps(known: dict[int, int], last: int, period_ns: int) -> dict[int, int]:
    """Stamps of steps 0..``last`` from the statuses that arrived.

    A lock-step simulator advances sim time by one control period per step, so the stamps of
    statuses a busy subscriber lost (a latched status topic keeps only the newest) follow from
    the others -- but only when every known stamp agrees with that rule; otherwise only the
    known steps are returned.
    """
    if not known:
        return {}
    k0 = min(known)
    base = known[k0] - k0 * period_ns
    if any(stamp != base + k * period_ns for k, stamp in known.items()):
        return dict(known)
    return {k: base + k * period_ns for k in range(0, last + 1)}


def executed_actions(
    chunks, trial_id: str | None, length: int | None = None, lockstep: bool = True
) -> tuple[np.ndarray, list[int]]:
    """The actions an executor ran, from chunks in the order it received them.

    Replays the executor's acceptance rule: a chunk runs when it is valid, belongs to the trial
    and (``lockstep``) starts at the next step; its rows (``execute_steps`` of them, or all)
    run one per step. Streaming executors (``lockstep=False``) run every valid chunk as it comes.
    Returns the (steps, dim) actions and, per step, the index of the chunk it came from.
    """
    rows: list[np.ndarray] = []
    origin: list[int] = []
    for i, msg in enumerate(chunks):
        if length is not None and len(rows) >= length:
            break
        try:
            chunk = validate_chunk(
                trial_id=msg.trial_id, step_index=int(msg.step_index), horizon=int(msg.horizon),
                execute_steps=int(msg.execute_steps), action_dim=int(msg.action_dim), action_space=msg.action_space,
                data=np.asarray(msg.data, dtype=np.float32), expected_trial_id=trial_id, next_step=len(rows) if lockstep else None,
            )
        except ChunkRejected:
            continue
        for action in chunk.actions:
            rows.append(np.asarray(action, dtype=np.float32))
            origin.append(i)
    if length is not None:
        rows, origin = rows[:length], origin[:length]
    actions = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 7), np.float32)
    return actions, origin


def _trial_of(entry: EpisodeEntry, streams: _Streams) -> TrialSpec | None:
    if entry.trial:
        return TrialSpec.from_dict(entry.trial)
    for msg in streams.trial_msgs:
        if msg.spec_json:
            return TrialSpec.from_dict(json.loads(msg.spec_json))
    return None


def load_episode(demo_dir: str | Path, entry: EpisodeEntry, *, images: bool = True) -> Episode:
    """Read an episode's bag into aligned arrays (``images=False`` skips decoding the camera).

    Raises ``EpisodeError`` when the bag lacks an observation for an executed step (e.g. a
    camera frame lost in transport) instead of silently shifting the data.
    """
    from gf_bringup.images import msg_to_image

    bag = Path(demo_dir) / entry.bag
    streams = _collect(bag, images)
    trial = _trial_of(entry, streams)
    trial_id = trial.trial_id if trial is not None else None
    statuses = [(t, m) for t, m in streams.statuses if trial_id is None or m.trial_id == trial_id]
    if statuses:
        # Lock-step: observation of step k = messages stamped like the status of step k.
        known: dict[int, int] = {}
        final = None
        for _, m in statuses:
            known.setdefault(int(m.step), stamp_ns(m.header.stamp))
            if m.done:
                final = int(m.step)
        last = final if final is not None else max(known)
        rate = next((float(m.control_rate_hz) for m in streams.trial_msgs if m.control_rate_hz > 0), 0.0)
        period = int(round(1e9 / rate)) if rate else DEFAULT_CONTROL_PERIOD_NS
        step_stamp = fill_step_stamps(known, last, period)
        actions, _ = executed_actions([m for _, m in streams.chunks], trial_id, last)
        stamps = []
        for k in range(len(actions)):
            if k not in step_stamp:
                raise EpisodeError(f"{bag}: no episode status for step {k} (recording started late?)")
            stamps.append(step_stamp[k])
    else:
        # Streaming: each executed action pairs with the newest observation received before it.
        actions, origin = executed_actions([m for _, m in streams.chunks], None, lockstep=False)
        chunk_times = [t for t, _ in streams.chunks]
        stamps = []
        for k, i in enumerate(origin):
            before = [s for (t, kind, s) in streams.timeline if t <= chunk_times[i] and kind == "ee"
                      and (not images or s in streams.images)]
            if not before:
                raise EpisodeError(f"{bag}: no observation before the action of step {k}")
            stamps.append(before[-1])
    if len(actions) == 0:
        raise EpisodeError(f"{bag}: no executed actions")
    missing = [k for k, s in enumerate(stamps) if s not in streams.ee]
    if missing:
        raise EpisodeError(f"{bag}: no /gf/ee_state for step(s) {missing[:5]}")
    proprio = np.stack([streams.ee[s] for s in stamps]).astype(np.float32)
    if images:
        lost = [k for k, s in enumerate(stamps) if s not in streams.images]
        if lost:
            raise EpisodeError(f"{bag}: no camera image for step(s) {lost[:5]} of {len(stamps)}")
        frames = np.stack([msg_to_image(streams.images[s]) for s in stamps])
    else:
        frames = np.zeros((len(stamps), 0, 0, 3), np.uint8)
    instruction = trial.instruction if trial is not None else str(entry.extra.get("instruction", ""))
    return Episode(images=frames, proprio=proprio, actions=actions, instruction=instruction, trial=trial, entry=entry)


def entry_from_bag(bag: str | Path) -> tuple[Path, EpisodeEntry]:
    """(directory, entry) for a bag given by path alone, from its custom metadata.

    ``load_episode(*entry_from_bag(path))`` reads any episode bag, in a demo directory or not.
    """
    bag = Path(bag).resolve()
    data = bag_custom_data(bag)
    outcome = json.loads(data.get(KEY_OUTCOME) or "{}")
    trial = json.loads(data[KEY_TRIAL]) if data.get(KEY_TRIAL) else {}
    entry = EpisodeEntry(
        episode_id=data.get(KEY_EPISODE_ID, bag.name), bag=bag.name, trial=trial,
        success=bool(outcome.pop("success", False)), length=int(outcome.pop("length", 0)),
        complete=data.get(KEY_COMPLETE, "false") == "true", outcome=outcome, operator=data.get(KEY_OPERATOR, ""),
        extra={"instruction": data.get(KEY_INSTRUCTION, ""), "source": data.get(KEY_SOURCE, "")},
    )
    return bag.parent, entry


def canonical_trial(trial: dict | TrialSpec) -> str:
    """A TrialSpec as canonical JSON (tuples and lists alike), to compare specs across files."""
    spec = trial if isinstance(trial, TrialSpec) else TrialSpec.from_dict(trial)
    return spec.to_json()
