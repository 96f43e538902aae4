"""Pure helpers for the training targets beyond flow matching (no model weights here).

* ``ActionDiscretizer``: 256 uniform bins per action dimension over the normalised range
  [-1, 1] (OpenVLA / RT-2 style). Bin ``b`` of a value ``x`` is ``floor((x + 1) / 2 * bins)``
  clipped to ``[0, bins - 1]``; decoding returns the bin centre, so a round trip is exact to
  within half a bin width (``1 / bins`` for the range [-1, 1]).
* ``reserved_token_ranges``: where those bins (and latent-action codes) live in the VLM's
  vocabulary. The last ``num_action_bins`` ids are the action bins (they *overwrite* the last
  vocabulary tokens, as OpenVLA does); latent-action codes, when predicted as tokens, take the
  ``latent_codebook_size`` ids just below them. A tokenizer trained for such a model must stay
  below the lowest reserved id (``gf_training`` trains its offline tokenizer that way).
* ``make_layout_mask``: the attention mask of the extended token layout

      [ prefix | VLM block | expert suffix ]

  - prefix (image + text): bidirectional among valid prefix tokens (PaliGemma's prefix-LM);
  - VLM block (proprio "state" token, latent-action queries, discrete action queries or tokens;
    run with the VLM's weights): sees the prefix and its own block, bidirectionally (parallel
    decoding) or causally (autoregressive decoding);
  - expert suffix (proprio, [latent actions], actions; the action expert's weights): sees the
    prefix and earlier-or-equal expert blocks as in pi0, but *never* the VLM block, so the
    flow-matching expert cannot read discrete predictions that do not exist at inference time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActionDiscretizer:
    """Uniform binning of normalised actions (values outside [low, high] fall in the end bins)."""

    num_bins: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.num_bins < 2 or not self.high > self.low:
            raise ValueError("need num_bins >= 2 and high > low")

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / self.num_bins

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Values (...,) -> bin indices (...,) int64 in [0, num_bins - 1]."""
        scaled = (x.float() - self.low) / self.bin_width
        return scaled.floor().clamp(0, self.num_bins - 1).long()

    def decode(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin indices -> bin centres (float32)."""
        return self.low + (bins.float().clamp(0, self.num_bins - 1) + 0.5) * self.bin_width


@dataclass(frozen=True)
class TokenRange:
    """A contiguous range of vocabulary ids ``[start, start + size)``."""

    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def ids(self, index: torch.Tensor) -> torch.Tensor:
        """Index within the range -> vocabulary id."""
        return index + self.start

    def index(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary id -> index within the range."""
        return ids - self.start


def reserved_token_ranges(vocab_size: int, num_action_bins: int, latent_codes: int) -> tuple[TokenRange, TokenRange]:
    """(action-bin range, latent-code range) at the end of a vocabulary of ``vocab_size``.

    A size of 0 gives an empty range (the technique is off)."""
    actions = TokenRange(vocab_size - num_action_bins, num_action_bins)
    latents = TokenRange(actions.start - latent_codes, latent_codes)
    if latents.start < 0:
        raise ValueError(f"a vocabulary of {vocab_size} cannot hold {num_action_bins} action bins and "
                         f"{latent_codes} latent codes")
    return actions, latents


def make_layout_mask(
    prefix_pad_mask: torch.Tensor,
    vlm_block_len: int = 0,
    vlm_block_causal: bool = False,
    expert_blocks: Sequence[int] = (),
) -> torch.Tensor:
    """Boolean mask (B, L, L), True = may attend, for ``[prefix | VLM block | expert suffix]``.

    ``expert_blocks`` gives the block id (1, 2, ...) of each expert token in order, e.g.
    ``[1, 2, 2, 2, 2]`` for pi0's proprio + 4 actions; an expert token sees the prefix and the
    expert tokens of its own or a lower block. With no VLM block this equals
    ``make_block_attention_mask``.
    """
    batch, prefix_len = prefix_pad_mask.shape
    device = prefix_pad_mask.device
    n_expert = len(expert_blocks)
    total = prefix_len + vlm_block_len + n_expert
    # kind: 0 prefix, 1 VLM block, 2 expert
    kind = torch.zeros(total, dtype=torch.long, device=device)
    kind[prefix_len : prefix_len + vlm_block_len] = 1
    kind[prefix_len + vlm_block_len :] = 2
    block = torch.zeros(total, dtype=torch.long, device=device)
    if n_expert:
        block[prefix_len + vlm_block_len :] = torch.as_tensor(list(expert_blocks), device=device)
    q_kind, k_kind = kind[:, None], kind[None, :]
    index = torch.arange(total, device=device)
    allowed = k_kind == 0  # everyone sees the (valid) prefix
    in_vlm = (q_kind == 1) & (k_kind == 1)
    if vlm_block_causal:
        in_vlm = in_vlm & (index[None, :] <= index[:, None])
    allowed = allowed | in_vlm
    allowed = allowed | ((q_kind == 2) & (k_kind == 2) & (block[None, :] <= block[:, None]))
    key_valid = torch.cat(
        [prefix_pad_mask.bool(), torch.ones(batch, total - prefix_len, dtype=torch.bool, device=device)], 1
    )
    return allowed[None] & key_valid[:, None, :]


def make_prefix_lm_mask(attention_mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """PaliGemma's prefix-LM mask (B, L, L) for captioning / question answering.

    Non-target tokens (image, BOS, question, newline) attend bidirectionally among themselves;
    target tokens (the answer and its EOS) attend to the prefix and causally to earlier targets.
    Padding is masked as keys only."""
    length = attention_mask.shape[1]
    index = torch.arange(length, device=attention_mask.device)
    block = torch.where(target_mask.bool(), index[None, :] + 1, torch.zeros_like(index)[None, :])  # (B, L)
    allowed = block[:, None, :] <= block[:, :, None]
    return allowed & attention_mask.bool()[:, None, :]
