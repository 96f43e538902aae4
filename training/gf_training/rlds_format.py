"""RLDS / TFDS robot datasets (BridgeData v2, Open X-Embodiment) read without TensorFlow.

A TFDS dataset version directory (e.g. ``bridge_dataset/1.0.0``)::

    dataset_info.json      name, splits (shard lengths, file name template), fileFormat
    features.json          the feature tree: FeaturesDict, Dataset (the steps), Tensor, Image, Text...
    bridge_dataset-train.tfrecord-00000-of-01024 ...   TFRecord shards, one tf.train.Example per episode

An episode's Example has one feature per leaf of the tree, named by its "/"-joined path
(``steps/action``, ``steps/observation/image_0``, ``episode_metadata/file_path``). Leaves under
``steps`` hold all T steps flattened: ``steps/action`` T*7 floats (reshaped by the declared
shape), an image T encoded JPEG/PNG images, text T UTF-8 strings, bools and ints T int64s.
Records and their checksums are read by ``gf_training.tfrecord``.

``read_rlds_episodes`` yields the ``RobotEpisode``s ``lerobot_reader.read_robot_episodes`` does,
mapped by the same ``gf_training.embodiments`` mappings, whose LeRobot-style keys find the RLDS
leaves (``observation.state`` -> ``steps/observation/state``, ``action`` -> ``steps/action``,
``observation.images.image_0`` -> ``steps/observation/image_0``; RLDS paths work too). So
``import_rlds`` goes through ``lerobot_format.import_episodes`` like ``import_lerobot``, and
``data.lerobot_dirs`` trains on RLDS directories directly. Only ``tfrecord`` shards are read
(not ``array_record``), and tensors stored as plain values (``encoding: none``).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gf_training.lerobot_layout import RobotEpisode
from gf_training.tfrecord import feature_values, parse_example, read_records

INFO_FILE, FEATURES_FILE = "dataset_info.json", "features.json"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # TFDS's default shard names
# Per-step instruction, looked for when the mapping names none (BridgeData/most OXE; RT-1 "fractal").
INSTRUCTION_KEYS = ("steps/language_instruction", "steps/observation/natural_language_instruction")


@dataclass(frozen=True)
class Leaf:
    """One leaf of the feature tree: what a feature of the episode's Example holds."""

    path: str  # "/"-joined, e.g. steps/observation/image_0
    kind: str  # tensor | image | text | unsupported
    dtype: str
    shape: tuple[int | None, ...]  # of one step (per_step) or of the episode's one value
    encoding: str = ""  # image: its encodingFormat; tensor: none | bytes | zlib; unsupported: the class
    per_step: bool = False


def is_rlds_dir(path: str | Path) -> bool:
    return (Path(path) / FEATURES_FILE).is_file() and (Path(path) / INFO_FILE).is_file()


def version_hint(path: str | Path) -> str:
    """"; its version directories: 1.0.0" when given a dataset's directory instead of a version's."""
    inner = sorted(p.name for p in Path(path).glob("*/") if is_rlds_dir(p)) if Path(path).is_dir() else []
    return f"; its version directories: {', '.join(inner)}" if inner else ""


def _dims(shape: dict | None) -> tuple[int | None, ...]:
    return tuple(None if int(d) < 0 else int(d) for d in (shape or {}).get("dimensions", []))


def parse_features(spec: dict) -> dict[str, Leaf]:
    """features.json -> its leaves by path."""
    if "pythonClassName" not in spec:
        raise ValueError("features.json is not in the TFDS >= 4 form (pythonClassName/featuresDict); "
                         "the legacy type/content form is not supported")
    leaves: dict[str, Leaf] = {}
    _walk(spec, "", False, leaves)
    return leaves


