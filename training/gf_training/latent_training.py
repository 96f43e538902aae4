"""Training a LAM on episode frame pairs (``train_lam``, ``fit_lam``), labelling episodes with its
codes for VLA training, and synthetic motion pairs for tests and smoke runs.

Separate from ``latent_model``: this is what uses a LAM on data, the model module only defines it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gf_training.latent_model import LAMConfig, LatentActionModel


def pair_batch(
    episodes: Sequence[Any], indices: Sequence[tuple[int, int]], stride: int,
) -> dict[str, torch.Tensor]:
    """Frame pairs (o_t, o_min(t+k, T-1)), proprio_t and the k actions from t (padded by repetition)."""
    first, second, proprio, actions = [], [], [], []
    for e, t in indices:
        ep = episodes[e]
        last = len(ep.actions) - 1
        first.append(np.asarray(ep.images[t]))
        second.append(np.asarray(ep.images[min(t + stride, last)]))
        proprio.append(np.asarray(ep.proprio[t], np.float32))
        steps = [min(t + i, last) for i in range(stride)]
        actions.append(np.asarray(ep.actions, np.float32)[steps])
    return {
        "first": torch.from_numpy(np.stack(first)), "second": torch.from_numpy(np.stack(second)),
        "proprio": torch.from_numpy(np.stack(proprio)), "actions": torch.from_numpy(np.stack(actions)),
    }


def train_lam(
    config: LAMConfig, episodes: Sequence[Any], steps: int = 2000, batch_size: int = 64, lr: float = 3e-4,
    seed: int = 0, device: str = "cpu", restart_every: int = 50, progress: bool = False,
    action_stats: Any | None = None, proprio_stats: Any | None = None,
) -> tuple[LatentActionModel, list[float]]:
    """Train a LAM on random frame pairs of ``episodes``; returns it (eval mode) and the losses.

    Proprio and actions are normalised with the given ``NormStats`` (default: from the data)."""
    from gf_training.data import compute_norm_stats

    if not episodes:
        raise ValueError("no episodes to train the latent action model on")
    stats = compute_norm_stats(episodes)
    action_stats = action_stats or stats["actions"]
    proprio_stats = proprio_stats or stats["proprio"]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LatentActionModel(config).to(device)
    lengths = np.array([len(ep.actions) for ep in episodes])
    starts = np.concatenate([[0], np.cumsum(lengths)])
    def sample() -> dict[str, torch.Tensor]:
        flat = rng.integers(0, starts[-1], size=batch_size)
        ep_idx = np.searchsorted(starts, flat, side="right") - 1
        batch = pair_batch(episodes, list(zip(ep_idx.tolist(), (flat - starts[ep_idx]).tolist())), config.stride)
        return {
            "first": batch["first"].to(device), "second": batch["second"].to(device),
            "proprio": torch.from_numpy(proprio_stats.normalize(batch["proprio"].numpy())).to(device),
            "actions": torch.from_numpy(action_stats.normalize(batch["actions"].numpy())).to(device),
        }

    losses = fit_lam(model, sample, steps, lr=lr, restart_every=restart_every, progress=progress, seed=seed)
    return model, losses


def fit_lam(
    model: LatentActionModel, sample: Any, steps: int, lr: float = 3e-4, restart_every: int = 50,
    progress: bool = False, seed: int = 0,
) -> list[float]:
    """The LAM training loop over batches from ``sample() -> dict`` (keys
    ``first``, ``second`` and optionally ``proprio``, ``actions``); leaves the model in eval mode."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = int(round(model.config.vq_warmup * steps))
    losses: list[float] = []
    iterator: Any = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="gf-lam", unit="step", file=sys.stderr, dynamic_ncols=True)
    for step in iterator:
        if step == warmup:  # quantisation starts: codebook from k-means of z_e
            with torch.no_grad():
                pool = [model.encode(b["first"], b["second"]) for b in (sample() for _ in range(8))]
            model.init_codebook(torch.cat(pool), seed=seed)
        batch = sample()
        out = model(batch["first"], batch["second"], batch.get("proprio"), batch.get("actions"), quantize=step >= warmup)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(out["loss"].detach()))
        if step >= warmup and restart_every and (step + 1) % restart_every == 0 and step + 1 < steps:
            with torch.no_grad():
                model.restart_unused(model.encode(batch["first"], batch["second"]))
        if progress and step % 10 == 0:
            iterator.set_postfix(loss=f"{losses[-1]:.4f}", recon=f"{float(out['recon']):.4f}")
    model.eval()
    return losses


@torch.no_grad()
def label_episode(model: LatentActionModel, episode: Any, pairs: int, batch_size: int = 256) -> np.ndarray:
    """Latent codes (T, pairs x codes_per_pair) for every step of an episode (see ``gf_training.latent``'s docstring)."""
    c = model.config
    device = next(model.parameters()).device
    images = np.asarray(episode.images)
    length = images.shape[0]
    per_start = []
    for lo in range(0, length, batch_size):
        idx = np.arange(lo, min(lo + batch_size, length))
        first = torch.from_numpy(images[idx]).to(device)
        second = torch.from_numpy(images[np.minimum(idx + c.stride, length - 1)]).to(device)
        per_start.append(model.codes(first, second).cpu().numpy())
    codes = np.concatenate(per_start)  # (T, codes_per_pair): the pair starting at each step
    steps = np.minimum(np.arange(length)[:, None] + c.stride * np.arange(pairs)[None, :], length - 1)
    return codes[steps].reshape(length, pairs * c.codes_per_pair).astype(np.int64)


def label_episodes(model: LatentActionModel, episodes: Sequence[Any], pairs: int, progress: bool = False) -> list[np.ndarray]:
    """``label_episode`` for each episode."""
    iterator: Any = episodes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(episodes, desc="latent labels", unit="ep", file=sys.stderr)
    return [label_episode(model, ep, pairs) for ep in iterator]


def pairs_for(model_tokens: int, codes_per_pair: int) -> int:
    """Frame pairs per sample for a VLA with ``model_tokens`` latent tokens."""
    if model_tokens % codes_per_pair:
        raise ValueError(f"latent_action_tokens={model_tokens} is not a multiple of the LAM's codes_per_pair={codes_per_pair}")
    return model_tokens // codes_per_pair


# ---------------------------------------------------------------------------------------------
# synthetic motions (tests, smoke runs)
# ---------------------------------------------------------------------------------------------


def synthetic_motion_pairs(
    count: int, size: int = 32, shift: int = 4, seed: int = 0, square: int = 6, stride: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame pairs of a white square on black that moves ``shift`` px left (label 0) or right (1):
    ``(first, second, labels, actions)``, actions (count, stride, 7) with x velocity -1 / +1 (the
    commands that moved it, for the proprio FDM)."""
    rng = np.random.default_rng(seed)
    first = np.zeros((count, size, size, 3), np.uint8)
    second = np.zeros_like(first)
    labels = rng.integers(0, 2, size=count)
    for i in range(count):
        x = int(rng.integers(shift, size - square - shift))
        y = int(rng.integers(0, size - square))
        dx = shift if labels[i] else -shift
        first[i, y : y + square, x : x + square] = 255
        second[i, y : y + square, x + dx : x + dx + square] = 255
    actions = np.zeros((count, stride, 7), np.float32)
    actions[:, :, 0] = (labels * 2 - 1)[:, None]
    return torch.from_numpy(first), torch.from_numpy(second), torch.from_numpy(labels), torch.from_numpy(actions)
