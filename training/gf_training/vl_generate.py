"""Generating a VL directory: ``generate_glyphs``, ``generate_cards``, ``generate_tabletop``,
``generate_which`` and ``generate_cube`` build the samples of ``gf_training.vl_samples`` for the
emojis of a split (or of the whole catalogue: the ``All`` list) and write them in the format of
``gf_training.vl_format``, keeping the samples an interrupted run already wrote.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gf_bringup.constants import DEFAULT_SPLIT
from gf_eval.splits import EmojiSplits, SplitEntry, load_splits
from gf_training.vl_format import CAMERA_VIEWS, IMAGES, PER_EMOJI, VL_FORMAT, VLRecord, _prepare, _save_png, _write
from gf_training.vl_samples import card_sample, cube_sample, glyph_sample, table_card_sample, tabletop_sample, which_sample

# Generators of images per emoji (the rest: scenes): (entry, index, seed, size) -> image, question, meta.
PER_EMOJI_SAMPLES = dict(zip(PER_EMOJI, (glyph_sample, card_sample, table_card_sample)))
GENERATORS = (*PER_EMOJI, *CAMERA_VIEWS)
# Keep the generated scenes away from the evaluation trials (base seed 0) of the same emojis,
# and the scene generators away from each other.
TABLETOP_BASE_SEED = 1_000_000
CUBE_BASE_SEED = 2_000_000
WHICH_BASE_SEED = 3_000_000
PROBE_SCENE_BASE_SEED = 4_000_000  # gf-probe --scenes: which-card scenes no training set shows
PROBE_CARD_SEED = 5_000_000  # gf-probe --table-cards, gf-pixel-check (gf-vl-data draws from seed 0 unless told)
# Not a list of the split: the split's lists, then every other catalogue emoji (described by its
# name). For pre-training a VLM that knows every emoji, as a web-scale VLM does; never for
# co-training a policy, where Val and Hard emojis would leak the held-out protocols.
ALL_EMOJIS = "All"


def catalogue_entries(splits: EmojiSplits) -> list[SplitEntry]:
    """Every emoji of the catalogue: the split's entries first (their descriptions), then the rest."""
    from gf_eval.catalog import load_catalog

    listed = pooled_entries(splits, list(splits.splits))
    known = {e.id for e in listed}
    return listed + [SplitEntry(e.id, e.char, e.name, e.name) for e in load_catalog().emojis if e.id not in known]


def pooled_entries(splits: EmojiSplits, lists: Sequence[str]) -> list[SplitEntry]:
    """The entries of the named lists (``All``: the whole catalogue), in order, without duplicates."""
    seen, out = set(), []
    for name in lists:
        for entry in catalogue_entries(splits) if name == ALL_EMOJIS else splits.entries(name):
            if entry.id not in seen:
                seen.add(entry.id)
                out.append(entry)
    if not out:
        raise ValueError(f"lists {list(lists)} of split {splits.name!r} hold no emojis")
    return out


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
    return _generate_per_emoji("glyphs", PER_EMOJI_SAMPLES["glyphs"], out, split, lists, per_emoji, size, seed, progress)


def generate_cards(
    out: str | Path, split: str = DEFAULT_SPLIT, lists: Sequence[str] = ("Train",), per_emoji: int = 4,
    size: int = 224, seed: int = 0, progress: bool = False,
) -> Path:
    """Write ``per_emoji`` printed-card images of every emoji of ``lists``; returns the directory."""
    return _generate_per_emoji("cards", PER_EMOJI_SAMPLES["cards"], out, split, lists, per_emoji, size, seed, progress)


def generate_table_cards(
    out: str | Path, split: str = DEFAULT_SPLIT, lists: Sequence[str] = ("Train",), per_emoji: int = 4,
    size: int = 128, seed: int = 0, progress: bool = False,
) -> Path:
    """Write ``per_emoji`` images of every emoji of ``lists`` on a card on the table, at the scale of
    the policy camera's view; returns the directory."""
    return _generate_per_emoji("tablecards", PER_EMOJI_SAMPLES["tablecards"], out, split, lists, per_emoji, size, seed, progress)


def _generate_per_emoji(
    generator: str, sample: Callable[[SplitEntry, int, int, int], tuple[Any, str, dict[str, Any]]], out: str | Path,
    split: str, lists: Sequence[str], per_emoji: int, size: int, seed: int, progress: bool,
) -> Path:
    out = Path(out)
    splits = load_splits(split)
    entries = pooled_entries(splits, lists)
    info = {"format": VL_FORMAT, "generator": generator, "split": splits.name, "split_hash": splits.hash,
            "lists": list(lists), "seed": seed, "params": {"per_emoji": per_emoji, "size": size}}
    records = _prepare(out, info)
    total = len(entries) * per_emoji
    for index in _progress(range(total), total, generator, progress):
        sample_id = f"{generator}-{index:06d}"
        if sample_id in records:
            continue
        entry = entries[index // per_emoji]
        image, question, meta = sample(entry, index, seed, size)
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


def generate_which(
    out: str | Path, split: str = DEFAULT_SPLIT, lists: Sequence[str] = ("Train",), scenes: int = 1000,
    size: int = 224, seed: int = 0, progress: bool = False, env: Any | None = None,
) -> Path:
    """Render ``scenes`` scenes with random cards of ``lists`` and ask which card shows one of the
    emojis (left, middle or right); returns the directory. ``env`` as for ``generate_tabletop``."""
    return _generate_scenes("which", which_sample, WHICH_BASE_SEED, out, split, lists, scenes, size, seed, progress, env)


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
    for sample_id in [k for k in records if int(k.rsplit("-", 1)[1]) >= scenes]:  # a smaller generation
        (out / records.pop(sample_id).image).unlink(missing_ok=True)
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
