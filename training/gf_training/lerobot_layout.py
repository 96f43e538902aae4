"""The LeRobotDataset v3.0 layout we write and read: file paths, feature keys, codecs, the episode
record both directions share and LeRobot's statistics.

Separate from ``lerobot_writer`` and ``lerobot_reader`` so that both depend on one description
of the format (and not on each other); ``gf_training.lerobot_format`` describes the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_KEY = "observation.images.main"  # our one camera
STATE_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper_opening")
ROBOT_TYPE = "grinningface_sim"
DEFAULT_CODEC = "libsvtav1"
CODECS = {"libsvtav1": ("av1", {"crf": "30", "preset": "10"}), "h264": ("h264", {"crf": "18"})}
GOP = 2  # key frame interval
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
IMAGE_STATS_FRAMES = 16  # frames per episode sampled for the image statistics

# Episode columns for what LeRobot has no field for (read back by gf-data import).
GF_EPISODE_ID, GF_SUCCESS, GF_TRIAL = "gf/episode_id", "gf/success", "gf/trial"


@dataclass
class RobotEpisode:
    """One episode in array form (row t: observation at step t and the action taken)."""

    images: np.ndarray  # (T, H, W, 3) uint8
    state: np.ndarray  # (T, state_dim) float32
    actions: np.ndarray  # (T, action_dim) float32
    instruction: str
    episode_id: str = ""
    success: bool = True
    trial: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    @property
    def proprio(self) -> np.ndarray:
        """The state under the name the training data uses."""
        return self.state


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def feature_stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot's statistics of (N, dim) values: min, max, mean, std, count and quantiles."""
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    out = {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
           "std": v.std(0).tolist(), "count": [int(len(v))]}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(v, q, axis=0).tolist()
    return out


def image_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel statistics of uint8 frames scaled to [0, 1], shaped (3, 1, 1) like LeRobot's."""
    pixels = np.asarray(frames, dtype=np.float64).reshape(-1, 3) / 255.0
    flat = feature_stats(pixels)
    out = {k: [[[x]] for x in v] for k, v in flat.items() if k != "count"}
    out["count"] = [int(len(frames))]
    return out
