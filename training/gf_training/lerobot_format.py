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
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from gf_eval.action_space import EE_DELTA_POSE

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


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


@dataclass
class LeRobotEpisodeRef:
    """Where one episode of a LeRobot dataset lives."""

    episode_index: int
    length: int
    tasks: list[str]
    data_path: Path
    from_index: int | None  # rows of a shared data file (v3); None: the whole file (v2.1)
    videos: dict[str, tuple[Path, float]]  # image key -> (mp4, timestamp of the episode's first frame)
    extra: dict[str, Any]


class LeRobotDataset:
    """A LeRobotDataset directory (v3.0 or v2.1) read with pyarrow and PyAV, no LeRobot needed."""

    def __init__(self, root: str | Path):
        import pyarrow.parquet as pq

        self.root = Path(root)
        if not (self.root / INFO_PATH).exists():
            raise FileNotFoundError(f"{self.root}: no {INFO_PATH} (not a LeRobot dataset)")
        self.info = json.loads((self.root / INFO_PATH).read_text(encoding="utf-8"))
        self.version = str(self.info.get("codebase_version", ""))
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        stats_path = self.root / STATS_PATH
        self.stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else {}
        if self.version.startswith("v3"):
            tasks = pq.read_table(self.root / TASKS_PATH).to_pylist()
            self.tasks = {int(r["task_index"]): str(r.get("task", r.get("__index_level_0__", ""))) for r in tasks}
            self.episodes = self._episodes_v3()
        elif self.version.startswith("v2"):
            self.tasks = {int(r["task_index"]): str(r["task"]) for r in self._jsonl("meta/tasks.jsonl")}
            self.episodes = self._episodes_v2()
        else:
            raise ValueError(f"{self.root}: LeRobot codebase_version {self.version!r} is not supported (v2.x, v3.x)")

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]

    def _jsonl(self, rel: str) -> list[dict]:
        path = self.root / rel
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _episodes_v3(self) -> list[LeRobotEpisodeRef]:
        import pyarrow.parquet as pq

        refs = []
        for path in sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
            for row in pq.read_table(path).to_pylist():
                loc = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
                videos = {}
                for key in self.image_keys:
                    if self.features[key]["dtype"] == "video":
                        vloc = {"chunk_index": row[f"videos/{key}/chunk_index"], "file_index": row[f"videos/{key}/file_index"]}
                        videos[key] = (self.root / self.info["video_path"].format(video_key=key, **vloc),
                                       float(row[f"videos/{key}/from_timestamp"]))
                extra = {k: v for k, v in row.items() if k.startswith("gf/")}
                refs.append(LeRobotEpisodeRef(int(row["episode_index"]), int(row["length"]), list(row.get("tasks") or []),
                                              self.root / self.info["data_path"].format(**loc),
                                              int(row["dataset_from_index"]), videos, extra))
        return sorted(refs, key=lambda r: r.episode_index)

    def _episodes_v2(self) -> list[LeRobotEpisodeRef]:
        chunks = int(self.info.get("chunks_size", CHUNKS_SIZE))
        refs = []
        for row in self._jsonl("meta/episodes.jsonl"):
            e = int(row["episode_index"])
            loc = {"episode_chunk": e // chunks, "episode_index": e}
            videos = {key: (self.root / self.info["video_path"].format(video_key=key, **loc), 0.0)
                      for key in self.image_keys if self.features[key]["dtype"] == "video"}
            refs.append(LeRobotEpisodeRef(e, int(row["length"]), list(row.get("tasks") or []),
                                          self.root / self.info["data_path"].format(**loc), None, videos, {}))
        return sorted(refs, key=lambda r: r.episode_index)

    def rows(self, ref: LeRobotEpisodeRef, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """The episode's values of ``columns`` (in frame order)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(ref.data_path, columns=sorted(set(columns) | {"episode_index", "frame_index"}))
        table = table.filter(pc.equal(table["episode_index"], ref.episode_index))
        table = table.sort_by("frame_index")
        if table.num_rows != ref.length:
            raise ValueError(f"{ref.data_path}: episode {ref.episode_index} has {table.num_rows} rows, metadata says {ref.length}")
        import pyarrow as pa

        out: dict[str, np.ndarray] = {}
        for c in columns:
            col = table[c].combine_chunks()
            if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
                out[c] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
            elif pa.types.is_struct(col.type) or pa.types.is_string(col.type):
                out[c] = np.asarray(col.to_pylist(), dtype=object)
            else:
                out[c] = col.to_numpy(zero_copy_only=False)
        return out

    def frames(self, ref: LeRobotEpisodeRef, key: str) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of one camera for an episode."""
        if self.features[key]["dtype"] == "image":
            return self._image_frames(ref, key)
        import av

        path, start = ref.videos[key]
        first = int(round(start * self.fps))
        out: list[np.ndarray] = []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            # Seek to the key frame at or before the episode's first frame, then decode forward.
            if first > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                number = int(round(float(frame.pts * stream.time_base) * self.fps))
                if number < first:
                    continue
                if number >= first + ref.length:
                    break
                out.append(frame.to_ndarray(format="rgb24"))
        if len(out) != ref.length:
            raise ValueError(f"{path}: {len(out)} frames for episode {ref.episode_index} of length {ref.length}")
        return np.stack(out)

    def _image_frames(self, ref: LeRobotEpisodeRef, key: str) -> np.ndarray:
        import io

        from PIL import Image

        cells = self.rows(ref, [key])[key]
        return np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"])).convert("RGB")) for c in cells])

    def instruction(self, ref: LeRobotEpisodeRef, task_index: int | None) -> str:
        if task_index is not None and task_index in self.tasks:
            return self.tasks[task_index]
        return ref.tasks[0] if ref.tasks else ""


def read_robot_episodes(
    root: str | Path,
    mapping: Any | None = None,
    *,
    image_key: str | None = None,
    progress: bool = False,
) -> Iterator[RobotEpisode]:
    """Episodes of a LeRobot dataset in our embodiment (``mapping``: anything
    ``gf_training.embodiments.load_mapping`` takes; default: the dataset's own state and action,
    which must then already be ours)."""
    from gf_training.embodiments import load_mapping

    ds = LeRobotDataset(root)
    m = load_mapping(mapping)
    key = image_key or m.image_key or (IMAGE_KEY if IMAGE_KEY in ds.image_keys else (ds.image_keys or [None])[0])
    if key is None or key not in ds.features:
        raise ValueError(f"{root}: image feature {key!r} not found; it has {ds.image_keys}")
    iterator: Any = ds.episodes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(ds.episodes, desc=Path(root).name, unit="ep", file=sys.stderr)
    for ref in iterator:
        columns = sorted({m.state.source, m.action.source, "task_index", *([m.instruction_key] if m.instruction_key else [])})
        rows = ds.rows(ref, [c for c in columns if c in ds.features or c == "task_index"])
        if m.instruction_key:
            instruction = str(rows[m.instruction_key][0])
        else:
            instruction = ds.instruction(ref, int(rows["task_index"][0]) if "task_index" in rows else None)
        trial = json.loads(ref.extra[GF_TRIAL]) if ref.extra.get(GF_TRIAL) else None
        mapped = m.action.apply(rows[m.action.source])
        # Our executors refuse chunks outside the action space (and the bag reader with them), so
        # a foreign robot's larger steps are clipped to it; the manifest says how many values were.
        actions = EE_DELTA_POSE.clip(mapped).astype(np.float32)
        yield RobotEpisode(
            images=ds.frames(ref, key), state=m.state.apply(rows[m.state.source]), actions=actions,
            instruction=instruction, episode_id=str(ref.extra.get(GF_EPISODE_ID) or f"{Path(root).name}-{ref.episode_index:06d}"),
            success=bool(ref.extra.get(GF_SUCCESS, True)), trial=trial or None,
            extra={"lerobot_dataset": str(Path(root).resolve()), "lerobot_episode_index": ref.episode_index,
                   "embodiment": m.name, "clipped_action_values": int((actions != mapped).sum())},
        )


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
    """``gf-data import``: a LeRobot dataset -> bags + manifest lines (``gf_teleop``'s writer).

    Episodes that carry a trial (our own exports) get it back; others get a placeholder trial
    (protocol ``Import``, unknown cards) with the dataset's instruction. Episodes already imported
    (same dataset and episode index in the manifest) are skipped, so an interrupted import resumes.
    """
    from gf_eval.trials import TrialSpec
    from gf_teleop import episodes as gf_episodes
    from gf_teleop.importer import upstream_trial, write_array_episode

    demo_dir = Path(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    done = {(e.extra.get("lerobot_dataset"), e.extra.get("lerobot_episode_index")) for e in gf_episodes.read_manifest(demo_dir)}
    written = []
    for ep in read_robot_episodes(root, mapping, image_key=image_key, progress=progress):
        if (ep.extra["lerobot_dataset"], ep.extra["lerobot_episode_index"]) in done:
            continue
        if ep.trial:
            trial = TrialSpec.from_dict(ep.trial)
        else:
            trial = upstream_trial(int(ep.extra["lerobot_episode_index"]), ep.instruction, None, None)
        written.append(write_array_episode(
            demo_dir, images=ep.images, proprio=ep.state, actions=ep.actions, trial=trial, success=ep.success,
            operator=operator, source="lerobot-import", episode_id=ep.episode_id,
            extra={**ep.extra, "instruction": ep.instruction}, outcome={"success_source": "lerobot dataset"},
        ))
    return written


def load_lerobot_episodes(roots: Sequence[str | Path], mapping: Any | None, image_size: int | None,
                          progress: bool = False, image_crop: Sequence[float] | None = None) -> list:
    """Training episodes (``gf_training.episodes.DecodedEpisode``, images resized to the model's
    input) of LeRobot datasets, in our embodiment: the same windows, normalisation and collation
    as demo directories then apply."""
    from gf_training.episodes import decode

    episodes = []
    for root in roots:
        for ep in read_robot_episodes(root, mapping, progress=progress):
            episodes.append(decode(ep, image_size, episode_id=ep.episode_id, trial=ep.trial, image_crop=image_crop))
    if not episodes:
        raise ValueError(f"no episodes in {', '.join(map(str, roots))}")
    return episodes
