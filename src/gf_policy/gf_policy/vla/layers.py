"""Building blocks of the joint VLM + action-expert transformer (no ``PI0StyleVLA`` state here).

The block mask of pi0's token layout, the flow-matching time embedding, rotary embeddings, the
attention kernel every joint layer runs, and the action expert's parameter container.
``PI0StyleVLA`` drives them layer by layer (``joint``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaConfig, GemmaDecoderLayer, GemmaRMSNorm

# Per-layer (keys, values) of the tokens already encoded, each (B, KV heads, L, head dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]

# Block ids of the three token groups; a query may attend to keys of its own or a lower block.
PREFIX_BLOCK, PROPRIO_BLOCK, ACTION_BLOCK = 0, 1, 2


def unwrap(module: nn.Module) -> nn.Module:
    """The underlying module of a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def make_block_attention_mask(prefix_pad_mask: torch.Tensor, suffix_len: int) -> torch.Tensor:
    """Boolean mask (B, L, L) for [prefix | proprio | actions], True = may attend.

    ``prefix_pad_mask`` (B, Lp) marks valid prefix tokens; ``suffix_len`` = 1 + action horizon.
    Padded prefix tokens are masked as keys only, so no query row is ever fully masked.
    """
    batch, prefix_len = prefix_pad_mask.shape
    device = prefix_pad_mask.device
    blocks = torch.full((prefix_len + suffix_len,), ACTION_BLOCK, device=device)
    blocks[:prefix_len] = PREFIX_BLOCK
    if suffix_len:
        blocks[prefix_len] = PROPRIO_BLOCK
    allowed = blocks[None, :] <= blocks[:, None]  # [query, key]
    key_valid = torch.cat([prefix_pad_mask.bool(), torch.ones(batch, suffix_len, dtype=torch.bool, device=device)], 1)
    return allowed[None] & key_valid[:, None, :]


def sinusoidal_time_embedding(time: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """pi0's sine/cosine embedding of the flow-matching time, (B,) -> (B, dim), in float32.

    Periods are spaced geometrically from ``min_period`` to ``max_period``.
    """
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angular_freq = 1.0 / period * 2 * math.pi
    angle = angular_freq[None, :] * time.float()[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half layout used by Gemma checkpoints; x is (B, H, L, D)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, impl: str,
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Grouped-query attention with an explicit boolean mask (B, Lq, Lk); returns (B, Lq, H * D).

    With ``record`` (a list) the explicit softmax runs and the weights (B, H, Lq, Lk) are
    appended to it (attention maps, ``gf_training.attention``)."""
    batch, heads, q_len, head_dim = q.shape
    if k.shape[1] != heads:  # GQA: query head h reads key/value head h // group
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    scaling = head_dim**-0.5
    if impl == "sdpa" and record is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scaling)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
        scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if record is not None:
            record.append(weights.detach())
        out = torch.matmul(weights, v)
    return out.transpose(1, 2).reshape(batch, q_len, heads * head_dim)


class ActionExpert(nn.Module):
    """Gemma decoder layers and a final RMSNorm, without token embeddings.

    Uses transformers' Gemma modules as parameter containers (so names and numerics line up with
    Gemma / pi0 checkpoints); the joint attention is run by ``PI0StyleVLA``.
    """

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.layers = nn.ModuleList([GemmaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
