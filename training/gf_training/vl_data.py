"""Vision-language data for co-training: generated once, to disk, reproducibly, with a manifest.

``gf-vl-data glyphs|tabletop --split SPLIT --out DIR`` writes::

    DIR/info.json        generator, split name and content hash, emoji lists, seed, parameters
    DIR/manifest.jsonl   one line per sample: id, image (relative path), question, answer, emoji ids
    DIR/images/*.png     the images (deterministic PNG bytes)

Three generators, the first two as in the paper:

* ``glyphs``: one emoji glyph on a plain background (random light colour, size, position, small
  rotation); question "What's in the image?" (a few paraphrases), answer: its description.
* ``tabletop``: a scene rendered by the simulator (``GrinningFace-v1``) with three random cards
  (and the cube and arm as in a trial); the question asks for all emojis on the table by
  position, the answer names them left to right as the camera sees them:
  ``"left: <desc>; middle: <desc>; right: <desc>"``.
* ``cube``: the same scenes, asking where the cube is; the answer is the centre of its top face
  in percent of the image width and height, ``"x 57 y 41"`` (PaliGemma's pre-training teaches
  localisation with ``<loc>`` tokens the same way, at 1024 bins). A model trained from scratch
  learns where things are from this far sooner than from actions alone.

Sample ``i`` is a pure function of ``(seed, i)`` and the parameters, so a run interrupted part
way continues where it stopped (existing samples are kept) and two machines produce the same
bytes. By default only the ``Train`` list of the split is used: co-training on ``Val`` emojis
would leak the held-out protocol.

``VLDataset`` reads one or more such directories; ``VLCollator`` turns samples into the batch
``PI0StyleVLA.compute_lm_loss`` takes (PaliGemma prefix-LM format: the answer and EOS are
the targets).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.images import fit_image
from gf_eval.splits import EmojiSplits, SplitEntry, load_splits

VL_FORMAT = "gf-vl-v1"
MANIFEST = "manifest.jsonl"
INFO = "info.json"
IMAGES = "images"
GENERATORS = ("glyphs", "tabletop", "cube")

GLYPH_QUESTIONS = (
    "What's in the image?",
    "What is shown in this image?",
    "Which emoji is this?",
    "Describe the emoji in the picture.",
)
TABLETOP_QUESTIONS = (
    "Name all emojis on the table from left to right.",
    "Which emojis are on the cards on the table, from left to right?",
    "What is printed on the three cards, from left to right?",
)
CUBE_QUESTIONS = (
    "Where is the cube?",
    "Locate the cube.",
    "Point at the cube.",
)
# Keep the generated scenes away from the evaluation trials (base seed 0) of the same emojis,
# and the two scene generators away from each other.
TABLETOP_BASE_SEED = 1_000_000
CUBE_BASE_SEED = 2_000_000


@dataclass
class VLRecord:
    """One sample of a VL directory."""

    id: str
    image: str
    question: str
    answer: str
    emoji_ids: list[str]
    meta: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(vars(self), ensure_ascii=False, sort_keys=True)


def pooled_entries(splits: EmojiSplits, lists: Sequence[str]) -> list[SplitEntry]:
    """The entries of the named lists, in order, without duplicates."""
    seen, out = set(), []
    for name in lists:
        for entry in splits.entries(name):
            if entry.id not in seen:
                seen.add(entry.id)
                out.append(entry)
    if not out:
        raise ValueError(f"lists {list(lists)} of split {splits.name!r} hold no emojis")
    return out


# ---------------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------------


def glyph_sample(entry: SplitEntry, index: int, seed: int, size: int) -> tuple[Image.Image, str, dict[str, Any]]:
    """Image, question and parameters of glyph sample ``index`` showing ``entry``."""
    from gf_eval.catalog import render_glyph

    rng = np.random.default_rng([seed, index])
    background = tuple(int(c) for c in rng.integers(200, 256, size=3))
    scale = float(rng.uniform(0.35, 0.85))
    angle = float(rng.uniform(-15.0, 15.0))
    glyph = render_glyph(entry.char)
    side = max(1, round(size * scale))
    factor = side / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * factor)), max(1, round(glyph.height * factor))), Image.LANCZOS)
    glyph = glyph.rotate(angle, resample=Image.BICUBIC, expand=True)
    canvas = Image.new("RGB", (size, size), background)
    x = int(rng.integers(0, max(1, size - glyph.width + 1)))
    y = int(rng.integers(0, max(1, size - glyph.height + 1)))
    canvas.paste(glyph, (x, y), mask=glyph)
    question = GLYPH_QUESTIONS[int(rng.integers(len(GLYPH_QUESTIONS)))]
    meta = {"background": background, "scale": round(scale, 4), "angle": round(angle, 3), "xy": [x, y]}
    return canvas, question, meta


def tabletop_answer(descriptions_left_to_right: Sequence[str]) -> str:
    """``"left: a; middle: b; right: c"``."""
    from gf_eval.camera import POSITION_NAMES

    return "; ".join(f"{pos}: {desc}" for pos, desc in zip(POSITION_NAMES, descriptions_left_to_right))


def _render(env: Any, trial: Any) -> tuple[np.ndarray, Any]:
    """Reset ``env`` (a GrinningFace-v1 env) to ``trial``: the policy image and the env's own camera."""
    from gf_eval.camera import PinholeCamera

    env.reset(seed=trial.seed, options={"trial": trial})
    camera = PinholeCamera(env.unwrapped.camera_intrinsics(), env.unwrapped.camera_extrinsics())
    return env.unwrapped.policy_image(), camera


