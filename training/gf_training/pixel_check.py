"""``gf-pixel-check VL_DIR``: is the answer in the pixels at all?

A small convolutional classifier (three 3x3 convolutions with max-pooling, about 25 k parameters)
learns to tell apart the emojis of a per-emoji VL directory (``gf-vl-data glyphs``, ``cards`` or
``tablecards``) from its images, and is scored after every epoch on renderings of the same emojis
drawn from ``PROBE_CARD_SEED`` (the renderings ``gf-probe --table-cards`` shows; ``gf-vl-data``
draws from seed 0 unless told otherwise). Chance is one over the number of emojis.

It is a reference for a VLM's probe on the same data, not a model of the benchmark: where this
classifier names the emojis and the VLM does not, what the VLM lacks is not in the images.

``--tower CONFIG`` puts a ``gf-train`` config's vision tower (from random weights) in the CNN's
place, read by ``name_probe``'s head (its tokens max-pooled, a LayerNorm, a linear layer): the
VLM's eyes on their own, without the language model, e.g. with and without a convolutional stem.

    gf-pixel-check vl/mini/val_tablecards --epochs 12 --out pixel_check.json
    gf-pixel-check vl/mini/val_tablecards --tower mini/table_names.yaml --lr 0.001 \
        --set "model.config.vlm.vision.conv_stem=[16,32,64,96]"
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from gf_eval.splits import load_splits
from gf_policy.vla.processing import to_model_range
from gf_training.vl_format import read_vl_dir
from gf_training.vl_generate import PER_EMOJI_SAMPLES, PROBE_CARD_SEED, pooled_entries


def small_cnn(classes: int) -> nn.Module:
    """Max-pooling keeps a small emoji wherever it lies in the image."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(64, classes),
    )


class TowerClassifier(nn.Module):
    """A VLA's vision tower read by the name probe's head; images in [0, 1] as the CNN takes them."""

    def __init__(self, tower: nn.Module, classes: int):
        super().__init__()
        from gf_training.name_probe import NameProbeHead

        self.tower = tower
        self.head = NameProbeHead(int(tower.config.hidden_size), classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.tower(pixel_values=to_model_range(images)).last_hidden_state
        return self.head(tokens)


def tower_factory(config: str, overrides: list[str]) -> Callable[[int], nn.Module]:
    """``classes -> TowerClassifier`` of the vision tower of ``config`` (a gf-train config) from
    random weights; its image size must be the directory's."""
    from gf_training.build import build_model
    from gf_training.config import load_config

    cfg = load_config(config, overrides)

    def make(classes: int) -> nn.Module:
        return TowerClassifier(build_model(cfg).vlm.model.vision_tower, classes)
    return make


def _as_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def load_training_set(directory: str | Path, split: str | None = None,
                      ) -> tuple[dict[str, Any], list[Any], torch.Tensor, torch.Tensor]:
    """``(info, entries, images, labels)`` of a per-emoji VL directory; a label is the emoji's
    index in ``entries`` (the directory's lists, in order). ``split``: the split file the
    directory was made from, if it is not a shipped split (default: the name in its info)."""
    directory = Path(directory)
    info, records = read_vl_dir(directory)
    if info["generator"] not in PER_EMOJI_SAMPLES:
        raise ValueError(f"{directory}: generator {info['generator']!r} is not per emoji "
                         f"({', '.join(PER_EMOJI_SAMPLES)}): its images have no one emoji to name")
    splits = load_splits(split or info["split"])
    if splits.hash != info["split_hash"]:
        raise ValueError(f"{directory} was made from split {info['split']!r} of hash {info['split_hash']}, "
                         f"not {splits.name!r} of hash {splits.hash}")
    entries = pooled_entries(splits, info["lists"])
    index = {e.id: i for i, e in enumerate(entries)}
    images = [np.asarray(Image.open(directory / r.image).convert("RGB")) for r in records]
    labels = torch.tensor([index[r.emoji_ids[0]] for r in records])
    return info, entries, _as_tensor(images), labels


def unseen_renderings(info: dict[str, Any], entries: list[Any], per_emoji: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_emoji`` renderings of each entry by the directory's generator at its size, from
    ``PROBE_CARD_SEED``."""
    sample = PER_EMOJI_SAMPLES[info["generator"]]
    size = int(info["params"]["size"])
    images = [np.asarray(sample(e, k, PROBE_CARD_SEED, size)[0].convert("RGB"))
              for e in entries for k in range(per_emoji)]
    return _as_tensor(images), torch.arange(len(entries)).repeat_interleave(per_emoji)


def train_and_score(
    images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor, classes: int,
    epochs: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, log: Callable[[str], None] | None = None,
    learner: Callable[[int], nn.Module] = small_cnn,
) -> list[dict[str, float]]:
    """Accuracy on the test images after each epoch (Adam, cross-entropy) of ``learner(classes)``."""
    torch.manual_seed(seed)
    net = learner(classes)
    opt = torch.optim.Adam(net.parameters(), lr)
    history = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(images))
        losses = []
        for lo in range(0, len(images), batch_size):
            idx = order[lo : lo + batch_size]
            loss = nn.functional.cross_entropy(net(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        net.eval()
        with torch.no_grad():
            accuracy = float((net(test_images).argmax(1) == test_labels).float().mean())
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "accuracy": accuracy,
                        "elapsed_s": round(time.perf_counter() - started, 1)})
        if log:
            log(f"[gf-pixel-check] epoch {epoch}: loss {history[-1]['train_loss']:.3f}, "
                f"unseen renderings {100 * accuracy:.1f}%")
    return history


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-pixel-check``."""
    parser = argparse.ArgumentParser(prog="gf-pixel-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("vl_dir", type=Path, help="a gf-vl-data glyphs, cards or tablecards directory")
    parser.add_argument("--split", help="the split file the directory was made from (default: its shipped split)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--per-emoji", type=int, default=1, help="unseen renderings per emoji to score on (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--tower", metavar="CONFIG", help="learn with this gf-train config's vision tower instead of the CNN")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in the --tower config (repeatable)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        info, entries, images, labels = load_training_set(args.vl_dir, args.split)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if args.set and not args.tower:
        parser.error("--set applies to --tower")
    learner = tower_factory(args.tower, args.set) if args.tower else small_cnn
    test_images, test_labels = unseen_renderings(info, entries, args.per_emoji)
    history = train_and_score(images, labels, test_images, test_labels, len(entries), args.epochs, args.batch_size,
                              args.lr, args.seed, log=print, learner=learner)
    result = {"vl_dir": str(args.vl_dir), "learner": {"tower": args.tower, "set": args.set} if args.tower else "cnn",
              "generator": info["generator"], "split": info["split"],
              "lists": info["lists"], "emojis": len(entries), "train_images": len(images),
              "test_images": len(test_images), "test_seed": PROBE_CARD_SEED, "chance": 1 / len(entries),
              "final_accuracy": history[-1]["accuracy"], "epochs": history}
    print(f"[gf-pixel-check] {info['generator']} of {len(entries)} emojis: {100 * result['final_accuracy']:.1f}% of "
          f"{len(test_images)} unseen renderings named (chance {100 * result['chance']:.1f}%)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0