def _walk(spec: dict, path: str, per_step: bool, out: dict[str, Leaf]) -> None:
    if "featuresDict" in spec:
        for name, sub in (spec["featuresDict"].get("features") or {}).items():
            _walk(sub, f"{path}/{name}" if path else name, per_step, out)
    elif "sequence" in spec and not per_step:  # Dataset (RLDS steps) or Sequence: values of all steps
        _walk(spec["sequence"]["feature"], path, True, out)
    elif "image" in spec:
        im = spec["image"]
        out[path] = Leaf(path, "image", str(im.get("dtype", "uint8")), _dims(im.get("shape")),
                         str(im.get("encodingFormat") or ""), per_step)
    elif "tensor" in spec:  # Tensor, Scalar
        t = spec["tensor"]
        dtype = str(t.get("dtype", ""))
        out[path] = Leaf(path, "text" if dtype == "string" else "tensor", dtype, _dims(t.get("shape")),
                         str(t.get("encoding") or "none"), per_step)
    elif "text" in spec:
        out[path] = Leaf(path, "text", "string", (), "", per_step)
    elif "classLabel" in spec:
        out[path] = Leaf(path, "tensor", "int64", (), "none", per_step)
    else:  # nested sequences (stored ragged), audio, video... : not read
        out[path] = Leaf(path, "unsupported", "", (), str(spec.get("pythonClassName", "?")), per_step)


class RLDSDataset:
    """One split of a TFDS dataset version directory with tfrecord shards."""

    def __init__(self, root: str | Path, split: str | None = "train"):
        self.root = Path(root)
        if not is_rlds_dir(self.root):
            raise FileNotFoundError(f"{self.root}: no {FEATURES_FILE} + {INFO_FILE} "
                                    f"(not an RLDS/TFDS dataset version directory{version_hint(self.root)})")
        self.info = json.loads((self.root / INFO_FILE).read_text(encoding="utf-8"))
        self.name = str(self.info.get("name") or self.root.parent.name)
        self.file_format = str(self.info.get("fileFormat") or "tfrecord")
        if self.file_format != "tfrecord":
            raise ValueError(f"{self.root}: fileFormat {self.file_format!r} is not supported: only tfrecord shards are read "
                             f"(array_record needs its own reader; re-prepare or convert the dataset to tfrecord)")
        self.leaves = parse_features(json.loads((self.root / FEATURES_FILE).read_text(encoding="utf-8")))
        splits = {str(s.get("name")): s for s in self.info.get("splits") or []}
        if split is None:  # any: train if there is one
            split = "train" if "train" in splits or not splits else next(iter(splits))
        if split not in splits:
            raise ValueError(f"{self.root}: no split {split!r}; it has {sorted(splits)}")
        self.split = split
        self.shard_lengths = [int(n) for n in splits[split].get("shardLengths") or []]
        self.shards = self._shard_paths(str(splits[split].get("filepathTemplate") or DEFAULT_TEMPLATE))

    def _shard_paths(self, template: str) -> list[Path]:
        names = {"DATASET": self.name, "SPLIT": self.split, "FILEFORMAT": self.file_format}
        n = len(self.shard_lengths)
        try:
            if not n:  # no lengths recorded: whatever files the template matches
                paths = sorted(self.root.glob(template.format(**names, SHARD_X_OF_Y="*", SHARD_INDEX="*", NUM_SHARDS="*")))
            else:
                digits = max(len(str(n)), 5)
                num = f"{n:0{digits}d}"
                paths = [self.root / template.format(**names, SHARD_INDEX=f"{i:0{digits}d}", NUM_SHARDS=num,
                                                      SHARD_X_OF_Y=f"{i:0{digits}d}-of-{num}") for i in range(n)]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{self.root}: unsupported filepathTemplate {template!r}") from exc
        missing = [p for p in paths if not p.is_file()]
        if missing or not paths:
            raise FileNotFoundError(f"{self.root}: {len(missing)} of {n} {self.split} shards missing, e.g. {missing[0].name}"
                                    if missing else f"{self.root}: no {self.split} shards matching {template!r}")
        return paths

    @property
    def num_episodes(self) -> int | None:
        return sum(self.shard_lengths) if self.shard_lengths else None

    @property
    def image_keys(self) -> list[str]:
        return sorted(p for p, leaf in self.leaves.items() if leaf.kind == "image" and leaf.per_step)

    def leaf(self, key: str, what: str) -> Leaf:
        """The leaf a mapping's key names: an RLDS path, with or without ``steps/``, or a LeRobot
        key (dots for slashes; ``observation.images.X`` -> ``observation/X``)."""
        candidates = [key, key.replace(".", "/")]
        if key.startswith("observation.images."):
            candidates.append("observation/" + key.removeprefix("observation.images."))
        for c in candidates:
            for path in (c, f"steps/{c}"):
                if path in self.leaves:
                    return self.leaves[path]
        steps = sorted(p.removeprefix("steps/") for p, leaf in self.leaves.items() if leaf.per_step)
        raise ValueError(f"{self.root}: {what} {key!r} not in features.json; its step features: {', '.join(steps)}")

    def records(self, verify: bool = True) -> Iterator[tuple[int, str, bytes]]:
        """(episode index in the split, "shard: record i", serialized Example) in shard order."""
        index = 0
        for s, path in enumerate(self.shards):
            count = 0
            for buf in read_records(path, verify):
                yield index, f"{path.name}: record {count}", buf
                index, count = index + 1, count + 1
            if self.shard_lengths and count != self.shard_lengths[s]:
                raise ValueError(f"{path}: {count} episodes, {INFO_FILE} says {self.shard_lengths[s]}")

    def values(self, leaf: Leaf, buf: bytes, features: dict[str, tuple[int, int]], where: str) -> Any:
        """A leaf's values in one episode: (T, *shape) arrays for per-step tensors, (T, H, W, 3)
        uint8 for images, a list of str for text."""
        if leaf.path not in features:
            raise ValueError(f"{where}: no feature {leaf.path!r} in the episode")
        if leaf.kind == "unsupported":
            raise ValueError(f"{where}: {leaf.path} is a {leaf.encoding}, which is not read")
        kind, vals = feature_values(buf, features[leaf.path])
        if leaf.kind in ("image", "text") and kind not in ("bytes", "none"):
            raise ValueError(f"{where}: {leaf.path} holds {kind} values, features.json says {leaf.kind}")
        if leaf.kind == "image":
            return self._images(leaf, vals, where)
        if leaf.kind == "text":
            return [bytes(v).decode("utf-8", "replace") for v in vals]
        if leaf.encoding != "none" or kind == "bytes":
            raise ValueError(f"{where}: {leaf.path}: tensors stored with encoding {leaf.encoding!r} are not supported")
        if None in leaf.shape:
            raise ValueError(f"{where}: {leaf.path}: shape {leaf.shape} has unknown dimensions, which is not supported")
        arr, per = np.asarray(vals), int(np.prod(leaf.shape, dtype=np.int64))
        if not leaf.per_step:
            if arr.size != per:
                raise ValueError(f"{where}: {leaf.path} has {arr.size} values, its shape {leaf.shape} needs {per}")
            return arr.reshape(leaf.shape)
        if per == 0 or arr.size % per:
            raise ValueError(f"{where}: {leaf.path} has {arr.size} values, not a whole number of steps of shape {leaf.shape}")
        return arr.reshape((-1, *leaf.shape))

    @staticmethod
    def _images(leaf: Leaf, encoded: list, where: str) -> np.ndarray:
        from PIL import Image

        h, w = (leaf.shape[:2] if len(leaf.shape) >= 2 else (None, None))
        frames = []
        for i, data in enumerate(encoded):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    frame = np.asarray(im.convert("RGB"))
            except Exception as exc:  # Pillow raises many kinds
                raise ValueError(f"{where}: {leaf.path} image {i} cannot be decoded ({exc})") from exc
            if (h is not None and frame.shape[0] != h) or (w is not None and frame.shape[1] != w):
                raise ValueError(f"{where}: {leaf.path} image {i} is {frame.shape[0]}x{frame.shape[1]}, features.json says {h}x{w}")
            frames.append(frame)
        return np.stack(frames) if frames else np.zeros((0, h or 0, w or 0, 3), dtype=np.uint8)


