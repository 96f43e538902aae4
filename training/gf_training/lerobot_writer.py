"""Writing a LeRobotDataset v3.0 directory (``write_lerobot``): parquet data and episode files,
mp4 videos shared by many episodes, tasks, statistics and ``info.json``.

Separate from reading: it needs PyAV's encoder and builds the files in one pass, while the
reader only looks files up (and also accepts v2.1).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from gf_eval.action_space import EE_DELTA_POSE
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


class _VideoWriter:
    """Episodes' frames appended to one mp4 (PyAV), frame i shown at i / fps."""

    def __init__(self, path: Path, fps: int, width: int, height: int, codec: str):
        import av

        # SVT-AV1 prints its whole configuration at info level for every file; errors only.
        os.environ.setdefault("SVT_LOG", "1")
        path.parent.mkdir(parents=True, exist_ok=True)
        encoder, _ = CODECS[codec]
        self.path = path
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=fps, options=dict(CODECS[codec][1], g=str(GOP)))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = Fraction(1, fps)
        self.frames = 0
        self.codec_name = encoder

    def append(self, images: np.ndarray) -> tuple[int, int]:
        """Write frames; (first, end) frame numbers within this file."""
        import av

        first = self.frames
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.frames += 1
        return first, self.frames

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6 if self.path.exists() else 0.0

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def _file_location(file_number: int) -> dict[str, int]:
    return {"chunk_index": file_number // CHUNKS_SIZE, "file_index": file_number % CHUNKS_SIZE}


def _pandas_index_metadata(index_column: str, columns: Sequence[tuple[str, str]]) -> bytes:
    """The pandas schema metadata that makes ``pandas.read_parquet`` restore ``index_column`` as
    the DataFrame index (LeRobot looks tasks up by their string index)."""
    cols = [{"name": name, "field_name": name, "pandas_type": ptype, "numpy_type": "object" if ptype == "unicode" else ptype,
             "metadata": None} for name, ptype in columns]
    return json.dumps({"index_columns": [index_column], "column_indexes": [], "columns": cols,
                       "creator": {"library": "pyarrow"}, "pandas_version": "2.2.0"}).encode()


def write_lerobot(
    episodes: Iterator[RobotEpisode] | Sequence[RobotEpisode],
    out: str | Path,
    *,
    fps: int,
    robot_type: str = ROBOT_TYPE,
    image_key: str = IMAGE_KEY,
    state_names: Sequence[str] = STATE_NAMES,
    action_names: Sequence[str] = EE_DELTA_POSE.names,
    codec: str = DEFAULT_CODEC,
    progress: bool = False,
) -> dict[str, Any]:
    """Write episodes as a LeRobotDataset v3.0 directory; returns ``info.json``'s content."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, not {codec!r}")
    out = Path(out)
    if (out / INFO_PATH).exists():
        raise FileExistsError(f"{out} already holds a LeRobot dataset")
    tasks: dict[str, int] = {}
    episode_rows: list[dict[str, Any]] = []
    all_state, all_actions, image_samples = [], [], []
    data_file = video_file = 0
    data_rows: list[dict[str, Any]] = []
    data_bytes = 0
    video: _VideoWriter | None = None
    shape: tuple[int, int] | None = None
    index = 0
    state_dim = action_dim = 0

    def flush_data() -> None:
        nonlocal data_rows, data_bytes, data_file
        if not data_rows:
            return
        table = pa.table({
            STATE_KEY: pa.array([r[STATE_KEY] for r in data_rows], pa.list_(pa.float32(), state_dim)),
            ACTION_KEY: pa.array([r[ACTION_KEY] for r in data_rows], pa.list_(pa.float32(), action_dim)),
            **{k: pa.array([r[k] for r in data_rows], pa.float32() if k == "timestamp" else pa.int64())
               for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")},
        })
        path = out / DATA_PATH.format(**_file_location(data_file))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        data_rows, data_bytes, data_file = [], 0, data_file + 1

    iterator = episodes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(episodes, desc="export", unit="ep", file=sys.stderr)
    for number, ep in enumerate(iterator):
        images = np.asarray(ep.images, dtype=np.uint8)
        state = np.asarray(ep.state, dtype=np.float32)
        actions = np.asarray(ep.actions, dtype=np.float32)
        n = ep.length
        if not (len(images) == len(state) == n) or n == 0:
            raise ValueError(f"episode {ep.episode_id}: {len(images)} images, {len(state)} states, {n} actions")
        if shape is None:
            shape = images.shape[1:3]
            state_dim, action_dim = state.shape[1], actions.shape[1]
            if shape[0] % 2 or shape[1] % 2:
                raise ValueError(f"yuv420p video needs even frame sizes, got {shape}")
        elif images.shape[1:3] != shape or state.shape[1] != state_dim or actions.shape[1] != action_dim:
            raise ValueError(f"episode {ep.episode_id}: shapes differ from the first episode's")
        task_index = tasks.setdefault(ep.instruction, len(tasks))
        if video is None:
            video = _VideoWriter(out / VIDEO_PATH.format(video_key=image_key, **_file_location(video_file)), fps,
                                 shape[1], shape[0], codec)
        first, end = video.append(images)
        data_loc = _file_location(data_file)
        for t in range(n):
            data_rows.append({STATE_KEY: state[t], ACTION_KEY: actions[t], "timestamp": t / fps, "frame_index": t,
                              "episode_index": number, "index": index + t, "task_index": task_index})
        data_bytes += state.nbytes + actions.nbytes + n * 40
        ep_stats = {STATE_KEY: feature_stats(state), ACTION_KEY: feature_stats(actions)}
        sample = images[np.linspace(0, n - 1, min(n, IMAGE_STATS_FRAMES)).astype(int)]
        image_samples.append(sample)
        ep_stats[image_key] = image_stats(sample)
        row = {
            "episode_index": number, "tasks": [ep.instruction], "length": n,
            "data/chunk_index": data_loc["chunk_index"], "data/file_index": data_loc["file_index"],
            "dataset_from_index": index, "dataset_to_index": index + n,
            f"videos/{image_key}/chunk_index": _file_location(video_file)["chunk_index"],
            f"videos/{image_key}/file_index": _file_location(video_file)["file_index"],
            f"videos/{image_key}/from_timestamp": first / fps, f"videos/{image_key}/to_timestamp": end / fps,
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
            GF_EPISODE_ID: ep.episode_id, GF_SUCCESS: bool(ep.success), GF_TRIAL: json.dumps(ep.trial or {}),
        }
        for feature, stats in ep_stats.items():
            for stat, value in stats.items():
                row[f"stats/{feature}/{stat}"] = value
        episode_rows.append(row)
        all_state.append(state)
        all_actions.append(actions)
        index += n
        if data_bytes > DATA_FILE_SIZE_MB * 1e6:
            flush_data()
        if video.size_mb() > VIDEO_FILE_SIZE_MB:
            video.close()
            video, video_file = None, video_file + 1
    if not episode_rows:
        raise ValueError("no episodes to export")
    flush_data()
    if video is not None:
        video.close()
    assert shape is not None

    (out / "meta").mkdir(parents=True, exist_ok=True)
    # Episode rows: plain columns, with the nested per-episode statistics stored as lists.
    ep_path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), ep_path)
    task_table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                           "task": pa.array(list(tasks.keys()), pa.string())})
    task_table = task_table.replace_schema_metadata(
        {b"pandas": _pandas_index_metadata("task", [("task_index", "int64"), ("task", "unicode")])})
    pq.write_table(task_table, out / TASKS_PATH)
    frames = np.arange(index)
    stats = {
        STATE_KEY: feature_stats(np.concatenate(all_state)),
        ACTION_KEY: feature_stats(np.concatenate(all_actions)),
        image_key: image_stats(np.concatenate(image_samples)),
        "timestamp": feature_stats(np.concatenate([np.arange(r["length"]) / fps for r in episode_rows])[:, None]),
        "frame_index": feature_stats(np.concatenate([np.arange(r["length"]) for r in episode_rows])[:, None]),
        "episode_index": feature_stats(np.repeat(np.arange(len(episode_rows)), [r["length"] for r in episode_rows])[:, None]),
        "index": feature_stats(frames[:, None]),
        "task_index": feature_stats(np.concatenate([[tasks[r["tasks"][0]]] * r["length"] for r in episode_rows])[:, None]),
    }
    (out / STATS_PATH).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    height, width = shape
    scalar = {"shape": [1], "names": None}
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episode_rows),
        "total_frames": index,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILE_SIZE_MB,
        "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
        "fps": fps,
        "splits": {"train": f"0:{len(episode_rows)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": {
            image_key: {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                        "info": {"video.height": height, "video.width": width, "video.codec": CODECS[codec][0],
                                 "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                 "video.channels": 3, "has_audio": False}},
            STATE_KEY: {"dtype": "float32", "shape": [state_dim], "names": list(state_names)},
            ACTION_KEY: {"dtype": "float32", "shape": [action_dim], "names": list(action_names)},
            "timestamp": {"dtype": "float32", **scalar},
            "frame_index": {"dtype": "int64", **scalar},
            "episode_index": {"dtype": "int64", **scalar},
            "index": {"dtype": "int64", **scalar},
            "task_index": {"dtype": "int64", **scalar},
        },
    }
    (out / INFO_PATH).write_text(json.dumps(info, indent=4) + "\n", encoding="utf-8")
    return info