def _pick_question(questions: Sequence[str], seed: int, index: int, stream: int) -> str:
    """One of ``questions`` for sample ``index``; ``stream`` keeps each generator's draws its own."""
    rng = np.random.default_rng([seed, index, stream])
    return questions[int(rng.integers(len(questions)))]


def tabletop_sample(env: Any, trial: Any, index: int, seed: int) -> tuple[np.ndarray, str, str, dict[str, Any]]:
    """Render ``trial`` in ``env`` (a GrinningFace-v1 env); image, question, answer, parameters.

    Positions come from the env's own camera matrices and the trial's card positions."""
    from gf_eval.camera import positions_left_to_right

    image, camera = _render(env, trial)
    order = positions_left_to_right(trial, camera)
    question = _pick_question(TABLETOP_QUESTIONS, seed, index, stream=1)
    answer = tabletop_answer([trial.cards[i].description for i in order])
    return image, question, answer, {"trial": trial.to_dict(), "left_to_right": order}


def location_answer(uv: Sequence[float], width: int, height: int) -> str:
    """``"x 57 y 41"``: an image point in whole percent of the width and height (0-99)."""
    x = min(max(int(100 * float(uv[0]) / width), 0), 99)
    y = min(max(int(100 * float(uv[1]) / height), 0), 99)
    return f"x {x} y {y}"


def cube_sample(env: Any, trial: Any, index: int, seed: int) -> tuple[np.ndarray, str, str, dict[str, Any]]:
    """Render ``trial`` in ``env``; image, "where is the cube?", its image position, parameters."""
    from gf_eval.camera import cube_pixel

    image, camera = _render(env, trial)
    uv = cube_pixel(trial, camera)
    question = _pick_question(CUBE_QUESTIONS, seed, index, stream=2)
    answer = location_answer(uv, image.shape[1], image.shape[0])
    return image, question, answer, {"trial": trial.to_dict(), "cube_uv": [round(float(v), 2) for v in uv]}


def _existing(out: Path) -> dict[str, VLRecord]:
    path = out / MANIFEST
    if not path.exists():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if (out / row["image"]).exists():
                records[row["id"]] = VLRecord(**row)
    return records