def _metadata(ds: RLDSDataset, buf: bytes, features: dict, where: str) -> dict[str, Any]:
    """The episode's scalar episode-level values (e.g. BridgeData's file_path), JSON-ready; ones
    this reader cannot decode are left out (they are not needed)."""
    out: dict[str, Any] = {}
    for leaf in ds.leaves.values():
        if leaf.per_step or leaf.shape != () or leaf.kind not in ("tensor", "text") or leaf.path not in features:
            continue
        try:
            value = ds.values(leaf, buf, features, where)
        except ValueError:
            continue
        if leaf.kind == "text":
            out[leaf.path] = value[0] if value else ""
        else:
            out[leaf.path] = bool(value) if leaf.dtype == "bool" else value.item()
    return out


def read_rlds_episodes(root: str | Path, mapping: Any | None = None, *, image_key: str | None = None, split: str = "train",
                       progress: bool = False, verify: bool = True) -> Iterator[RobotEpisode]:
    """Episodes of an RLDS/TFDS dataset in our embodiment (``mapping``: anything
    ``gf_training.embodiments.load_mapping`` takes; BridgeData v2: ``bridge_widowx``). The camera
    is ``image_key``, else the mapping's, else the first RGB image feature of the steps by name;
    the instruction the mapping's ``instruction_key``, else ``language_instruction`` (first
    non-empty step). Checksums are verified unless ``verify`` is false."""
    from gf_training.embodiments import load_mapping

    ds = RLDSDataset(root, split)
    m = load_mapping(mapping)
    key = image_key or m.image_key
    if key:
        image = ds.leaf(key, "image feature")
    else:
        rgb = [ds.leaves[p] for p in ds.image_keys if len(ds.leaves[p].shape) < 3 or ds.leaves[p].shape[2] in (3, None)]
        if not rgb:
            raise ValueError(f"{root}: no RGB image feature in the steps")
        image = rgb[0]
    state, action = ds.leaf(m.state.source, "state feature"), ds.leaf(m.action.source, "action feature")
    instruction_leaf = (ds.leaf(m.instruction_key, "instruction feature") if m.instruction_key
                        else next((ds.leaves[p] for p in INSTRUCTION_KEYS if p in ds.leaves), None))
    for leaf, what in ((image, "image"), (state, "state"), (action, "action"), (instruction_leaf, "instruction")):
        kind = {"image": "image", "instruction": "text"}.get(what, "tensor")
        if leaf is not None and (leaf.kind != kind or (what != "instruction" and not leaf.per_step)):
            raise ValueError(f"{root}: {leaf.path} ({leaf.kind}, per step: {leaf.per_step}) cannot be the {what}")
    records: Any = ds.records(verify)
    if progress:
        from tqdm import tqdm

        records = tqdm(records, total=ds.num_episodes, desc=ds.name, unit="ep", file=sys.stderr)
    for index, where, buf in records:
        features = parse_example(buf)
        actions = ds.values(action, buf, features, where)
        steps = len(actions)
        if steps == 0:
            continue
        states, frames = ds.values(state, buf, features, where), ds.values(image, buf, features, where)
        if not len(states) == len(frames) == steps:
            raise ValueError(f"{where}: {len(frames)} images ({image.path}), {len(states)} states ({state.path}) "
                             f"and {steps} actions ({action.path})")
        texts = ds.values(instruction_leaf, buf, features, where) if instruction_leaf else []
        ours_state, ours_actions, clipped = m.map_episode(states.reshape(steps, -1), actions.reshape(steps, -1))
        yield RobotEpisode(
            images=frames, state=ours_state, actions=ours_actions,
            instruction=next((t for t in texts if t.strip()), ""), episode_id=f"{ds.name}-{split}-{index:06d}",
            extra={"rlds_dataset": str(ds.root.resolve()), "rlds_split": split, "rlds_episode_index": index,
                   "rlds_record": where, "rlds_image": image.path, "embodiment": m.name, "clipped_action_values": clipped,
                   "rlds_metadata": _metadata(ds, buf, features, where)},
        )


