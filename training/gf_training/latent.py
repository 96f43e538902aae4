"""Latent actions (villa-X style): a latent action model (LAM) trained on frame pairs of our
episodes, whose discrete codes become extra targets of VLA pre-training.

The LAM (``LatentActionModel``)::

    (o_t, o_t+k) --IDM--> z_e (codes_per_pair vectors) --VQ--> z_q (codebook entries)
    (o_t, z_q)   --FDM--> o_t+k (pixels, predicted as a residual over o_t)
    (proprio_t, z_q) --proprio FDM--> the k robot actions executed between the frames

* inverse dynamics (IDM): a small ViT over [latent queries | patches of (o_t, o_t+k - o_t)]
  (both frames stacked channel-wise per patch, so motion is visible locally to every token);
  each code reads its query token plus the mean of the patch tokens;
* vector-quantised bottleneck: cosine-similarity VQ with a unit-norm codebook, straight-through
  gradients, codebook + commitment losses; against code collapse, the first ``vq_warmup``
  steps train unquantised latents through a noisy (narrow) channel, the codebook then starts
  from spherical k-means of the encoder outputs, and codes that fall out of use restart on the
  worst-fitting encoder outputs;
* forward dynamics (FDM): a ViT over [latent tokens | patches(o_t) + latents] that predicts o_t+k;
* villa-X's proprio FDM (``proprio_weight`` > 0): grounds the codes in what the robot did, so
  that motions with small pixel change (gripper, rotation) still get distinct codes. On a toy
  task (a square moving left or right) it is what makes two codes separate the two motions
  reliably within a few hundred steps; pixels alone separate them much more slowly.

Labels for VLA training: sample t gets ``pairs`` consecutive frame pairs
``(t + i k, t + (i + 1) k)``, i < pairs (clamped at the episode end), each encoded to
``codes_per_pair`` codes, i.e. ``VLAConfig.latent_action_tokens = pairs x codes_per_pair``.
``gf-train`` labels its episodes with the LAM named in ``latent.lam`` when the model has latent
targets; in "expert" mode the VLA also receives the codebook (its flow targets are the code vectors).

``gf-lam train --demo-dirs DIR --out runs/lam`` trains a LAM (``--synthetic N`` on generated
episodes instead); the directory holds ``lam_config.json`` and ``lam.safetensors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_model, save_model
from torch import nn

LAM_CONFIG = "lam_config.json"
LAM_WEIGHTS = "lam.safetensors"


@dataclass
class LAMConfig:
    """Sizes and losses of a latent action model."""

    image_size: int = 128
    patch_size: int = 16
    width: int = 256
    depth: int = 4
    heads: int = 4
    codebook_size: int = 32
    code_dim: int = 32
    codes_per_pair: int = 4
    stride: int = 5  # frames between o_t and o_t+k (0.25 s at 20 Hz)
    commitment: float = 0.25
    proprio_dim: int = 7
    action_dim: int = 7
    proprio_weight: float = 1.0  # villa-X's proprio FDM; 0 turns it off (pixels only)
    restart_threshold: float = 0.03  # codes used less than this share of their fair share are restarted
    vq_warmup: float = 0.2  # share of the training steps before quantisation starts (k-means init)
    warmup_noise: float = 0.5  # Gaussian noise on the unquantised latents during the warm-up

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.width % self.heads:
            raise ValueError("width must be a multiple of heads")
        if min(self.codebook_size, self.code_dim, self.codes_per_pair, self.stride) < 1:
            raise ValueError("codebook_size, code_dim, codes_per_pair and stride must be >= 1")

    @classmethod
    def tiny(cls, **overrides: Any) -> LAMConfig:
        """A test-size LAM (32 px frames, 8 px patches, width 64)."""
        params: dict[str, Any] = dict(image_size=32, patch_size=8, width=64, depth=2, heads=4, codebook_size=8,
                                      code_dim=16, codes_per_pair=1, stride=2)
        params.update(overrides)
        return cls(**params)


def _encoder(width: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class LatentActionModel(nn.Module):
    """IDM + VQ + FDM (+ proprio FDM); see the module docstring."""

    def __init__(self, config: LAMConfig):
        super().__init__()
        self.config = c = config
        n = (c.image_size // c.patch_size) ** 2
        self.patch = nn.Conv2d(3, c.width, c.patch_size, c.patch_size)
        self.pair_patch = nn.Conv2d(6, c.width, c.patch_size, c.patch_size)
        self.pos = nn.Parameter(torch.randn(n, c.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(c.codes_per_pair, c.width) * 0.02)
        self.idm = _encoder(c.width, c.depth, c.heads)
        self.idm_norm = nn.LayerNorm(c.width)
        self.to_code = nn.Linear(c.width, c.code_dim)
        self.codebook = nn.Parameter(F.normalize(torch.randn(c.codebook_size, c.code_dim), dim=1))
        self.from_code = nn.Linear(c.code_dim, c.width)
        self.fdm = _encoder(c.width, c.depth, c.heads)
        self.fdm_norm = nn.LayerNorm(c.width)
        self.to_pixels = nn.Linear(c.width, 3 * c.patch_size**2)
        nn.init.zeros_(self.to_pixels.weight)
        nn.init.zeros_(self.to_pixels.bias)
        if c.proprio_weight > 0:
            self.proprio_fdm = nn.Sequential(
                nn.Linear(c.codes_per_pair * c.code_dim + c.proprio_dim, c.width), nn.GELU(),
                nn.Linear(c.width, c.stride * c.action_dim),
            )
        self.register_buffer("usage", torch.full((c.codebook_size,), 1.0 / c.codebook_size))

    # ------------------------------------------------------------------ pieces
    def _frames(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, S, S) in [-1, 1] -> float (B, 3, S, S) at the LAM size."""
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images.to(self.pos.dtype)

    def _patches(self, frames: torch.Tensor, embed: nn.Conv2d | None = None) -> torch.Tensor:
        return (embed or self.patch)(frames).flatten(2).transpose(1, 2) + self.pos

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, patches, 3 p p), the FDM's target layout."""
        p = self.config.patch_size
        b, c, s, _ = frames.shape
        x = frames.reshape(b, c, s // p, p, s // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (s // p) ** 2, c * p * p)

    def encode(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """IDM: unit-norm latent vectors z_e (B, codes_per_pair, code_dim) of a frame pair."""
        a, b = self._frames(first), self._frames(second)
        batch = a.shape[0]
        pair = self._patches(torch.cat([a, b - a], dim=1), self.pair_patch)
        tokens = torch.cat([self.queries[None].expand(batch, -1, -1), pair], dim=1)
        out = self.idm_norm(self.idm(tokens))
        n = self.config.codes_per_pair
        # Each code reads its query token plus the mean of the patch tokens (motion is detected
        # locally, so pooling gives every code the whole picture from the first step).
        out = out[:, :n] + out[:, n:].mean(dim=1, keepdim=True)
        return F.normalize(self.to_code(out), dim=-1)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest unit-norm codes by cosine similarity: (codes, z_q straight-through, vq loss)."""
        book = F.normalize(self.codebook, dim=1)
        codes = (z_e.detach() @ book.T).argmax(dim=-1)
        q = book[codes]
        loss = F.mse_loss(q, z_e.detach()) + self.config.commitment * F.mse_loss(z_e, q.detach())
        return codes, z_e + (q - z_e).detach(), loss

    @torch.no_grad()
    def codes(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, codes_per_pair) of frame pairs."""
        return self.quantize(self.encode(first, second))[0]

    def code_vectors(self) -> torch.Tensor:
        """The unit-norm codebook (K, code_dim) (what the VLA's latent expert denoises)."""
        return F.normalize(self.codebook.detach(), dim=1)

    def forward(
        self, first: torch.Tensor, second: torch.Tensor, proprio: torch.Tensor | None = None,
        actions: torch.Tensor | None = None, quantize: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Losses of a batch of pairs; ``actions`` (B, stride, action_dim) for the proprio FDM.
        ``quantize=False`` passes z_e on unquantised (the warm-up before the k-means init)."""
        c = self.config
        a, b = self._frames(first), self._frames(second)
        z_e = self.encode(a, b)
        codes, z_q, vq_loss = self.quantize(z_e)
        if not quantize:
            # Warm-up without quantisation; noise keeps the channel narrow (like the codes will be),
            # so z_e learns the few factors that matter most before k-means turns them into codes.
            z_q = F.normalize(z_e + c.warmup_noise * torch.randn_like(z_e), dim=-1) if self.training else z_e
            vq_loss = torch.zeros((), device=z_e.device)
        batch = a.shape[0]
        latent = self.from_code(z_q)  # (B, codes, width)
        # The latent actions enter as tokens and, summed, on every patch token (direct conditioning).
        tokens = torch.cat([latent, self._patches(a) + latent.sum(dim=1, keepdim=True)], dim=1)
        out = self.fdm_norm(self.fdm(tokens))[:, c.codes_per_pair :]
        predicted = self._pixels(a) + self.to_pixels(out)
        recon = F.mse_loss(predicted, self._pixels(b))
        losses = {"recon": recon, "vq": vq_loss, "codes": codes}
        total = recon + vq_loss
        if c.proprio_weight > 0 and proprio is not None and actions is not None:
            pred = self.proprio_fdm(torch.cat([z_q.flatten(1), proprio.to(z_q.dtype)], dim=1))
            losses["proprio"] = F.mse_loss(pred, actions.reshape(batch, -1).to(pred.dtype))
            total = total + c.proprio_weight * losses["proprio"]
        losses["loss"] = total
        if self.training:
            with torch.no_grad():
                hist = torch.bincount(codes.flatten(), minlength=c.codebook_size).float()
                self.usage.mul_(0.95).add_(0.05 * hist / hist.sum())
        return losses

    @torch.no_grad()
    def restart_unused(self, z_e: torch.Tensor) -> int:
        """Move codes that are (almost) never used onto the encoder outputs their codes fit worst."""
        c = self.config
        dead = (self.usage < c.restart_threshold / c.codebook_size).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = z_e.reshape(-1, c.code_dim)
        fit = (pool @ F.normalize(self.codebook, dim=1).T).max(dim=1).values
        worst = fit.argsort()[: dead.numel()]
        self.codebook[dead[: worst.numel()]] = pool[worst]
        self.usage[dead] = 1.0 / c.codebook_size
        return int(worst.numel())

    @torch.no_grad()
    def init_codebook(self, z_e: torch.Tensor, iterations: int = 20, seed: int = 0) -> None:
        """Spherical k-means (k-means++ seeding) of encoder outputs (N, code_dim) as the codebook."""
        pool = F.normalize(z_e.reshape(-1, self.config.code_dim).float(), dim=1)
        k = self.config.codebook_size
        gen = torch.Generator().manual_seed(seed)
        centres = [pool[torch.randint(pool.shape[0], (1,), generator=gen)].squeeze(0)]
        for _ in range(1, k):
            dist = (1 - pool @ torch.stack(centres).T).min(dim=1).values.clamp_min(0) + 1e-12
            centres.append(pool[torch.multinomial(dist.cpu(), 1, generator=gen).to(pool.device)].squeeze(0))
        book = torch.stack(centres)
        for _ in range(iterations):
            assign = (pool @ book.T).argmax(dim=1)
            for j in range(k):
                members = pool[assign == j]
                if len(members):
                    book[j] = F.normalize(members.mean(0), dim=0)
        self.codebook.copy_(book.to(self.codebook))
        self.usage.fill_(1.0 / k)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``lam_config.json`` and ``lam.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / LAM_CONFIG).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        save_model(self, str(directory / LAM_WEIGHTS))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> LatentActionModel:
        """Load a LAM written by ``save_pretrained``."""
        directory = Path(directory)
        model = cls(load_lam_config(directory))
        load_model(model, str(directory / LAM_WEIGHTS), strict=True)
        return model.to(device).eval()


def load_lam_config(directory: str | Path) -> LAMConfig:
    """The sizes of the LAM in ``directory`` (without loading its weights)."""
    directory = Path(directory)
    if not (directory / LAM_CONFIG).exists():
        raise FileNotFoundError(f"{directory} holds no latent action model ({LAM_CONFIG} missing; see gf-lam train)")
    return LAMConfig(**json.loads((directory / LAM_CONFIG).read_text()))


def vla_latent_sizes(lam: LAMConfig, frame_pairs: int) -> dict[str, int]:
    """The ``VLAConfig`` latent fields that must match a LAM: its codebook, code width and
    ``frame_pairs x codes_per_pair`` latent tokens per sample."""
    return {"latent_codebook_size": lam.codebook_size, "latent_code_dim": lam.code_dim,
            "latent_action_tokens": frame_pairs * lam.codes_per_pair}


# ---------------------------------------------------------------------------------------------
# training on episodes
# ---------------------------------------------------------------------------------------------


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
    """Latent codes (T, pairs x codes_per_pair) for every step of an episode (see the module docstring)."""
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


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-lam``."""
    parser = argparse.ArgumentParser(prog="gf-lam", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a latent action model on episode frame pairs")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo-dirs", nargs="+", help="demo directories (manifest.jsonl + bags)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N generated episodes instead (smoke runs)")
    tr.add_argument("--out", type=Path, required=True, help="output directory")
    tr.add_argument("--steps", type=int, default=20_000)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--lr", type=float, default=3e-4)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda")
    tr.add_argument("--cache-dir", help="decoded-episode cache (default ~/.cache/grinningface/episodes)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="LAMConfig field, e.g. --set codebook_size=32 (see gf_training.latent.LAMConfig)")
    tr.add_argument("--tiny", action="store_true", help="start from LAMConfig.tiny() (tests, smoke runs)")
    tr.add_argument("--force", action="store_true", help="train again even if --out already holds a LAM")
    tr.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if (args.out / LAM_WEIGHTS).exists() and not args.force:
        print(f"[gf-lam] {args.out} already holds a latent action model (--force trains a new one)")
        return 0
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r} is not KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    try:
        config = LAMConfig.tiny(**overrides) if args.tiny else LAMConfig(**overrides)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.synthetic:
        from gf_training.data import synthetic_episodes

        episodes = synthetic_episodes(num_episodes=args.synthetic, length=24, image_size=config.image_size, seed=args.seed)
    else:
        from gf_training.episodes import load_demo_episodes

        episodes, report = load_demo_episodes(args.demo_dirs, config.image_size, cache_dir=args.cache_dir,
                                              progress=not args.no_progress)
        print(f"[gf-lam] data: {report}", file=sys.stderr)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, losses = train_lam(config, episodes, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              seed=args.seed, device=device, progress=not args.no_progress)
    model.save_pretrained(args.out)
    used = int((model.usage > 0.5 / config.codebook_size).sum())
    print(f"[gf-lam] saved {args.out}: final loss {np.mean(losses[-20:]):.4f}, {used}/{config.codebook_size} codes in use")
    return 0


if __name__ == "__main__":
    sys.exit(main())
