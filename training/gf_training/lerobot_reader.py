"""Reading LeRobot datasets (v3.0 and v2.1) with pyarrow and PyAV, no LeRobot needed:
``LeRobotDataset`` finds episodes' rows and frames, ``read_robot_episodes`` maps them onto our
embodiment.

Separate from writing: it also serves foreign datasets (other versions, image features stored
in parquet, other robots through ``gf_training.embodiments``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gf_training.lerobot_layout import (
    CHUNKS_SIZE,
    GF_EPISODE_ID,
    GF_SUCCESS,
    GF_TRIAL,
    IMAGE_KEY,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    RobotEpisode,
)


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
        # actions clipped to our action space; the manifest says how many values were
        state, actions, clipped = m.map_episode(rows[m.state.source], rows[m.action.source])
        yield RobotEpisode(
            images=ds.frames(ref, key), state=state, actions=actions,
            instruction=instruction, episode_id=str(ref.extra.get(GF_EPISODE_ID) or f"{Path(root).name}-{ref.episode_index:06d}"),
            success=bool(ref.extra.get(GF_SUCCESS, True)), trial=trial or None,
            extra={"lerobot_dataset": str(Path(root).resolve()), "lerobot_episode_index": ref.episode_index,
                   "embodiment": m.name, "clipped_action_values": clipped},
        )