def _prepare(out: Path, info: dict[str, Any]) -> dict[str, VLRecord]:
    """Create ``out`` or check it holds the same generation (then its samples are kept)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / IMAGES).mkdir(exist_ok=True)
    info_path = out / INFO
    if info_path.exists():
        old = json.loads(info_path.read_text(encoding="utf-8"))
        if {k: v for k, v in old.items() if k != "count"} != {k: v for k, v in info.items() if k != "count"}:
            raise ValueError(f"{out} holds data generated with other settings ({info_path}); use another --out")
    info_path.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return _existing(out)


def _write(out: Path, records: dict[str, VLRecord], info: dict[str, Any]) -> None:
    ordered = [records[k] for k in sorted(records)]
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text("".join(r.to_json() + "\n" for r in ordered), encoding="utf-8")
    tmp.replace(out / MANIFEST)
    info["count"] = len(ordered)
    (out / INFO).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_png(image: Image.Image | np.ndarray, path: Path) -> None:
    from gf_eval.catalog import png_bytes

    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png_bytes(img))
    tmp.replace(path)


def _progress(items: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="sample", file=sys.stderr, dynamic_ncols=True)


def generate_glyphs(
    out: str | Path, split: str = DEFAULT_SPLIT, lists: Sequence[str] = ("Train",), per_emoji: int = 8,
    size: int = 224, seed: int = 0, progress: bool = False,
) -> Path:
    """Write ``per_emoji`` glyph images of every emoji of ``lists``; returns the directory."""
    out = Path(out)
    splits = load_splits(split)
    entries = pooled_entries(splits, lists)
    info = {"format": VL_FORMAT, "generator": "glyphs", "split": splits.name, "split_hash": splits.hash,
            "lists": list(lists), "seed": seed, "params": {"per_emoji": per_emoji, "size": size}}
    records = _prepare(out, info)
    total = len(entries) * per_emoji
    for index in _progress(range(total), total, "glyphs", progress):
        sample_id = f"glyphs-{index:06d}"
        if sample_id in records:
            continue
        entry = entries[index // per_emoji]
        image, question, meta = glyph_sample(entry, index, seed, size)
        rel = f"{IMAGES}/{index:06d}.png"
        _save_png(image, out / rel)
        records[sample_id] = VLRecord(sample_id, rel, question, entry.description, [entry.id], meta)
        if len(records) % 256 == 0:
            _write(out, records, info)
    _write(out, records, info)
    return out


def generate_tabletop(
    out: str | Path, split: str = DEFAULT_SPLIT, lists: Sequence[str] = ("Train",), scenes: int = 1000,
    size: int = 224, seed: int = 0, progress: bool = False, env: Any | None = None,
) -> Path:
    """Render ``scenes`` tabletop scenes with random cards of ``lists`` and ask for the emojis by
    position; returns the directory.

    ``env``: an existing ``GrinningFace-v1`` env built with ``image_size=size`` (default: one is
    made; it needs the simulator's Vulkan renderer)."""
    return _generate_scenes("tabletop", tabletop_sample, TABLETOP_BASE_SEED, out, split, lists, scenes, size, seed,
                            progress, env)


def generate_cube(
    out: str | Path, split: str = DEFAULT_SPLIT, lists: Sequence[str] = ("Train",), scenes: int = 2000,
    size: int = 224, seed: int = 0, progress: bool = False, env: Any | None = None,
) -> Path:
    """Render ``scenes`` scenes (cards of ``lists``, the cube placed as a trial places it) and ask
    where the cube is; returns the directory. ``env`` as for ``generate_tabletop``."""
    return _generate_scenes("cube", cube_sample, CUBE_BASE_SEED, out, split, lists, scenes, size, seed, progress, env)


def _generate_scenes(
    generator: str, sample: Callable[[Any, Any, int, int], tuple[np.ndarray, str, str, dict[str, Any]]],
    base_seed: int, out: str | Path, split: str, lists: Sequence[str], scenes: int, size: int, seed: int,
    progress: bool, env: Any | None,
) -> Path:
    from gf_eval.trials import make_trial

    out = Path(out)
    splits = load_splits(split)
    pool = EmojiSplits(splits.name, {"Train": pooled_entries(splits, lists)}, splits.template, splits.description)
    info = {"format": VL_FORMAT, "generator": generator, "split": splits.name, "split_hash": splits.hash,
            "lists": list(lists), "seed": seed, "params": {"scenes": scenes, "size": size}}
    records = _prepare(out, info)
    todo = [i for i in range(scenes) if f"{generator}-{i:06d}" not in records]
    own_env = None
    if todo and env is None:
        import gymnasium as gym

        import gf_sim_bridge.env  # noqa: F401  (registers GrinningFace-v1)

        env = own_env = gym.make("GrinningFace-v1", image_size=size, split=split)
    try:
        for index in _progress(todo, len(todo), generator, progress):
            trial = make_trial("Train", index, base_seed=base_seed + seed, splits=pool)
            image, question, answer, meta = sample(env, trial, index, seed)
            rel = f"{IMAGES}/{index:06d}.png"
            _save_png(image, out / rel)
            sample_id = f"{generator}-{index:06d}"
            records[sample_id] = VLRecord(sample_id, rel, question, answer, list(trial.emoji_ids), meta)
            if len(records) % 32 == 0:
                _write(out, records, info)
    finally:
        if own_env is not None:
            own_env.close()
    _write(out, records, info)
    return out


# ---------------------------------------------------------------------------------------------
# reading and collation
# ---------------------------------------------------------------------------------------------


def read_vl_dir(directory: str | Path) -> tuple[dict[str, Any], list[VLRecord]]:
    """``(info, records)`` of a directory written by ``gf-vl-data``."""
    directory = Path(directory)
    if not (directory / INFO).exists() or not (directory / MANIFEST).exists():
        raise FileNotFoundError(f"{directory} is not a gf-vl-data directory (needs {INFO} and {MANIFEST})")
    info = json.loads((directory / INFO).read_text(encoding="utf-8"))
    if info.get("format") != VL_FORMAT:
        raise ValueError(f"{directory}: format {info.get('format')!r}, expected {VL_FORMAT}")
    records = [VLRecord(**json.loads(line)) for line in (directory / MANIFEST).read_text(encoding="utf-8").splitlines()
               if line.strip()]
    return info, records


class VLDataset(Dataset):
    """The samples of one or more VL directories: ``image`` (S, S, 3) uint8, ``question``, ``answer``."""

    def __init__(self, directories: Sequence[str | Path], image_size: int | None = None,
                 image_crop: Sequence[float] | None = None):
        self.items: list[tuple[Path, VLRecord]] = []
        for d in directories:
            _, records = read_vl_dir(d)
            self.items.extend((Path(d), r) for r in records)
        if not self.items:
            raise ValueError(f"no vision-language samples in {', '.join(map(str, directories))}")
        self.image_size = image_size
        self.image_crop = image_crop

    def __len__(self) -> int:
        return len(self.items)

    def texts(self) -> list[str]:
        """Every question and answer (to train an offline tokenizer on)."""
        return [t for _, r in self.items for t in (r.question, r.answer)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        directory, record = self.items[index]
        image = np.asarray(Image.open(directory / record.image).convert("RGB"))
        image = fit_image(image, self.image_size, self.image_crop)
        return {"image": image, "question": record.question, "answer": record.answer}


class VLCollator:
    """VL samples -> ``vl_pixel_values``, ``vl_input_ids``, ``vl_attention_mask``, ``vl_target_mask``.

    Sequence: ``[image tokens] <bos> question "\\n" answer <eos>``, right-padded to
    ``tokens_per_image + max_text_tokens``; an answer that does not fit is cut (and loses EOS)."""

    def __init__(self, processor: Any, max_text_tokens: int = 64):
        self.processor = processor
        self.max_text_tokens = max_text_tokens

    def encode(self, question: str, answer: str) -> tuple[list[int], int]:
        """Token ids of one sample and the index where the answer starts."""
        from gf_policy.vla.processing import clean_instruction

        cfg, tok = self.processor.config, self.processor.tokenizer
        prompt = [cfg.image_token_id] * (cfg.num_images * cfg.tokens_per_image) + [tok.bos_token_id]
        prompt += tok.encode(clean_instruction(question) + "\n", add_special_tokens=False)
        answer_ids = tok.encode(answer.strip(), add_special_tokens=False)
        if tok.eos_token_id is not None:
            answer_ids = answer_ids + [tok.eos_token_id]
        return prompt + answer_ids, len(prompt)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        cfg = self.processor.config
        length = cfg.num_images * cfg.tokens_per_image + self.max_text_tokens
        ids = torch.full((len(samples), length), self.processor.pad_token_id, dtype=torch.long)
        attention = torch.zeros(len(samples), length, dtype=torch.bool)
        target = torch.zeros(len(samples), length, dtype=torch.bool)
        for row, sample in enumerate(samples):
            tokens, start = self.encode(sample["question"], sample["answer"])
            if start >= length:
                raise ValueError(f"the question alone needs {start} tokens, more than {length}: raise max_text_tokens")
            tokens = tokens[:length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = True
            target[row, start : len(tokens)] = True
        return {
            "vl_pixel_values": self.processor.preprocess_images([s["image"] for s in samples]),
            "vl_input_ids": ids, "vl_attention_mask": attention, "vl_target_mask": target,
        }


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-vl-data``."""
    parser = argparse.ArgumentParser(prog="gf-vl-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="generator", required=True)
    common: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--split",), {"default": DEFAULT_SPLIT, "help": f"split name or JSON file (default {DEFAULT_SPLIT})"}),
        (("--lists",), {"default": "Train", "help": "comma-separated emoji lists of the split (default Train; "
                                                     "Val would leak the held-out protocol)"}),
        (("--out",), {"type": Path, "required": True, "help": "output directory"}),
        (("--size",), {"type": int, "default": 224, "help": "image side in pixels (default 224)"}),
        (("--seed",), {"type": int, "default": 0, "help": "generation seed (default 0)"}),
        (("--no-progress",), {"action": "store_true", "help": "no progress bar"}),
    ]
    glyphs = sub.add_parser("glyphs", help="emoji glyphs: \"what's in the image?\" -> description")
    glyphs.add_argument("--per-emoji", type=int, default=8, help="images per emoji (default 8)")
    tabletop = sub.add_parser("tabletop", help="simulator scenes: name the emojis by position")
    tabletop.add_argument("--scenes", type=int, default=1000, help="number of scenes (default 1000)")
    cube = sub.add_parser("cube", help="simulator scenes: where is the cube? -> its image position")
    cube.add_argument("--scenes", type=int, default=2000, help="number of scenes (default 2000)")
    for p in (glyphs, tabletop, cube):
        for flags, kwargs in common:
            p.add_argument(*flags, **kwargs)
    args = parser.parse_args(argv)
    lists = [s.strip() for s in args.lists.split(",") if s.strip()]
    kwargs = dict(split=args.split, lists=lists, size=args.size, seed=args.seed, progress=not args.no_progress)
    try:
        if args.generator == "glyphs":
            out = generate_glyphs(args.out, per_emoji=args.per_emoji, **kwargs)
        elif args.generator == "tabletop":
            out = generate_tabletop(args.out, scenes=args.scenes, **kwargs)
        else:
            out = generate_cube(args.out, scenes=args.scenes, **kwargs)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        parser.error(str(exc))
    info, records = read_vl_dir(out)
    print(f"[gf-vl-data] {out}: {len(records)} {info['generator']} samples (split {info['split']}, lists {info['lists']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
