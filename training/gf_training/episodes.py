"""Demonstration episodes in training form: decoding, the on-disk cache, loading demo directories.

``load_demo_episodes`` decodes each bag of a demo directory once (images cropped and resized to
the model's input size) into ``EpisodeCache``, memory-mapped ``.npy`` files keyed by the bag's
content fingerprint, so later epochs and runs never re-parse bags. ``gf_training.data`` builds the
training windows on top of these episodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gf_bringup.images import fit_image

CACHE_FORMAT = 1  # bump when the cached layout or decoding changes: old entries are rebuilt
_FINGERPRINT_BYTES = 1 << 16


class EpisodeLike(Protocol):
    """What the dataset needs of an episode (``gf_teleop.episodes.Episode`` satisfies it)."""

    images: np.ndarray  # (T, H, W, 3) uint8
    proprio: np.ndarray  # (T, proprio_dim)
    actions: np.ndarray  # (T, action_dim): the action executed at step t
    instruction: str


@dataclass
class DecodedEpisode:
    """An episode in training form (images usually at the model's input size)."""

    images: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    instruction: str
    episode_id: str = ""
    trial: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_episode(self)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def check_episode(ep: EpisodeLike, name: str = "episode") -> None:
    """Raise ``ValueError`` if the arrays of an episode do not line up."""
    images, proprio, actions = ep.images, ep.proprio, ep.actions
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{name}: images must be (T, H, W, 3) uint8, got {images.dtype} {images.shape}")
    if proprio.ndim != 2 or actions.ndim != 2:
        raise ValueError(f"{name}: proprio and actions must be (T, dim), got {proprio.shape} / {actions.shape}")
    if not images.shape[0] == proprio.shape[0] == actions.shape[0] or actions.shape[0] == 0:
        raise ValueError(
            f"{name}: {images.shape[0]} images, {proprio.shape[0]} proprio rows and {actions.shape[0]} actions "
            "(must be equal and > 0)"
        )
    if not (np.isfinite(proprio).all() and np.isfinite(actions).all()):
        raise ValueError(f"{name}: proprio/actions contain NaN or infinite values")


def resize_images(images: np.ndarray, size: int | None, crop: Sequence[float] | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3): ``crop`` then a bicubic resize by ``VLAProcessor``'s
    own rule (so a cached frame gives the pixel values the processor computes from the original)."""
    if crop is None and (size is None or images.shape[1:3] == (size, size)):
        return np.ascontiguousarray(images)
    return np.stack([fit_image(np.asarray(frame), size, crop) for frame in images])


def decode(ep: EpisodeLike, image_size: int | None = None, episode_id: str = "", trial: dict | None = None,
           image_crop: Sequence[float] | None = None) -> DecodedEpisode:
    """Any episode-like object -> ``DecodedEpisode`` (images cropped and resized, float32 arrays)."""
    check_episode(ep)
    return DecodedEpisode(
        images=resize_images(np.asarray(ep.images), image_size, image_crop),
        proprio=np.asarray(ep.proprio, dtype=np.float32),
        actions=np.asarray(ep.actions, dtype=np.float32),
        instruction=str(ep.instruction),
        episode_id=episode_id,
        trial=trial,
    )


# ---------------------------------------------------------------------------------------------
# Cache of decoded episodes
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$GF_CACHE_DIR`` or ``$XDG_CACHE_HOME/grinningface`` (``~/.cache/grinningface``) + ``/episodes``."""
    root = os.environ.get("GF_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grinningface"
    return Path(root) / "episodes"


def bag_fingerprint(bag: str | Path) -> str:
    """A content fingerprint of a bag (an ``.mcap`` file or a rosbag2 directory).

    Hashes each file's name, size and its first and last 64 KiB: MCAP files end with a summary
    and footer (with CRCs), so any re-recording changes the tail, while hashing whole
    multi-hundred-MB bags for every run would cost more than decoding them.
    """
    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag {bag} does not exist")
    files = sorted(p for p in bag.rglob("*") if p.is_file()) if bag.is_dir() else [bag]
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.relative_to(bag) if bag.is_dir() else path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(_FINGERPRINT_BYTES))
            if size > _FINGERPRINT_BYTES:
                f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
                h.update(f.read())
    return h.hexdigest()[:24]


class EpisodeCache:
    """Decoded episodes on disk: ``ROOT/<bag fingerprint>-s<image size>-v<format>/``.

    Each entry holds ``images.npy`` (memory-mapped when read, so many DataLoader workers share
    the page cache), ``proprio.npy``, ``actions.npy`` and ``meta.json``. Entries are written to a
    temporary directory and renamed into place, so an interrupted build never leaves a broken
    entry, and concurrent builders (DDP ranks) cannot corrupt each other.
    """

    def __init__(self, root: str | Path, image_size: int | None, image_crop: Sequence[float] | None = None):
        self.root = Path(root)
        self.image_size = image_size
        self.image_crop = None if image_crop is None else [float(v) for v in image_crop]

    def key(self, fingerprint: str) -> str:
        crop = "" if self.image_crop is None else "-c" + "_".join(f"{v:g}" for v in self.image_crop)
        return f"{fingerprint}-s{self.image_size or 'orig'}{crop}-v{CACHE_FORMAT}"

    def path(self, fingerprint: str) -> Path:
        return self.root / self.key(fingerprint)

    def get(self, fingerprint: str) -> DecodedEpisode | None:
        """The cached episode, or ``None`` when absent."""
        path = self.path(fingerprint)
        if not (path / "meta.json").exists():
            return None
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        return DecodedEpisode(
            images=np.load(path / "images.npy", mmap_mode="r"),
            proprio=np.load(path / "proprio.npy"),
            actions=np.load(path / "actions.npy"),
            instruction=meta["instruction"],
            episode_id=meta.get("episode_id", ""),
            trial=meta.get("trial"),
        )

    def put(self, fingerprint: str, ep: DecodedEpisode) -> DecodedEpisode:
        """Store ``ep`` (already decoded/resized) and return the memory-mapped cached form."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(fingerprint)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            np.save(tmp / "images.npy", np.ascontiguousarray(ep.images))
            np.save(tmp / "proprio.npy", ep.proprio.astype(np.float32))
            np.save(tmp / "actions.npy", ep.actions.astype(np.float32))
            meta = {"instruction": ep.instruction, "episode_id": ep.episode_id, "trial": ep.trial,
                    "length": ep.length, "image_size": self.image_size, "image_crop": self.image_crop, "format": CACHE_FORMAT}
            (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
            try:
                os.rename(tmp, final)
            except OSError:  # another process stored the same entry first: keep theirs
                if not (final / "meta.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        cached = self.get(fingerprint)
        assert cached is not None
        return cached

    def get_or_build(self, fingerprint: str, build: Callable[[], DecodedEpisode]) -> tuple[DecodedEpisode, bool]:
        """(episode, was_cached): decode with ``build`` only on a cache miss."""
        hit = self.get(fingerprint)
        if hit is not None:
            return hit, True
        return self.put(fingerprint, build()), False


@dataclass
class LoadReport:
    """What ``load_demo_episodes`` did."""

    episodes: int = 0
    cache_hits: int = 0
    decoded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # why unreadable bags were skipped

    def __str__(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        text = f"{self.episodes} episodes ({self.cache_hits} from cache, {self.decoded} decoded); skipped: {skipped}"
        return text + "".join(f"\n  unreadable: {e}" for e in self.errors)


def load_demo_episodes(
    demo_dirs: str | Path | Sequence[str | Path],
    image_size: int | None,
    cache_dir: str | Path | None = None,
    include_failed: bool = False,
    include_incomplete: bool = False,
    progress: bool = False,
    image_crop: Sequence[float] | None = None,
    max_episodes: int | None = None,
) -> tuple[list[DecodedEpisode], LoadReport]:
    """All usable episodes of one or more demo directories, decoded through the cache.

    By default only complete, successful episodes are used (the fine-tuning set); failed or
    interrupted recordings are counted in the report's ``skipped``, and so are bags the episode
    reader refuses (``EpisodeError``, e.g. a lost camera frame), with the reason in ``errors``.
    ``max_episodes``: only the first that many usable episodes are decoded.
    """
    from gf_teleop.episodes import (  # lazy: only bag users need rosbags
        load_episode,
        read_manifest,
    )

    dirs = [demo_dirs] if isinstance(demo_dirs, (str, Path)) else list(demo_dirs)
    cache = EpisodeCache(cache_dir or default_cache_dir(), image_size, image_crop)
    report = LoadReport()
    work: list[tuple[Path, Any]] = []
    for d in dirs:
        d = Path(d)
        for entry in read_manifest(d):
            if not entry.complete and not include_incomplete:
                report.skipped["incomplete"] = report.skipped.get("incomplete", 0) + 1
            elif not entry.success and not include_failed:
                report.skipped["failed"] = report.skipped.get("failed", 0) + 1
            else:
                work.append((d, entry))
    if max_episodes is not None:
        work = work[:max_episodes]
    if not work:
        raise ValueError(f"no usable episodes in {', '.join(map(str, dirs))} ({report})")
    iterator: Iterable[tuple[Path, Any]] = work
    if progress:
        from tqdm import tqdm

        iterator = tqdm(work, desc="episodes", unit="ep", file=sys.stderr)
    episodes = []
    for d, entry in iterator:
        fingerprint = bag_fingerprint(d / entry.bag)

        def build(d: Path = d, entry: Any = entry) -> DecodedEpisode:
            ep = load_episode(d, entry)
            return decode(ep, image_size, episode_id=entry.episode_id, trial=entry.trial, image_crop=image_crop)

        try:
            ep, hit = cache.get_or_build(fingerprint, build)
        except ValueError as exc:  # EpisodeError: one broken recording must not stop a training run
            report.skipped["unreadable"] = report.skipped.get("unreadable", 0) + 1
            report.errors.append(f"{entry.episode_id}: {exc}")
            continue
        report.cache_hits += hit
        report.decoded += not hit
        episodes.append(ep)
    report.episodes = len(episodes)
    if not episodes:
        raise ValueError(f"no readable episodes in {', '.join(map(str, dirs))} ({report})")
    return episodes, report