def import_rlds(root: str | Path, demo_dir: str | Path, mapping: Any | None = None, *, image_key: str | None = None,
                split: str = "train", operator: str = "rlds", progress: bool = False) -> list:
    """``gf-data import``: an RLDS dataset -> bags + manifest lines, with the writer (and the
    resuming) of the LeRobot import."""
    from gf_training.lerobot_format import import_episodes

    return import_episodes(read_rlds_episodes(root, mapping, image_key=image_key, split=split, progress=progress), demo_dir,
                           keys=("rlds_dataset", "rlds_split", "rlds_episode_index"), operator=operator,
                           source="rlds-import", success_source="rlds dataset (no success field: assumed)")


def describe(root: str | Path) -> dict[str, Any]:
    """``gf-data info`` of an RLDS dataset: name, format, splits, leaves."""
    ds = RLDSDataset(root, split=None)
    splits = {str(s["name"]): {"episodes": sum(int(n) for n in s.get("shardLengths") or []), "shards": len(s.get("shardLengths") or [])}
              for s in ds.info.get("splits") or []}
    return {"format": "rlds", "name": ds.name, "version": ds.info.get("version"), "fileFormat": ds.file_format,
            "splits": splits, "image_keys": ds.image_keys,
            "features": {p: [leaf.kind, leaf.dtype, list(leaf.shape), "per step" if leaf.per_step else "per episode"]
                         for p, leaf in sorted(ds.leaves.items())}}
