"""The analytic FLOP model of ``PI0StyleVLA`` (per training forward, per inference, per optimiser
step), parameter counts, and torch's FLOP counter on a meta-device copy as its cross-check.

FLOPs count matrix multiplications (2 per multiply-add), as torch's FLOP counter does:
projections, MLPs, attention scores and values (dense: the block mask is applied to a full
score matrix), patch embedding, the SigLIP->Gemma projector and the action head. Norms,
activations, RoPE and softmax are left out (a few percent).

Separate from the timing in ``bench_measure``: these are pure functions of a ``VLAConfig``
(no data, no compute), testable against the counter on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gf_policy.vla.vision_stem import stem_widths

TRAIN_BACKWARD_FACTOR = 2.0  # backward ~ 2x forward for matmuls (input and weight gradients)


@dataclass
class FlopBreakdown:
    """Matmul FLOPs of one sample, by part."""

    vision: float  # SigLIP incl. patch embedding, and the projector into the VLM width
    prefix: float  # VLM layers over the image+text prefix (projections + MLPs)
    suffix: float  # expert layers over proprio+action tokens, and the action/proprio/time heads
    attention: float  # scores and weighted values, all layers

    @property
    def total(self) -> float:
        return self.vision + self.prefix + self.suffix + self.attention


def _text_dims(cfg: Any) -> tuple[int, int, int, int, int, int]:
    t = cfg.text_config
    heads, kv = int(t["num_attention_heads"]), int(t["num_key_value_heads"])
    head_dim = int(t.get("head_dim") or t["hidden_size"] // heads)
    return int(t["hidden_size"]), int(t["intermediate_size"]), int(t["num_hidden_layers"]), heads, kv, head_dim


def _layer_proj_flops(tokens: int, width: int, mlp: int, heads: int, kv: int, head_dim: int,
                      with_out: bool = True) -> float:
    qkv = 2 * tokens * width * (heads + 2 * kv) * head_dim
    out = 2 * tokens * heads * head_dim * width + 3 * 2 * tokens * width * mlp if with_out else 0
    return float(qkv + out)


def vision_flops(cfg: Any) -> float:
    """SigLIP tower + projector for one sample (all its camera images)."""
    v = cfg.vision_config
    d, f, layers, patch = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["num_hidden_layers"]), int(v["patch_size"])
    p = cfg.tokens_per_image
    per_layer = 4 * 2 * p * d * d + 2 * 2 * p * d * f + 2 * 2 * p * p * d
    widths = stem_widths(v)
    if widths is None:
        embed = 2 * p * 3 * patch * patch * d
    else:  # gf_policy.vla.vision_stem: 3x3 convolutions, each at the resolution before its pooling
        side, channels, embed = cfg.image_size, 3, 0
        for width in widths:
            embed += 2 * side * side * 9 * channels * width
            side, channels = side // 2, width
        embed += 2 * p * channels * d
    projector = 2 * p * d * int(cfg.text_config["hidden_size"])
    return float(cfg.num_images * (layers * per_layer + embed + projector))


def _suffix_heads_flops(cfg: Any) -> float:
    w, h = cfg.expert_hidden_size, cfg.action_horizon
    a, s = cfg.model_action_dim, cfg.model_proprio_dim
    return float(2 * s * w + 2 * h * a * w + 2 * h * 2 * w * w + 2 * h * w * w + 2 * h * w * a)


def forward_flops(cfg: Any) -> FlopBreakdown:
    """One training forward (``compute_loss``) for one sample: the full joint pass, no cache."""
    width, mlp, layers, heads, kv, hd = _text_dims(cfg)
    lp, ls = cfg.prefix_length, 1 + cfg.action_horizon
    # the last layer skips the prefix's output projection and MLP (nothing reads them)
    prefix = (layers - 1) * _layer_proj_flops(lp, width, mlp, heads, kv, hd) + _layer_proj_flops(
        lp, width, mlp, heads, kv, hd, with_out=False)
    suffix = layers * _layer_proj_flops(ls, cfg.expert_hidden_size, cfg.expert_intermediate_size, heads, kv, hd)
    attention = layers * 2 * 2 * (lp + ls) ** 2 * heads * hd
    return FlopBreakdown(vision_flops(cfg), prefix, suffix + _suffix_heads_flops(cfg), float(attention))


def inference_flops(cfg: Any, num_steps: int | None = None, use_cache: bool = True) -> FlopBreakdown:
    """One ``sample_actions`` call for one sample: prefix once (KV cache) + N suffix passes;
    without the cache every step is a full joint pass."""
    steps = num_steps or cfg.num_inference_steps
    if not use_cache:
        f = forward_flops(cfg)
        return FlopBreakdown(f.vision, steps * f.prefix, steps * f.suffix, steps * f.attention)
    width, mlp, layers, heads, kv, hd = _text_dims(cfg)
    lp, ls = cfg.prefix_length, 1 + cfg.action_horizon
    prefix = (layers - 1) * _layer_proj_flops(lp, width, mlp, heads, kv, hd) + _layer_proj_flops(
        lp, width, mlp, heads, kv, hd, with_out=False)
    suffix = steps * (layers * _layer_proj_flops(ls, cfg.expert_hidden_size, cfg.expert_intermediate_size,
                                                 heads, kv, hd) + _suffix_heads_flops(cfg))
    attention = layers * (2 * 2 * lp * lp * heads * hd + steps * 2 * 2 * ls * (lp + ls) * heads * hd)
    return FlopBreakdown(vision_flops(cfg), prefix, suffix, float(attention))


def train_step_flops(cfg: Any, batch_size: int) -> float:
    """FLOPs of one full-fine-tuning optimiser step (forward + backward ~ 3x forward)."""
    return (1 + TRAIN_BACKWARD_FACTOR) * forward_flops(cfg).total * batch_size


def count_parameters(cfg: Any) -> dict[str, int]:
    """Parameter counts of the model ``cfg`` describes, from a meta-device instance (no memory)."""
    from gf_policy.vla import PI0StyleVLA

    with torch.device("meta"):
        model = PI0StyleVLA(cfg)
    vlm = model.vlm
    return {
        "vision": sum(p.numel() for p in vlm.model.vision_tower.parameters())
        + sum(p.numel() for p in vlm.model.multi_modal_projector.parameters()),
        "language": sum(p.numel() for p in vlm.model.language_model.parameters()),
        "expert": sum(p.numel() for p in model.expert.parameters()),
        "total": sum(p.numel() for p in model.parameters()),
    }


def counted_forward_flops(cfg: Any) -> float:
    """torch's FLOP counter over the training forward of one sample on a meta-device model.

    Runs the vision tower and ``predict_velocity`` (what ``compute_loss`` runs, minus its
    data-dependent checks, which a meta tensor cannot answer).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from gf_policy.vla import PI0StyleVLA

    width = int(cfg.text_config["hidden_size"])
    with torch.device("meta"):
        model = PI0StyleVLA(cfg)
        pixels = torch.zeros(cfg.num_images, 3, cfg.image_size, cfg.image_size)
        prefix = torch.zeros(1, cfg.prefix_length, width)
        pad = torch.ones(1, cfg.prefix_length, dtype=torch.bool)
        proprio = torch.zeros(1, cfg.model_proprio_dim)
        noisy = torch.zeros(1, cfg.action_horizon, cfg.model_action_dim)
        time_ = torch.zeros(1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.vlm.model.get_image_features(pixels)
        model.predict_velocity(prefix, pad, proprio, noisy, time_)
    return float(counter.get_total_flops())
