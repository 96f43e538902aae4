"""Checks that a bag is what rosbag2 expects: the metadata.yaml schema of version 9 (ROS-free).

Written from the rosbag2 metadata format (rosbag2_storage ``BagMetadata`` and its YAML
converter): the fields each version added (custom_data in 6, type_description_hash in 7,
ros_distro in 8, offered_qos_profiles as a YAML list instead of a string in 9), their types,
and the counts and files that must agree with each other and with the directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

RIHS01 = re.compile(r"^RIHS01_[0-9a-f]{64}$")
QOS_ENUMS = {
    "history": {"system_default", "keep_last", "keep_all", "unknown"},
    "reliability": {"system_default", "reliable", "best_effort", "unknown", "best_available"},
    "durability": {"system_default", "transient_local", "volatile", "unknown", "best_available"},
    "liveliness": {"system_default", "automatic", "manual_by_node", "manual_by_topic", "unknown", "best_available"},
}
QOS_TIMES = ("deadline", "lifespan", "liveliness_lease_duration")
STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_qos(qos, where: str) -> list[str]:
    """Errors of one offered QoS profile in the version-9 (mapping) form."""
    if not isinstance(qos, dict):
        return [f"{where}: QoS profile must be a mapping, got {type(qos).__name__}"]
    errors = []
    for key, allowed in QOS_ENUMS.items():
        if qos.get(key) not in allowed:
            errors.append(f"{where}.{key}: {qos.get(key)!r} not one of {sorted(allowed)}")
    if not _is_int(qos.get("depth")) or qos["depth"] < 0:
        errors.append(f"{where}.depth: must be a non-negative integer")
    for key in QOS_TIMES:
        t = qos.get(key)
        if not (isinstance(t, dict) and _is_int(t.get("sec")) and _is_int(t.get("nsec"))):
            errors.append(f"{where}.{key}: must be {{sec: int, nsec: int}}")
    if not isinstance(qos.get("avoid_ros_namespace_conventions"), bool):
        errors.append(f"{where}.avoid_ros_namespace_conventions: must be a bool")
    return errors


def check_metadata_v9(metadata: dict, bag_dir: Path | None = None) -> list[str]:
    """Errors of a parsed metadata.yaml against rosbag2's version-9 format ([] = valid)."""
    errors: list[str] = []
    info = metadata.get("rosbag2_bagfile_information") if isinstance(metadata, dict) else None
    if not isinstance(info, dict):
        return ["top level must be a mapping with 'rosbag2_bagfile_information'"]

    def need(key, check, what):
        if key not in info:
            errors.append(f"missing {key}")
            return False
        if not check(info[key]):
            errors.append(f"{key}: must be {what}, got {info[key]!r:.80}")
            return False
        return True

    need("version", lambda v: v == 9, "9")
    need("storage_identifier", lambda v: isinstance(v, str) and v, "a non-empty string")
    need("duration", lambda v: isinstance(v, dict) and _is_int(v.get("nanoseconds")) and v["nanoseconds"] >= 0,
         "{nanoseconds: int >= 0}")
    need("starting_time", lambda v: isinstance(v, dict) and _is_int(v.get("nanoseconds_since_epoch")),
         "{nanoseconds_since_epoch: int}")
    need("message_count", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    need("compression_format", lambda v: isinstance(v, str), "a string")
    need("compression_mode", lambda v: v in ("", "none", "file", "message", "NONE", "FILE", "MESSAGE"), "'', file or message")
    need("relative_file_paths", lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v), "a list of strings")
    need("ros_distro", lambda v: isinstance(v, str), "a string")
    need("custom_data", lambda v: v is None or (isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items())), "a string -> string mapping")
    topics_ok = need("topics_with_message_count", lambda v: isinstance(v, list), "a list")
    total = 0
    if topics_ok:
        names = set()
        for i, item in enumerate(info["topics_with_message_count"]):
            where = f"topics_with_message_count[{i}]"
            tm = item.get("topic_metadata") if isinstance(item, dict) else None
            if not isinstance(tm, dict):
                errors.append(f"{where}: needs topic_metadata")
                continue
            for key in ("name", "type", "serialization_format"):
                if not isinstance(tm.get(key), str) or not tm.get(key):
                    errors.append(f"{where}.topic_metadata.{key}: must be a non-empty string")
            if tm.get("serialization_format") not in (None, "cdr") and isinstance(tm.get("serialization_format"), str):
                errors.append(f"{where}: serialization_format {tm['serialization_format']!r} is not cdr")
            if not RIHS01.match(str(tm.get("type_description_hash", ""))):
                errors.append(f"{where}.topic_metadata.type_description_hash: not a RIHS01 hash")
            profiles = tm.get("offered_qos_profiles")
            if not isinstance(profiles, list):
                errors.append(f"{where}.topic_metadata.offered_qos_profiles: version 9 stores a list, got {type(profiles).__name__}")
            else:
                for j, q in enumerate(profiles):
                    errors += check_qos(q, f"{where}.offered_qos_profiles[{j}]")
            count = item.get("message_count")
            if not _is_int(count) or count < 0:
                errors.append(f"{where}.message_count: must be an integer >= 0")
            else:
                total += count
            key = (tm.get("name"), tm.get("type"))
            if key in names:
                errors.append(f"{where}: topic {key} listed twice")
            names.add(key)
        if _is_int(info.get("message_count")) and total != info["message_count"]:
            errors.append(f"message_count {info['message_count']} != sum over topics {total}")
    files_ok = need("files", lambda v: isinstance(v, list), "a list")
    if files_ok:
        file_total = 0
        for i, f in enumerate(info["files"]):
            where = f"files[{i}]"
            if not isinstance(f, dict) or not isinstance(f.get("path"), str):
                errors.append(f"{where}: needs a path")
                continue
            if not (isinstance(f.get("starting_time"), dict) and _is_int(f["starting_time"].get("nanoseconds_since_epoch"))):
                errors.append(f"{where}.starting_time: must be {{nanoseconds_since_epoch: int}}")
            if not (isinstance(f.get("duration"), dict) and _is_int(f["duration"].get("nanoseconds"))):
                errors.append(f"{where}.duration: must be {{nanoseconds: int}}")
            if not _is_int(f.get("message_count")):
                errors.append(f"{where}.message_count: must be an integer")
            else:
                file_total += f["message_count"]
        if _is_int(info.get("message_count")) and file_total != info["message_count"]:
            errors.append(f"message_count {info['message_count']} != sum over files {file_total}")
        paths = info.get("relative_file_paths") or []
        if sorted(paths) != sorted(f.get("path") for f in info["files"] if isinstance(f, dict)):
            errors.append("relative_file_paths and files[].path differ")
    storage = info.get("storage_identifier")
    suffix = STORAGE_SUFFIX.get(storage) if isinstance(storage, str) else None
    for p in info.get("relative_file_paths") or []:
        if suffix and not str(p).endswith(suffix):
            errors.append(f"{p}: a {storage} bag's files end with {suffix}")
        if bag_dir is not None and not (Path(bag_dir) / p).is_file():
            errors.append(f"{p}: file missing in {bag_dir}")
    return errors


def check_bag(bag_dir: str | Path) -> list[str]:
    """Errors of a bag directory's metadata.yaml ([] = a valid version-9 rosbag2 bag)."""
    path = Path(bag_dir) / "metadata.yaml"
    if not path.exists():
        return [f"{bag_dir}: no metadata.yaml"]
    try:
        metadata = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return [f"{path}: not YAML ({exc})"]
    return check_metadata_v9(metadata, Path(bag_dir))
