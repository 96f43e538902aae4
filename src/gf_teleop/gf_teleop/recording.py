"""Writing one episode bag, and recovering bags whose writer died (ROS-free).

``EpisodeRecording`` wraps rosbags' rosbag2 writer (MCAP storage, metadata version 9): messages
go to disk as the serialised bytes they arrived as; connections are added when a topic first
delivers, with the message definition and RIHS01 hash from ``bagtypes.typestore()``.

Crash safety. While a bag is being written its directory holds ``gf_recording.json`` (who, what
trial, when). ``checkpoint()`` closes the current MCAP chunk and flushes it, so everything before
the last checkpoint is on disk as complete MCAP records. A recorder killed mid-episode therefore
leaves a bag without summary and metadata.yaml, plus the marker; ``recover()`` (run by the
recorder at start-up, by ``gf-demos generate`` and by ``gf-demos repair``) salvages every
complete record into a proper bag, marks it incomplete and appends its manifest line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gf_eval.trials import TrialSpec
from gf_teleop import episodes as ep
from gf_teleop.bagtypes import typestore

MARKER = "gf_recording.json"
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def layout_json(trial: TrialSpec) -> str:
    """The table layout of a trial in a compact, human-readable JSON form."""
    return json.dumps({
        "cards": [{"emoji_id": c.emoji_id, "char": c.char, "description": c.description, "x": c.x, "y": c.y}
                  for c in trial.cards],
        "target_index": trial.target_index,
        "cube_xy": list(trial.cube_xy),
    }, ensure_ascii=False)


def unique_episode_id(demo_dir: str | Path, base: str) -> str:
    """``base`` made file-name safe, with ``-r1``, ``-r2``... when a bag of that name exists."""
    base = _SAFE_ID.sub("_", base).strip("._") or "episode"
    bags = Path(demo_dir) / ep.BAGS_DIR
    taken = {e.episode_id for e in ep.read_manifest(demo_dir)} if Path(demo_dir).is_dir() else set()
    candidate, n = base, 0
    while candidate in taken or (bags / candidate).exists():
        n += 1
        candidate = f"{base}-r{n}"
    return candidate


@dataclass
class EpisodeRecording:
    """One episode bag being written."""

    demo_dir: Path
    episode_id: str
    trial: TrialSpec | None = None
    operator: str = ""
    source: str = "sim"
    qos: dict[str, list] = field(default_factory=dict)  # topic -> rosbags Qos list (offered profiles)
    extra: dict = field(default_factory=dict)
    fsync: bool = False  # fsync at every checkpoint (power-loss safety; a process crash needs only flush)

    def __post_init__(self) -> None:
        self.demo_dir = Path(self.demo_dir)
        self.bag_rel = f"{ep.BAGS_DIR}/{self.episode_id}"
        self.bag_dir = self.demo_dir / self.bag_rel
        self.writer = None
        self.connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self.started = time.time()
        self.bytes_written = 0

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> "EpisodeRecording":
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.bag_dir.parent.mkdir(parents=True, exist_ok=True)
        self.writer = Writer(self.bag_dir, version=ep.ROSBAG2_VERSION, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        marker = {
            "episode_id": self.episode_id, "bag": self.bag_rel, "operator": self.operator, "source": self.source,
            "trial": self.trial.to_dict() if self.trial else {}, "started": self.started, "pid": os.getpid(),
            "extra": self.extra,
        }
        _write_json_durably(self.bag_dir / MARKER, marker)
        return self

    def write(self, topic: str, data: bytes | memoryview, t_ns: int, msgtype: str | None = None) -> None:
        """Append one serialised message received at ``t_ns`` (wall-clock ns)."""
        conn = self.connections.get(topic)
        if conn is None:
            msgtype = msgtype or ep.TOPIC_TYPES[topic]
            conn = self.writer.add_connection(topic, msgtype, typestore=typestore(), offered_qos_profiles=self.qos.get(topic, []))
            self.connections[topic] = conn
            self.counts[topic] = 0
        self.writer.write(conn, int(t_ns), data)
        self.counts[topic] += 1
        self.bytes_written += len(data)

    def checkpoint(self) -> None:
        """Put every message written so far on disk as complete MCAP records."""
        storage = getattr(self.writer, "storage", None)
        # rosbags' MCAP writer buffers one chunk (up to 1 MiB) in memory; close it early.
        if storage is None or not hasattr(storage, "close_chunk") or not hasattr(storage, "bio"):
            return
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        if self.fsync:
            os.fsync(storage.bio.fileno())

    def finish(self, *, success: bool, length: int, complete: bool, outcome: dict, extra: dict | None = None) -> ep.EpisodeEntry:
        """Close the bag with its custom metadata and append the manifest line."""
        entry = ep.EpisodeEntry(
            episode_id=self.episode_id, bag=self.bag_rel, trial=self.trial.to_dict() if self.trial else {},
            success=bool(success), length=int(length), complete=bool(complete), outcome=dict(outcome),
            operator=self.operator, extra={**self._summary(), **self.extra, **(extra or {})},
        )
        for key, value in custom_data(entry, self.source).items():
            self.writer.set_custom_data(key, value)
        self.writer.close()
        self.writer = None
        ep.append_manifest(self.demo_dir, entry)
        (self.bag_dir / MARKER).unlink(missing_ok=True)
        return entry

    def discard(self) -> None:
        """Drop the episode: no bag, no manifest line."""
        if self.writer is not None:
            try:
                self.writer.abort()
            except Exception:  # noqa: BLE001 - the directory goes away anyway
                pass
            self.writer = None
        shutil.rmtree(self.bag_dir, ignore_errors=True)

    def _summary(self) -> dict:
        return {
            "instruction": self.trial.instruction if self.trial else "",
            "source": self.source,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "recorded_at_epoch": round(self.started, 3),
            "wall_time_s": round(time.time() - self.started, 3),
            "message_counts": dict(self.counts),
        }


def custom_data(entry: ep.EpisodeEntry, source: str) -> dict[str, str]:
    """rosbag2 custom_data (string -> string) of an episode."""
    trial = entry.trial_spec
    return {
        ep.KEY_FORMAT: ep.FORMAT,
        ep.KEY_EPISODE_ID: entry.episode_id,
        ep.KEY_INSTRUCTION: trial.instruction if trial else str(entry.extra.get("instruction", "")),
        ep.KEY_TRIAL: trial.to_json() if trial else "",
        ep.KEY_LAYOUT: layout_json(trial) if trial else "",
        ep.KEY_OUTCOME: json.dumps({"success": entry.success, "length": entry.length, **entry.outcome}, sort_keys=True),
        ep.KEY_OPERATOR: entry.operator,
        ep.KEY_SOURCE: source,
        ep.KEY_COMPLETE: "true" if entry.complete else "false",
    }


def _write_json_durably(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- recovery -------------------------------------------------------------------------------


def unfinished_bags(demo_dir: str | Path) -> list[Path]:
    """Bag directories whose recording never finished (they still hold the marker)."""
    bags = Path(demo_dir) / ep.BAGS_DIR
    if not bags.is_dir():
        return []
    return sorted(p.parent for p in bags.glob(f"*/{MARKER}") if not p.parent.name.startswith("."))


def salvage_mcap(path: Path) -> tuple[dict[int, tuple[str, str]], list[tuple[int, int, bytes]]]:
    """Channels (id -> (topic, type)) and messages (channel, log time, data) of a possibly
    truncated MCAP file, up to its last complete record."""
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    messages: list[tuple[int, int, bytes]] = []
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, validate_crcs=False).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, Channel):
                    channels[record.id] = (record.topic, schemas.get(record.schema_id, ""))
                elif isinstance(record, Message):
                    messages.append((record.channel_id, record.log_time, bytes(record.data)))
        except Exception:  # noqa: BLE001 - the torn tail of a crashed file ends the salvage
            pass
    return channels, messages


def _incomplete_outcome(messages_by_topic: dict[str, list[bytes]], trial_id: str | None) -> tuple[dict, int]:
    """What is known of an interrupted episode: the last status and the executed steps."""
    from rclpy.serialization import deserialize_message

    from gf_interfaces.msg import ActionChunk, EpisodeStatus

    outcome: dict = {"reason": "recording_interrupted"}
    statuses = [deserialize_message(d, EpisodeStatus) for d in messages_by_topic.get(ep.EPISODE_STATUS, [])]
    statuses = [s for s in statuses if trial_id is None or s.trial_id == trial_id]
    if statuses:
        last = statuses[-1]
        outcome.update(last_status_step=int(last.step), last_status_reason=last.reason, placed_card=int(last.placed_card))
        steps = int(last.step)
    else:
        chunks = [deserialize_message(d, ActionChunk) for d in messages_by_topic.get(ep.ACTION_CHUNK, [])]
        steps = len(ep.executed_actions(chunks, trial_id)[0])
    return outcome, steps


def recover_bag(bag_dir: Path, demo_dir: Path) -> ep.EpisodeEntry:
    """Turn an unfinished bag into a readable one, marked incomplete, and add its manifest line."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    marker = json.loads((bag_dir / MARKER).read_text(encoding="utf-8"))
    known = {e.episode_id for e in ep.read_manifest(demo_dir)}
    if (bag_dir / "metadata.yaml").exists():
        # The writer closed the bag but died before the manifest line: the bag is whole.
        data = ep.bag_custom_data(bag_dir)
        outcome = json.loads(data.get(ep.KEY_OUTCOME) or "{}")
        entry = ep.EpisodeEntry(
            episode_id=marker["episode_id"], bag=marker["bag"], trial=marker.get("trial") or {},
            success=bool(outcome.pop("success", False)), length=int(outcome.pop("length", 0)),
            complete=data.get(ep.KEY_COMPLETE) == "true", outcome=outcome, operator=marker.get("operator", ""),
            extra={**marker.get("extra", {}), "source": marker.get("source", "")},
        )
    else:
        mcaps = sorted(bag_dir.glob("*.mcap"))
        channels, messages = salvage_mcap(mcaps[0]) if mcaps else ({}, [])
        trial = TrialSpec.from_dict(marker["trial"]) if marker.get("trial") else None
        by_topic: dict[str, list[bytes]] = {}
        for cid, _, data in messages:
            by_topic.setdefault(channels[cid][0], []).append(data)
        outcome, steps = _incomplete_outcome(by_topic, trial.trial_id if trial else None)
        entry = ep.EpisodeEntry(
            episode_id=marker["episode_id"], bag=marker["bag"], trial=marker.get("trial") or {}, success=False,
            length=steps, complete=False, outcome=outcome, operator=marker.get("operator", ""),
            extra={**marker.get("extra", {}), "source": marker.get("source", ""), "recovered_messages": len(messages)},
        )
        # Rebuild under the same directory name (rosbags names the .mcap after it), then swap.
        work = bag_dir.parent / f".recovering-{bag_dir.name}"
        shutil.rmtree(work, ignore_errors=True)
        tmp = work / bag_dir.name
        writer = Writer(tmp, version=ep.ROSBAG2_VERSION, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        conns = {}
        for cid, (topic, msgtype) in channels.items():
            conns[cid] = writer.add_connection(topic, msgtype, typestore=typestore())
        for cid, t, data in messages:
            writer.write(conns[cid], t, data)
        for key, value in custom_data(entry, marker.get("source", "")).items():
            writer.set_custom_data(key, value)
        writer.close()
        trash = bag_dir.parent / f".crashed-{bag_dir.name}"
        shutil.rmtree(trash, ignore_errors=True)
        bag_dir.rename(trash)
        tmp.rename(bag_dir)
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if entry.episode_id not in known:
        ep.append_manifest(demo_dir, entry)
    (bag_dir / MARKER).unlink(missing_ok=True)
    return entry


def recover(demo_dir: str | Path, skip_pids: Iterable[int] = ()) -> list[ep.EpisodeEntry]:
    """Recover every unfinished bag of a demo directory whose writer is no longer running."""
    demo_dir = Path(demo_dir)
    out = []
    skip = set(skip_pids)
    for bag_dir in unfinished_bags(demo_dir):
        try:
            pid = int(json.loads((bag_dir / MARKER).read_text(encoding="utf-8")).get("pid", 0))
        except (ValueError, OSError):
            pid = 0
        if pid in skip or (pid and pid != os.getpid() and _alive(pid)):
            continue  # another recorder is still writing it
        out.append(recover_bag(bag_dir, demo_dir))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
