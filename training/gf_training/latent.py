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

The parts: ``latent_model`` (``LAMConfig``, ``LatentActionModel``, its checkpoint files) and
``latent_training`` (training, labelling, synthetic pairs); this module holds ``gf-lam`` and
re-exports their names, so ``gf_training.latent`` still reaches everything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from gf_training.latent_model import (
    LAM_CONFIG,
    LAM_WEIGHTS,
    LAMConfig,
    LatentActionModel,
    load_lam_config,
    vla_latent_sizes,
)
from gf_training.latent_training import (
    fit_lam,
    label_episode,
    label_episodes,
    pair_batch,
    pairs_for,
    synthetic_motion_pairs,
    train_lam,
)

__all__ = [
    "LAM_CONFIG", "LAM_WEIGHTS", "LAMConfig", "LatentActionModel", "fit_lam", "label_episode", "label_episodes",
    "load_lam_config", "main", "pair_batch", "pairs_for", "synthetic_motion_pairs", "train_lam", "vla_latent_sizes",
]


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
