"""Episodes from arrays into the bag + manifest format, and the upstream episode-folder importer.

``write_array_episode`` writes an episode given as arrays (images, proprio, actions) as the same
lock-step topics the simulated graph produces (trial, clock, camera, EE state, episode status,
one horizon-1 action chunk per step), so ``load_episode``, the replay tools and the statistics
treat it exactly like a recorded one.

Upstream GrinningFace episode folders (one per episode, named by number)::

    SRC/<n>/images/primary_image/<t>.png   camera frame of step t
    SRC/<n>/action.npy                     (T, 7) actions, same ee_delta_pose convention
    SRC/<n>/<proprio>.npy                  (T, 7) proprio (any other .npy, e.g. left_arm_poseuler_arm.npy)
    SRC/<n>/task_instruction.txt           the instruction
    SRC/generation_records.csv             optional: per episode success, card descriptions, target

Upstream saves no card positions; cards are placed at the nominal slots and their emojis found
by description in an emoji split (``--split``), else recorded as ``unknown``.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gf_bringup.constants import CONTROL_PERIOD_NS
from gf_eval.action_space import EE_DELTA_POSE
from gf_eval.trials import DEFAULT_GEOMETRY, CardSpec, TrialSpec
from gf_teleop import episodes as ep
from gf_teleop.recording import EpisodeRecording, unique_episode_id


def _stamp(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def ee_state_msg(proprio: np.ndarray, stamp_ns: int, opening_max: float = 0.08):
    """gf_interfaces/EeState from a 7-D proprio row (xyz, rpy, gripper opening / max)."""
    from scipy.spatial.transform import Rotation

    from gf_interfaces.msg import EeState

    p = np.asarray(proprio, dtype=np.float64)
    msg = EeState()
    msg.header.stamp = _stamp(stamp_ns)
    msg.header.frame_id = "base_link"
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p[:3])
    q = Rotation.from_euler("xyz", p[3:6]).as_quat()
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = (float(v) for v in q)
    msg.rpy = [float(v) for v in p[3:6]]
    msg.gripper_opening = float(p[6] * opening_max)
    msg.gripper_opening_max = float(opening_max)
    msg.proprio = [float(v) for v in p]
    return msg


def chunk_msg(action: np.ndarray, trial_id: str, step: int, stamp_ns: int):
    """A horizon-1 gf_interfaces/ActionChunk."""
    import array

    from gf_interfaces.msg import ActionChunk

    msg = ActionChunk()
    msg.header.stamp = _stamp(stamp_ns)
    msg.header.frame_id = "base_link"
    msg.trial_id = trial_id
    msg.step_index = step
    msg.horizon = 1
    msg.execute_steps = 0
    msg.action_dim = EE_DELTA_POSE.dim
    msg.action_space = EE_DELTA_POSE.name
    msg.data = array.array("f", np.asarray(action, dtype=np.float32).tobytes())
    return msg


def write_array_episode(
    demo_dir: str | Path,
    *,
    images: np.ndarray,
    proprio: np.ndarray,
    actions: np.ndarray,
    trial: TrialSpec,
    success: bool,
    operator: str = "",
    source: str = "upstream-import",
    episode_id: str | None = None,
    outcome: dict | None = None,
    start_ns: int = 1_000_000_000,
    extra: dict | None = None,
) -> ep.EpisodeEntry:
    """Write one episode given as arrays (row t: observation and action of step t)."""
    from rclpy.serialization import serialize_message
    from rosgraph_msgs.msg import Clock

    from gf_bringup.images import image_to_msg
    from gf_eval.ros_msgs import trial_to_msg
    from gf_interfaces.msg import EpisodeStatus

    images = np.asarray(images, dtype=np.uint8)
    proprio = np.asarray(proprio, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32)
    n = len(actions)
    if not (len(images) == len(proprio) == n) or n == 0:
        raise ValueError(f"need as many images, proprio rows and actions (> 0): {len(images)}, {len(proprio)}, {n}")
    rec = EpisodeRecording(Path(demo_dir), unique_episode_id(demo_dir, episode_id or trial.trial_id), trial=trial,
                           operator=operator, source=source, extra=dict(extra or {})).open()
    try:
        t = start_ns
        rec.write(ep.TRIAL, serialize_message(trial_to_msg(trial, _stamp(start_ns))), t)
        for k in range(n + 1):
            stamp = start_ns + k * CONTROL_PERIOD_NS
            t = stamp
            rec.write(ep.CLOCK, serialize_message(Clock(clock=_stamp(stamp))), t + 1)
            if k < n:
                rec.write(ep.IMAGE, serialize_message(image_to_msg(images[k], _stamp(stamp))), t + 2)
                rec.write(ep.EE_STATE, serialize_message(ee_state_msg(proprio[k], stamp)), t + 3)
            status = EpisodeStatus()
            status.header.stamp = _stamp(stamp)
            status.trial_id = trial.trial_id
            status.step = k
            status.done = k == n
            status.reason = ("success" if success else "timeout") if k == n else "running"
            status.placed_card = -1
            status.success = bool(success) and k == n
            status.chunks_executed = k
            rec.write(ep.EPISODE_STATUS, serialize_message(status), t + 4)
            if k < n:
                rec.write(ep.ACTION_CHUNK, serialize_message(chunk_msg(actions[k], trial.trial_id, k, stamp)), t + CONTROL_PERIOD_NS // 2)
        return rec.finish(success=success, length=n, complete=True,
                          outcome={"reason": "success" if success else "unknown", **(outcome or {})})
    except BaseException:
        rec.discard()
        raise


# --- upstream -------------------------------------------------------------------------------


@dataclass
class UpstreamEpisode:
    folder: Path
    number: int
    images: list[Path]
    actions: np.ndarray
    proprio: np.ndarray
    instruction: str


def find_upstream_episodes(src: Path) -> list[Path]:
    """Episode folders of an upstream dataset directory, in numeric order."""
    src = Path(src)
    if (src / "action.npy").exists():
        return [src]
    folders = [p for p in src.iterdir() if p.is_dir() and (p / "action.npy").exists()]
    return sorted(folders, key=lambda p: (int(p.name) if p.name.isdigit() else 1 << 30, p.name))


def read_upstream_episode(folder: Path) -> UpstreamEpisode:
    """One upstream episode folder (arrays are cut to the shortest of images, proprio, actions)."""
    folder = Path(folder)
    frames = folder / "images" / "primary_image"
    images = sorted((p for p in frames.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not images:
        raise ValueError(f"{folder}: no images/primary_image/<t>.png")
    if [int(p.stem) for p in images] != list(range(len(images))):
        raise ValueError(f"{folder}: image numbers are not 0..{len(images) - 1}")
    actions = np.load(folder / "action.npy").astype(np.float32)
    others = sorted(p for p in folder.glob("*.npy") if p.name != "action.npy")
    if not others:
        raise ValueError(f"{folder}: no proprio .npy next to action.npy")
    proprio = np.load(others[0]).astype(np.float32)
    for name, arr in (("action.npy", actions), (others[0].name, proprio)):
        if arr.ndim != 2 or arr.shape[1] != 7:
            raise ValueError(f"{folder}/{name}: expected (T, 7), got {arr.shape}")
    text_path = folder / "task_instruction.txt"
    instruction = text_path.read_text(encoding="utf-8").strip() if text_path.exists() else ""
    number = int(folder.name) if folder.name.isdigit() else 0
    return UpstreamEpisode(folder, number, images, actions, proprio, instruction)


def read_generation_records(src: Path) -> dict[int, dict]:
    """Upstream's generation_records.csv, keyed by episode number (1-based like the folders)."""
    path = Path(src) / "generation_records.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # Row i describes episode folder i + 1 (upstream numbers folders from 1).
    return {i + 1: row for i, row in enumerate(rows)}


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def upstream_trial(number: int, instruction: str, record: dict | None, splits) -> TrialSpec:
    """A TrialSpec for an upstream episode: known emojis where the split resolves them."""
    by_text = {}
    if splits is not None:
        for entries in splits.splits.values():
            for e in entries:
                by_text.setdefault(e.name.lower(), e)
                by_text.setdefault(e.description.lower(), e)
    g = DEFAULT_GEOMETRY
    descs = [str((record or {}).get(f"card_{i}", "")).strip() for i in range(3)]
    cards = []
    for i, desc in enumerate(descs):
        e = by_text.get(desc.lower()) if desc else None
        cards.append(CardSpec(e.id if e else "unknown", e.char if e else "", e.name if e else desc,
                              e.description if e else desc, g.card_x, g.card_ys[i]))
    target = int(float(record["target"])) if record and str(record.get("target", "")).strip() else -1
    if target not in (0, 1, 2):
        # Without a record, the target is the card whose description the instruction names.
        target = next((i for i, c in enumerate(cards) if c.description and c.description.lower() in instruction.lower()), 0)
    cube = g.cube_center
    if record and record.get("cube_position"):
        nums = [float(v) for v in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", record["cube_position"])]
        if len(nums) >= 2:
            cube = (round(nums[0], 6), round(nums[1], 6))
    return TrialSpec(
        protocol="Import", index=number, base_seed=0, seed=number, split_name=splits.name if splits else "",
        split_hash=splits.hash if splits else "", cards=tuple(cards), target_index=target, cube_xy=tuple(cube),
        cube_yaw=0.0, instruction=instruction,
    )


def import_upstream(src: str | Path, demo_dir: str | Path, splits=None, operator: str = "upstream",
                    assume_success: bool = False, progress: bool = True) -> list[ep.EpisodeEntry]:
    """Convert every upstream episode folder under ``src`` into bags + manifest lines in ``demo_dir``.

    Episodes already imported (same source folder in the manifest) are skipped, so an interrupted
    import resumes. Success comes from generation_records.csv, else ``assume_success``.
    """
    from PIL import Image

    src, demo_dir = Path(src), Path(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    folders = find_upstream_episodes(src)
    if not folders:
        raise ValueError(f"{src}: no upstream episode folders (<n>/action.npy)")
    records = read_generation_records(src if folders[0] != src else src.parent)
    done = {e.extra.get("imported_from") for e in ep.read_manifest(demo_dir)}
    out = []
    iterator = folders
    if progress:
        from tqdm import tqdm

        iterator = tqdm(folders, desc="import", unit="ep", file=sys.stderr)
    for folder in iterator:
        if str(folder.resolve()) in done:
            continue
        up = read_upstream_episode(folder)
        n = min(len(up.images), len(up.actions), len(up.proprio))
        record = records.get(up.number)
        trial = upstream_trial(up.number, up.instruction, record, splits)
        success = _truthy(record["success"]) if record and "success" in record else assume_success
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in up.images[:n]])
        extra = {"imported_from": str(folder.resolve()), "instruction": up.instruction,
                 "upstream_lengths": {"images": len(up.images), "actions": len(up.actions), "proprio": len(up.proprio)}}
        out.append(write_array_episode(
            demo_dir, images=images, proprio=up.proprio[:n], actions=up.actions[:n], trial=trial, success=success,
            operator=operator, source="upstream-import", episode_id=f"upstream-{folder.name}", extra=extra,
            outcome={"success_source": "generation_records.csv" if record and "success" in record else "assumed"},
        ))
    return out
