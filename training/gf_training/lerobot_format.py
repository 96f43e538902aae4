"""LeRobotDataset v3.0 in and out: export our demos, read (foreign) LeRobot datasets, import them.

Layout written and read (LeRobot's ``codebase_version`` v3.0)::

    OUT/meta/info.json                                   fps, features (dtype, shape, names), path templates
    OUT/meta/stats.json                                  per feature: min max mean std count q01 q10 q50 q90 q99
    OUT/meta/tasks.parquet                               one row per task string: task (the index), task_index
    OUT/meta/episodes/chunk-000/file-000.parquet         one row per episode: length, tasks, where its rows
                                                         and video frames are, per-episode stats
    OUT/data/chunk-000/file-000.parquet                  one row per frame: observation.state, action,
                                                         timestamp, frame_index, episode_index, index, task_index
    OUT/videos/<image key>/chunk-000/file-000.mp4        the frames of many episodes back to back

Several episodes share one data file and one video file (a new file starts past
``DATA_FILE_SIZE_MB`` / ``VIDEO_FILE_SIZE_MB``); an episode's video frames are the ones between
its ``from_timestamp`` and ``to_timestamp``. Videos are encoded with PyAV (FFmpeg), AV1 by
default like LeRobot (``libsvtav1``; ``h264`` for players without AV1), yuv420p, a key frame
every ``GOP`` frames so that training-time random access stays cheap.

Our demos map onto it directly: ``observation.state`` is the 7-D proprio (EE pose + gripper
opening), ``action`` the 7-D ``ee_delta_pose`` action, the task the instruction, and the episode
row keeps what LeRobot has no field for (``gf/episode_id``, ``gf/success``, ``gf/trial``: the
trial as JSON), so ``gf-data import`` gives back the same manifest entries.

Reading also accepts LeRobot v2.1 (one parquet / mp4 per episode, ``meta/*.jsonl``), the form
many community datasets (BridgeData, OXE ports) still have; ``gf_training.embodiments`` maps a
foreign robot's state and actions onto ours.

The parts: ``lerobot_layout`` (paths, keys, codecs, ``RobotEpisode``, statistics),
``lerobot_writer`` (``write_lerobot``), ``lerobot_reader`` (``LeRobotDataset``,
``read_robot_episodes``); this module converts our demos both ways and re-exports the names of
the others, so ``from gf_training import lerobot_format`` still reaches everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gf_training.lerobot_layout import (
    ACTION_KEY,
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    CODECS,
    DATA_FILE_SIZE_MB,
    DATA_PATH,
    DEFAULT_CODEC,
    EPISODES_PATH,
    GF_EPISODE_ID,
    GF_SUCCESS,
    GF_TRIAL,
    GOP,
    IMAGE_KEY,
    IMAGE_STATS_FRAMES,
    INFO_PATH,
    QUANTILES,
    ROBOT_TYPE,
    STATE_KEY,
    STATE_NAMES,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILE_SIZE_MB,
    VIDEO_PATH,
    RobotEpisode,
    feature_stats,
    image_stats,
)
from gf_training.lerobot_reader import LeRobotDataset, LeRobotEpisodeRef, read_robot_episodes
from gf_training.lerobot_writer import write_lerobot

__all__ = [
    "ACTION_KEY", "CHUNKS_SIZE", "CODEBASE_VERSION", "CODECS", "DATA_FILE_SIZE_MB", "DATA_PATH", "DEFAULT_CODEC",
    "EPISODES_PATH", "GF_EPISODE_ID", "GF_SUCCESS", "GF_TRIAL", "GOP", "IMAGE_KEY", "IMAGE_STATS_FRAMES", "INFO_PATH",
    "QUANTILES", "ROBOT_TYPE", "STATE_KEY", "STATE_NAMES", "STATS_PATH", "TASKS_PATH", "VIDEO_FILE_SIZE_MB", "VIDEO_PATH",
    "LeRobotDataset", "LeRobotEpisodeRef", "RobotEpisode", "demo_episodes", "export_demos", "feature_stats", "image_stats",
    "import_episodes", "import_lerobot", "load_lerobot_episodes", "read_robot_episodes", "write_lerobot",
]


# ---------------------------------------------------------------------------------------------
# our demos <-> LeRobot
# ---------------------------------------------------------------------------------------------


def demo_episodes(demo_dir: str | Path, include_failed: bool = False, include_incomplete: bool = False) -> Iterator[RobotEpisode]:
    """The episodes of one of our demo directories (manifest + bags)."""
    from gf_teleop.episodes import load_episode, read_manifest

    for entry in read_manifest(demo_dir):
        if (not entry.complete and not include_incomplete) or (not entry.success and not include_failed):
            continue
        ep = load_episode(demo_dir, entry)
        yield RobotEpisode(ep.images, ep.proprio, ep.actions, ep.instruction, entry.episode_id, entry.success,
                           entry.trial or None)


def export_demos(demo_dir: str | Path, out: str | Path, *, codec: str = DEFAULT_CODEC, include_failed: bool = False,
                 progress: bool = False) -> dict[str, Any]:
    """``gf-data export``: a demo directory -> LeRobotDataset v3.0."""
    from gf_bringup.constants import CONTROL_RATE_HZ

    return write_lerobot(demo_episodes(demo_dir, include_failed=include_failed), out, fps=CONTROL_RATE_HZ,
                         codec=codec, progress=progress)


def import_lerobot(root: str | Path, demo_dir: str | Path, mapping: Any | None = None, *, image_key: str | None = None,
                   operator: str = "lerobot", progress: bool = False) -> list:
    """``gf-data import``: a LeRobot dataset -> bags + manifest lines (``import_episodes``)."""
    return import_episodes(read_robot_episodes(root, mapping, image_key=image_key, progress=progress), demo_dir,
                           keys=("lerobot_dataset", "lerobot_episode_index"), operator=operator, source="lerobot-import",
                           success_source="lerobot dataset")


def import_episodes(episodes: Iterable[RobotEpisode], demo_dir: str | Path, *, keys: Sequence[str], operator: str,
                    source: str, success_source: str) -> list:
    """Robot episodes (LeRobot's, RLDS's) -> bags + manifest lines (``gf_teleop``'s writer).

    Episodes that carry a trial (our own exports) get it back; others get a placeholder trial
    (protocol ``Import``, unknown cards) with the dataset's instruction. The episode's ``extra``
    values under ``keys`` (the last one its index in the dataset) identify it: episodes already
    in the manifest are skipped, so an interrupted import resumes.
    """
    from gf_eval.trials import TrialSpec
    from gf_teleop import episodes as gf_episodes
    from gf_teleop.importer import upstream_trial, write_array_episode

    demo_dir = Path(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    done = {tuple(e.extra.get(k) for k in keys) for e in gf_episodes.read_manifest(demo_dir)}
    written = []
    for ep in episodes:
        if tuple(ep.extra[k] for k in keys) in done:
            continue
        if ep.trial:
            trial = TrialSpec.from_dict(ep.trial)
        else:
            trial = upstream_trial(int(ep.extra[keys[-1]]), ep.instruction, None, None)
        written.append(write_array_episode(
            demo_dir, images=ep.images, proprio=ep.state, actions=ep.actions, trial=trial, success=ep.success,
            operator=operator, source=source, episode_id=ep.episode_id,
            extra={**ep.extra, "instruction": ep.instruction}, outcome={"success_source": success_source},
        ))
    return written


def load_lerobot_episodes(roots: Sequence[str | Path], mapping: Any | None, image_size: int | None,
                          progress: bool = False, image_crop: Sequence[float] | None = None) -> list:
    """Training episodes (``gf_training.episodes.DecodedEpisode``, images resized to the model's
    input) of LeRobot datasets, or RLDS/TFDS ones (``gf_training.rlds_format``: a directory with
    ``features.json`` and ``dataset_info.json``; its train split), in our embodiment: the same
    windows, normalisation and collation as demo directories then apply."""
    from gf_training.episodes import decode
    from gf_training.rlds_format import is_rlds_dir, read_rlds_episodes

    episodes = []
    for root in roots:
        reader = read_rlds_episodes if is_rlds_dir(root) else read_robot_episodes
        for ep in reader(root, mapping, progress=progress):
            episodes.append(decode(ep, image_size, episode_id=ep.episode_id, trial=ep.trial, image_crop=image_crop))
    if not episodes:
        raise ValueError(f"no episodes in {', '.join(map(str, roots))}")
    return episodes
