"""Training data: action-chunk windows over demonstration episodes, augmentation and collation.

Pipeline::

    demo dir (manifest.jsonl + one MCAP bag per episode)
      -> load_demo_episodes()   decode each bag once into a cache (gf_training.episodes: images
                                already resized to the model's input size, memory-mapped .npy
                                files keyed by the bag's fingerprint)
      -> ChunkDataset           one sample per step t: image_t, proprio_t, instruction and the
                                action chunk actions[t : t + H], padded past the episode end
                                (``action_is_pad``), proprio/actions normalised with NormStats
      -> VLACollator            VLAProcessor (pixel values, prompt tokens) + optional image
                                augmentation in pure torch -> the batch ``PI0StyleVLA.compute_loss``
                                takes

The dataset core works on any sequence of episode-like objects (``images`` (T,H,W,3) uint8,
``proprio`` (T,7), ``actions`` (T,7), ``instruction``), so tests and benchmarks need no bags;
``ChunkDataset.from_demo_dirs`` is the thin layer on top of ``gf_teleop.episodes``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from gf_eval.action_space import EE_DELTA_POSE
from gf_policy.vla import NormStats, VLAProcessor
from gf_policy.vla.normalization import stats_from_data
from gf_training.episodes import DecodedEpisode, EpisodeLike, check_episode, load_demo_episodes

GRIPPER_INDEX = EE_DELTA_POSE.names.index("gripper")
SCENE_TARGET = "scene_target"  # sample/batch key of the auxiliary scene target (gf_training.scene_probe)


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


def compute_norm_stats(episodes: Sequence[EpisodeLike], kind: str = "quantile") -> dict[str, NormStats]:
    """Statistics of proprio and per-step actions over all episodes: 1st/99th percentiles, or
    mean/std with ``kind="mean_std"`` (``gf_policy.vla.normalization``)."""
    if not episodes:
        raise ValueError("no episodes to compute statistics from")
    return {
        "proprio": stats_from_data(np.concatenate([np.asarray(e.proprio, np.float32) for e in episodes]), kind),
        "actions": stats_from_data(np.concatenate([np.asarray(e.actions, np.float32) for e in episodes]), kind),
    }


def hold_action(last_action: np.ndarray) -> np.ndarray:
    """The ``ee_delta_pose`` action that keeps the arm where it is: no translation or rotation,
    the gripper as last commanded."""
    hold = np.zeros_like(np.asarray(last_action, dtype=np.float32))
    hold[GRIPPER_INDEX] = last_action[GRIPPER_INDEX]
    return hold


class ChunkDataset(Dataset):
    """One sample per episode step: the observation at t and the action chunk starting at t.

    Sample: ``image`` (H, W, 3) uint8, ``instruction`` str, ``proprio`` (proprio_dim,) and
    ``actions`` (H, action_dim) float32 normalised with ``norm_stats``, ``action_is_pad`` (H,) bool
    (True past the episode end; those rows repeat the last action and are left out of the loss).

    ``hold_after_end``: rows past the end are instead ``hold_action`` of the last action and are
    trained (``action_is_pad`` False). Demos end the moment the task is solved, so without it a
    policy never sees what follows a release; in closed loop it keeps moving after placing the
    cube, and the benchmark scores the state at the episode's last step, where a cube on a card
    counts only if the arm is still (``gf_eval.scoring``).
    With ``latent_codes`` (one (T, n) int array per episode, ``gf_training.latent``) samples also
    carry ``latent_codes`` (n,), the latent-action targets of step t. With ``scene_targets`` (one row
    per episode, ``gf_training.scene_probe``) samples carry ``scene_target``, their episode's row.
    """

    def __init__(
        self,
        episodes: Sequence[EpisodeLike],
        action_horizon: int,
        norm_stats: dict[str, NormStats] | None = None,
        latent_codes: Sequence[np.ndarray] | None = None,
        hold_after_end: bool = False,
        scene_targets: Sequence[np.ndarray] | None = None,
    ):
        if action_horizon < 1:
            raise ValueError("action_horizon must be >= 1")
        if not episodes:
            raise ValueError("the dataset needs at least one episode")
        for i, ep in enumerate(episodes):
            check_episode(ep, f"episode {i}")
        self.episodes = list(episodes)
        self.horizon = action_horizon
        if latent_codes is not None:
            if len(latent_codes) != len(self.episodes) or any(
                    len(c) != len(ep.actions) for c, ep in zip(latent_codes, self.episodes)):
                raise ValueError("latent_codes must hold one (T, n) array per episode, T = its length")
        self.latent_codes = None if latent_codes is None else [np.asarray(c, np.int64) for c in latent_codes]
        if scene_targets is not None and (len(scene_targets) != len(self.episodes) or any(
                len(s) != len(ep.actions) for s, ep in zip(scene_targets, self.episodes))):
            raise ValueError("scene_targets must hold one (T, k) array per episode, T = its length")
        self.scene_targets = None if scene_targets is None else [np.asarray(s, np.float32) for s in scene_targets]
        self.norm_stats = norm_stats if norm_stats is not None else compute_norm_stats(self.episodes)
        lengths = np.array([len(ep.actions) for ep in self.episodes])
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        # Normalise once: every window reads slices of these.
        self._proprio = [self.norm_stats["proprio"].normalize(np.asarray(ep.proprio, np.float32)).astype(np.float32)
                         for ep in self.episodes]
        self._actions = [self.norm_stats["actions"].normalize(np.asarray(ep.actions, np.float32)).astype(np.float32)
                         for ep in self.episodes]
        self.hold_after_end = hold_after_end
        self._after_end = [
            self.norm_stats["actions"].normalize(hold_action(np.asarray(ep.actions[-1], np.float32))).astype(np.float32)
            if hold_after_end else a[-1] for ep, a in zip(self.episodes, self._actions)
        ]

    @classmethod
    def from_demo_dirs(
        cls,
        demo_dirs: str | Path | Sequence[str | Path],
        action_horizon: int,
        image_size: int | None,
        norm_stats: dict[str, NormStats] | None = None,
        **load_kwargs: Any,
    ) -> ChunkDataset:
        """Episodes of demo directories (through the cache), see ``load_demo_episodes``."""
        episodes, _ = load_demo_episodes(demo_dirs, image_size, **load_kwargs)
        return cls(episodes, action_horizon, norm_stats)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (episode index, step)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        ep = int(np.searchsorted(self._starts, index, side="right") - 1)
        return ep, int(index - self._starts[ep])

    def __getitem__(self, index: int) -> dict[str, Any]:
        e, t = self.locate(index)
        ep = self.episodes[e]
        actions = self._actions[e]
        end = min(t + self.horizon, len(actions))
        chunk = np.empty((self.horizon, actions.shape[1]), dtype=np.float32)
        chunk[: end - t] = actions[t:end]
        chunk[end - t :] = self._after_end[e]
        is_pad = np.zeros(self.horizon, dtype=bool)
        is_pad[end - t :] = not self.hold_after_end
        sample = {
            "image": np.asarray(ep.images[t]),
            "instruction": ep.instruction,
            "proprio": self._proprio[e][t],
            "actions": chunk,
            "action_is_pad": is_pad,
            "episode": e,
            "step": t,
        }
        if self.latent_codes is not None:
            sample["latent_codes"] = self.latent_codes[e][t]
        if self.scene_targets is not None:
            sample[SCENE_TARGET] = self.scene_targets[e][t]
        return sample


# ---------------------------------------------------------------------------------------------
# Augmentation (pure torch) and collation
# ---------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Image augmentation applied per sample on the model's pixel values.

    Geometric: a random crop of ``crop_scale`` .. 1 of the image side (kept square), resized back
    to full size, and a rotation of up to +-``rotate_deg``. Photometric (colour jitter): brightness,
    contrast and saturation factors drawn from [1 - x, 1 + x]. Defaults are openpi's for pi0.
    """

    enabled: bool = False
    crop_scale: float = 0.95
    rotate_deg: float = 5.0
    brightness: float = 0.3
    contrast: float = 0.4
    saturation: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError("crop_scale must be in (0, 1]")
        for name in ("rotate_deg", "brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be <= 1 (a factor range of [1 - x, 1 + x])")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def augment_images(
    pixel_values: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment (B, [N,] 3, S, S) pixel values in [-1, 1]; every image gets its own random draw."""
    if not cfg.enabled:
        return pixel_values
    shape = pixel_values.shape
    x = pixel_values.reshape(-1, *shape[-3:]).float()
    n = x.shape[0]
    # Geometry: one affine sampling grid per image = crop (scale + offset) and rotation.
    scale = _uniform(n, cfg.crop_scale, 1.0, generator)
    max_shift = 1.0 - scale  # keeps the crop inside the image (normalised coordinates)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * max_shift
    ty = (torch.rand(n, generator=generator) * 2 - 1) * max_shift
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator) * (torch.pi / 180.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Colour, in [0, 1] space.
    x = (x + 1.0) / 2.0
    view = (n, 1, 1, 1)
    if cfg.brightness:
        x = x * _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator).view(view)
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator).view(view) + mean
    if cfg.saturation:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, generator).view(view) + gray
    x = x.clamp(0.0, 1.0) * 2.0 - 1.0
    return x.reshape(shape).to(pixel_values.dtype)


class VLACollator:
    """Samples of ``ChunkDataset`` -> the model's batch (``pixel_values``, ``input_ids``,
    ``attention_mask``, ``proprio``, ``actions``, ``action_is_pad``)."""

    def __init__(self, processor: VLAProcessor, augment: AugmentConfig | None = None,
                 generator: torch.Generator | None = None):
        self.processor = processor
        self.augment = augment or AugmentConfig(enabled=False)
        self.generator = generator

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.processor([s["image"] for s in samples], [s["instruction"] for s in samples])
        batch["pixel_values"] = augment_images(batch["pixel_values"], self.augment, self.generator)
        batch["proprio"] = torch.from_numpy(np.stack([s["proprio"] for s in samples]))
        batch["actions"] = torch.from_numpy(np.stack([s["actions"] for s in samples]))
        batch["action_is_pad"] = torch.from_numpy(np.stack([s["action_is_pad"] for s in samples]))
        if "latent_codes" in samples[0]:
            batch["latent_codes"] = torch.from_numpy(np.stack([s["latent_codes"] for s in samples]))
        if SCENE_TARGET in samples[0]:
            batch[SCENE_TARGET] = torch.from_numpy(np.stack([s[SCENE_TARGET] for s in samples]))
        return batch


class ResumableSampler(Sampler[int]):
    """An endless, reproducible stream of sample indices, sharded over ranks.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``; rank ``r`` of ``world`` takes every
    ``world``-th index of it. ``start`` skips that many of this rank's indices, so a resumed run
    sees exactly the samples the uninterrupted run would have seen.
    """

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        if num_samples < 1:
            raise ValueError("the sampler needs at least one sample")
        self.n, self.seed, self.rank, self.world, self.start, self.shuffle = num_samples, seed, rank, world_size, start, shuffle
        # Ranks read disjoint strided slices of each epoch; every rank gets the same count.
        self.per_rank = num_samples // world_size if num_samples >= world_size else 1

    def _epoch(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        if self.n < self.world:  # tiny datasets: ranks may share samples
            return [perm[self.rank % self.n]]
        return perm[self.rank :: self.world][: self.per_rank]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self._epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs it for progress hints
        return sys.maxsize


class MixtureSampler(Sampler[int]):
    """An endless, reproducible stream of indices into concatenated sources (``sizes``, in order),
    each source drawn with its share of ``weights`` whatever its size.

    Epoch ``e`` of a rank holds ``sum(sizes) // world_size`` draws: the source of each is drawn
    from the weights, and a source's draws walk through fresh permutations of its samples, so a
    small source repeats only after all its samples were seen. Seeded by ``(seed, e, rank)``;
    ``start`` skips that many indices, so a resumed run continues the uninterrupted stream.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int = 0, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        if len(sizes) != len(weights) or min(sizes, default=0) < 1:
            raise ValueError(f"need one weight per non-empty source: sizes {list(sizes)}, weights {list(weights)}")
        w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be >= 0 and not all zero: {list(weights)}")
        self.sizes, self.weights = [int(n) for n in sizes], w / w.sum()
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.seed, self.rank, self.start = seed, rank, start
        self.per_rank = max(1, sum(self.sizes) // world_size)

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_009 + self.rank)
        sources = torch.multinomial(self.weights, self.per_rank, replacement=True, generator=g)
        out = torch.empty(self.per_rank, dtype=torch.long)
        for i, (size, offset) in enumerate(zip(self.sizes, self.offsets)):
            slots = (sources == i).nonzero().flatten()
            if len(slots) == 0:
                continue
            laps = -(-len(slots) // size)
            order = torch.cat([torch.randperm(size, generator=g) for _ in range(laps)])[: len(slots)]
            out[slots] = order + offset
        return out.tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            yield from self._epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless
        return sys.maxsize


# ---------------------------------------------------------------------------------------------
# Generated data (tests, benchmarks, smoke runs)
# ---------------------------------------------------------------------------------------------

SYNTHETIC_TARGETS = ("grinning face", "red heart", "rocket", "thumbs up", "smiling cat", "star")


def synthetic_episodes(
    num_episodes: int = 4,
    length: int = 12,
    image_size: int = 32,
    seed: int = 0,
) -> list[DecodedEpisode]:
    """Small generated episodes with a learnable rule (no simulator needed).

    The instruction names one of three coloured cards drawn in the image; the "arm" (a white
    square whose position is the proprio xy) moves towards that card's position with an action
    that is a deterministic function of the observation, closing the gripper half way. A model
    that reads the image, the instruction and the proprio can fit the actions exactly.
    """
    rng = np.random.default_rng(seed)
    colours = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230]], dtype=np.uint8)
    episodes = []
    for e in range(num_episodes):
        names = rng.choice(len(SYNTHETIC_TARGETS), size=3, replace=False)
        slots = rng.permutation(3)
        target = int(rng.integers(3))
        card_xy = np.stack([np.linspace(-0.6, 0.6, 3)[slots], np.full(3, 0.6)], 1)
        pos = np.array([rng.uniform(-0.3, 0.3), -0.6])
        images = np.zeros((length, image_size, image_size, 3), dtype=np.uint8)
        proprio = np.zeros((length, 7), dtype=np.float32)
        actions = np.zeros((length, 7), dtype=np.float32)
        for t in range(length):
            img = np.full((image_size, image_size, 3), 90, dtype=np.uint8)
            for k in range(3):
                cx, cy = ((card_xy[k] + 1) / 2 * (image_size - 1)).astype(int)
                img[max(cy - 3, 0) : cy + 3, max(cx - 3, 0) : cx + 3] = colours[k]
            px, py = ((np.clip(pos, -1, 1) + 1) / 2 * (image_size - 1)).astype(int)
            img[max(py - 1, 0) : py + 2, max(px - 1, 0) : px + 2] = 255
            images[t] = img
            gripper = 1.0 if t < length // 2 else -1.0
            proprio[t] = [pos[0], pos[1], 0.1, 0.0, 0.0, 0.0, (gripper + 1) / 2]
            step = np.clip((card_xy[target] - pos) / max(length - t, 1) * 2.0, -0.5, 0.5)
            actions[t] = [step[0], step[1], 0.0, 0.0, 0.0, 0.0, gripper]
            pos = pos + step * 0.5
        instruction = f"Pick the cube and place it on {SYNTHETIC_TARGETS[int(names[target])]}"
        # The card colour is what the image shows; the name in the instruction must identify it.
        instruction += f" ({['red', 'green', 'blue'][target]} card)"
        # The red card stands in for the cube of a real trial: a static mark the image shows.
        trial = {"cube_xy": [float(v) for v in card_xy[0]]}
        episodes.append(DecodedEpisode(images, proprio, actions, instruction, episode_id=f"synthetic-{seed}-{e:04d}",
                                       trial=trial))
    return episodes
