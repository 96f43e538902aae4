"""Attention maps (the paper's Figure 5): where do the instruction's description tokens look?

For one observation and instruction, the VLM prefix (image tokens, BOS, instruction) runs through
the model with the explicit softmax recorded; the attention of the *description* tokens (the
part of the instruction that names the target emoji, found by character offsets) to the image
tokens is averaged over those tokens, giving one patch grid per layer and head. Maps are shown
per layer / head or averaged, overlaid on the camera image, side by side for several models (the
VLM backbone, a pre-trained and a fine-tuned VLA).

Summary number: the trial's card positions projected into the image (``gf_eval.camera``)
give each patch's coverage by each card; the attention mass on the target card, on the two
distractors, and the target's share ``target / (target + distractors)`` (1/3 when attention
ignores which card is named). ``AttentionMassProbe`` logs these during training
(``logging.attention_every``).

``gf-attention CKPT [CKPT ...] --trial Val:3 --out attention.png`` (checkpoints of ours or local
Hugging Face PaliGemma directories) renders the scene of the trial with the simulator (or takes
``--image``) and writes the figure, one overlay PNG per model and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gf_bringup.constants import DEFAULT_SPLIT
from gf_eval.camera import card_quads, policy_camera, quad_coverage
from gf_policy.vla import PI0StyleVLA, VLAProcessor
from gf_policy.vla.processing import clean_instruction
from gf_policy.vla.techniques import make_layout_mask

# ---------------------------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------------------------


def description_positions(processor: VLAProcessor, instruction: str, description: str) -> list[int]:
    """Prefix positions of the tokens that spell ``description`` inside ``instruction``."""
    text = clean_instruction(instruction) + "\n"
    target = clean_instruction(description)
    start = text.lower().rfind(target.lower())
    if start < 0:
        raise ValueError(f"the description {description!r} does not occur in the instruction {instruction!r}")
    end = start + len(target)
    enc = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    cfg = processor.config
    offset = cfg.num_images * cfg.tokens_per_image + 1  # image tokens, BOS
    positions = [offset + i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start and b > a]
    limit = cfg.num_images * cfg.tokens_per_image + cfg.max_text_tokens
    positions = [p for p in positions if p < limit]
    if not positions:
        raise ValueError(f"no token of {description!r} fits in the prompt (max_text_tokens={cfg.max_text_tokens})")
    return positions


@torch.no_grad()
def attention_maps(
    model: PI0StyleVLA, processor: VLAProcessor, image: np.ndarray, instruction: str, description: str,
) -> np.ndarray:
    """Attention of the description tokens to the image patches: (layers, heads, grid, grid),
    each entry the mean over description tokens of the attention probability on that patch."""
    cfg = model.config
    if cfg.num_images != 1:
        raise ValueError("attention maps are drawn for single-camera models")
    inputs = processor(image, instruction)
    device = model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    rows = description_positions(processor, instruction, description)
    embeds, pad = model.embed_prefix(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    record: list[torch.Tensor] = []
    model.attention_recorder = record
    try:
        model._run_layers(embeds, None, pad.long().cumsum(1) - 1, make_layout_mask(pad))
    finally:
        model.attention_recorder = None
    n_img = cfg.tokens_per_image
    grid = int(round(n_img**0.5))
    # record[l]: (1, heads, L, L); rows = description tokens, columns = image tokens.
    maps = torch.stack([w[0][:, rows, :n_img].float().mean(dim=1) for w in record])  # (layers, heads, n_img)
    return maps.reshape(len(record), maps.shape[1], grid, grid).cpu().numpy()


def select_maps(maps: np.ndarray, layers: str = "mean", heads: str = "mean") -> tuple[list[str], np.ndarray]:
    """Reduce (layers, heads, g, g) to panels: ``layers`` "mean" | "all" | "0,3" and ``heads``
    "mean" | "all" | "1"; returns panel names and (panels, g, g)."""
    n_layers, n_heads = maps.shape[:2]

    def pick(spec: str, n: int) -> list[int] | None:
        if spec == "mean":
            return None
        if spec == "all":
            return list(range(n))
        chosen = [int(x) for x in spec.split(",") if x.strip()]
        if any(not 0 <= c < n for c in chosen):
            raise ValueError(f"index out of range in {spec!r} (0..{n - 1})")
        return chosen

    layer_ids, head_ids = pick(layers, n_layers), pick(heads, n_heads)
    names, panels = [], []
    for li in layer_ids if layer_ids is not None else [None]:
        per_layer = maps.mean(axis=0) if li is None else maps[li]
        for hi in head_ids if head_ids is not None else [None]:
            panels.append(per_layer.mean(axis=0) if hi is None else per_layer[hi])
            names.append(f"{'layers avg' if li is None else f'layer {li}'}, {'heads avg' if hi is None else f'head {hi}'}")
    return names, np.stack(panels)


def attention_mass(heat: np.ndarray, quads: np.ndarray, image_size: int, target_index: int) -> dict[str, float]:
    """Attention mass on the target card, on the distractors, and the target's share.

    ``heat`` (g, g) attention probabilities on patches; ``quads`` (3, 4, 2) card corners in an
    image of ``image_size`` pixels (the model's input size)."""
    grid = heat.shape[0]
    cover = [quad_coverage(q, image_size, grid) for q in quads]
    masses = [float((heat * c).sum()) for c in cover]
    target = masses[target_index]
    distractors = sum(m for i, m in enumerate(masses) if i != target_index)
    return {"target": target, "distractors": distractors,
            "target_share": target / (target + distractors) if target + distractors > 0 else float("nan")}


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55, cmap: str = "jet") -> np.ndarray:
    """The heat map (g, g) upsampled onto ``image`` (H, W, 3) uint8 with a colour map (red = hot)."""
    from matplotlib import colormaps

    h, w = image.shape[:2]
    span = float(heat.max() - heat.min())
    norm = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    up = np.asarray(Image.fromarray((norm * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR))
    colours = colormaps[cmap](up.astype(np.float32) / 255.0)[..., :3]
    out = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colours
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelEntry:
    """One model to draw: a label, the model and its processor."""

    label: str
    model: PI0StyleVLA
    processor: VLAProcessor


@dataclass
class FigureResult:
    """What ``attention_figure`` drew: per model the reduced maps and the mass numbers."""

    figure: Path
    overlays: dict[str, Path] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # label -> (layers, heads, g, g)
    mass: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> mass of the averaged map


def attention_figure(
    models: Sequence[ModelEntry], image: np.ndarray, instruction: str, description: str, out: str | Path,
    quads: np.ndarray | None = None, target_index: int | None = None, layers: str = "mean", heads: str = "mean",
    title: str = "",
) -> FigureResult:
    """Draw the attention of the description tokens for each model, side by side, to ``out``
    (PNG); writes ``<out stem>_<label>.png`` overlays of the averaged map as well.

    ``quads`` (3, 4, 2): card corners in ``image``'s pixels (for the mass numbers), with the
    ``target_index`` card named by the instruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = FigureResult(out)
    rows = []
    for entry in models:
        maps = attention_maps(entry.model, entry.processor, image, instruction, description)
        names, panels = select_maps(maps, layers, heads)
        result.maps[entry.label] = maps
        mean_map = maps.mean(axis=(0, 1))
        if quads is not None and target_index is not None:
            scale = entry.model.config.image_size / image.shape[0]
            result.mass[entry.label] = attention_mass(mean_map, np.asarray(quads) * scale,
                                                      entry.model.config.image_size, target_index)
        path = out.with_name(f"{out.stem}_{_slug(entry.label)}.png")
        Image.fromarray(overlay(image, mean_map)).save(path)
        result.overlays[entry.label] = path
        rows.append((entry.label, names, panels))
    n_cols = 1 + max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.6 * n_cols, 2.8 * len(rows)), squeeze=False)
    for r, (label, names, panels) in enumerate(rows):
        axes[r, 0].imshow(image)
        mass = result.mass.get(label)
        axes[r, 0].set_title(label + (f"\ntarget share {mass['target_share']:.2f}" if mass else ""), fontsize=8)
        if quads is not None:
            for i, q in enumerate(np.asarray(quads)):
                closed = np.vstack([q, q[:1]])
                axes[r, 0].plot(closed[:, 0], closed[:, 1], color="lime" if i == target_index else "white", lw=1)
        for c in range(1, n_cols):
            ax = axes[r, c]
            if c - 1 < len(panels):
                ax.imshow(overlay(image, panels[c - 1]))
                ax.set_title(names[c - 1], fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle(title or f"{instruction}  [description: {description}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return result


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text).strip("_") or "model"


# ---------------------------------------------------------------------------------------------
# loading models, observations
# ---------------------------------------------------------------------------------------------


def load_model_for_attention(path: str | Path, device: str = "cpu") -> tuple[PI0StyleVLA, VLAProcessor]:
    """One of our checkpoints, or a Hugging Face PaliGemma directory (the VLM backbone; a minimal
    action expert is attached, which the prefix attention never uses)."""
    path = Path(path)
    data = json.loads((path / "config.json").read_text())
    if "vlm" in data:  # ours
        model = PI0StyleVLA.from_pretrained(path, device=device)
    elif data.get("model_type") == "paligemma":
        model = PI0StyleVLA.from_paligemma(path, cfg_overrides={"expert_hidden_size": 8, "expert_intermediate_size": 8})
        model = model.to(device)
    else:
        raise ValueError(f"{path} is neither a VLA checkpoint nor a PaliGemma directory")
    return model.eval(), VLAProcessor.from_pretrained(path, model.config)


def parse_trial(spec: str, split: str = DEFAULT_SPLIT, base_seed: int = 0) -> Any:
    """``PROTOCOL:INDEX`` -> the benchmark's ``TrialSpec``."""
    from gf_eval.splits import load_splits
    from gf_eval.trials import make_trial

    protocol, sep, index = spec.partition(":")
    if not sep or not index.isdigit():
        raise ValueError(f"--trial {spec!r} is not PROTOCOL:INDEX (e.g. Val:3)")
    return make_trial(protocol, int(index), base_seed, load_splits(split))


def render_trial(trial: Any, size: int = 224, split: str = DEFAULT_SPLIT) -> np.ndarray:
    """The policy camera's first image of a trial (needs the simulator)."""
    import gymnasium as gym

    import gf_sim_bridge.env  # noqa: F401  (registers GrinningFace-v1)

    env = gym.make("GrinningFace-v1", image_size=size, split=split)
    try:
        env.reset(seed=trial.seed, options={"trial": trial})
        return env.unwrapped.policy_image()
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------
# logging during training
# ---------------------------------------------------------------------------------------------


class AttentionMassProbe:
    """Mean attention mass on the target card over fixed observations (first frames of episodes
    whose trial is known); ``measure(model)`` -> ``{"target_share", "target", "distractors"}``."""

    def __init__(self, processor: VLAProcessor, samples: list[tuple[np.ndarray, str, str, np.ndarray, int]]):
        self.processor = processor
        self.samples = samples

    @classmethod
    def from_episodes(cls, episodes: Sequence[Any], processor: VLAProcessor, count: int = 8) -> AttentionMassProbe | None:
        """Up to ``count`` episodes with a trial spec (None when there is none, e.g. generated data)."""
        samples = []
        size = processor.config.image_size
        camera = None
        for ep in episodes:
            trial = getattr(ep, "trial", None)
            if not trial or len(samples) >= count:
                continue
            camera = camera or policy_camera(size)
            target = int(trial["target_index"])
            image = np.asarray(ep.images[0])
            scale = image.shape[0] / size
            quads = card_quads(trial, camera) * scale
            samples.append((image, ep.instruction, trial["cards"][target]["description"], quads, target))
        return cls(processor, samples) if samples else None

    @torch.no_grad()
    def measure(self, model: PI0StyleVLA) -> dict[str, float]:
        """Averages over samples of the layer- and head-averaged map's mass numbers."""
        was_training = model.training
        model.eval()
        try:
            rows = []
            for image, instruction, description, quads, target in self.samples:
                heat = attention_maps(model, self.processor, image, instruction, description).mean(axis=(0, 1))
                rows.append(attention_mass(heat, quads * (model.config.image_size / image.shape[0]),
                                           model.config.image_size, target))
        finally:
            model.train(was_training)
        return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-attention``."""
    parser = argparse.ArgumentParser(prog="gf-attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="our checkpoints and/or Hugging Face PaliGemma directories, drawn side by side")
    parser.add_argument("--trial", required=True, help="PROTOCOL:INDEX of the benchmark, e.g. Val:3")
    parser.add_argument("--labels", help="comma-separated row labels (default: directory names)")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help=f"split name or file (default {DEFAULT_SPLIT})")
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--image", type=Path, help="use this camera image instead of rendering the trial")
    parser.add_argument("--layers", default="mean", help="mean | all | comma-separated layer indices")
    parser.add_argument("--heads", default="mean", help="mean | all | comma-separated head indices")
    parser.add_argument("--out", type=Path, default=Path("attention.png"), help="figure path (PNG)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [p.name for p in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        parser.error("--labels needs one label per checkpoint")
    try:
        trial = parse_trial(args.trial, args.split, args.base_seed)
    except (ValueError, KeyError) as exc:
        parser.error(str(exc))
    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        print(f"[gf-attention] rendering {trial.trial_id} ...", file=sys.stderr)
        image = render_trial(trial, 224, args.split)
    if image.shape[0] != image.shape[1]:
        parser.error("the camera image must be square (the policy camera's)")
    quads = card_quads(trial, policy_camera(image.shape[0]))
    entries = []
    for label, path in zip(labels, args.checkpoints):
        print(f"[gf-attention] loading {path} ...", file=sys.stderr)
        model, processor = load_model_for_attention(path, args.device)
        entries.append(ModelEntry(label, model, processor))
    description = trial.target.description
    result = attention_figure(entries, image, trial.instruction, description, args.out, quads=quads,
                              target_index=trial.target_index, layers=args.layers, heads=args.heads,
                              title=f"{trial.trial_id}: {trial.instruction}")
    summary = {"trial": trial.trial_id, "instruction": trial.instruction, "description": description,
               "figure": str(result.figure), "overlays": {k: str(v) for k, v in result.overlays.items()},
               "mass": result.mass}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    for label, mass in result.mass.items():
        print(f"{label:>24}: target {mass['target']:.3f}  distractors {mass['distractors']:.3f}  "
              f"target share {mass['target_share']:.2f}")
    print(f"[gf-attention] wrote {result.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
