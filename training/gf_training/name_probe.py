"""An auxiliary naming target for VLM pre-training: which emoji does this image show?

Why: the mini VLM, trained from random weights with the next-token loss alone, names an emoji
on a card seen whole but hardly one lying on the table, where it is 6-10 px in the 128 px view
(less than one 16 px patch); ``gf-pixel-check`` shows the identity is in those pixels. The
language head learns it only once the vision tower has found the card and the text has learnt to
attend to its token, and both are learnt from one answer's gradient. A web-scale VLM's vision
tower arrives with that skill from its own pre-training (SigLIP's image-level objective). This
probe gives the mini tower an image-level objective of the same kind: from its image tokens,
name the one emoji of every per-emoji sample (``gf-vl-data glyphs``, ``cards``, ``tablecards``).

What it is: the image features the VLM's projector emits for the vision-language batch,
max-pooled over the tokens (an emoji occupies one or two of them, wherever it lies: the pooling
of ``gf-pixel-check``'s classifier), a LayerNorm and a linear layer over the emojis the
per-emoji samples show (``VLDataset.named_emojis``). Its loss, ``weight x`` cross-entropy over
the per-emoji samples of the batch (scenes carry ``NO_EMOJI`` and no loss), is added to the
model's. Training-only (``gf_training.image_heads``): the state is kept beside the checkpoints
(``name_probe.pt``); nothing of it reaches a checkpoint the rows start from.

The VL batch is embedded after the action batch (``PI0StyleVLA.forward``), so the probe reads
the last image features of a step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gf_policy.vla import PI0StyleVLA
from gf_training.image_heads import ImageFeatureHead
from gf_training.vl_format import EMOJI_LABEL, NO_EMOJI

NAME_PROBE_STATE = "name_probe.pt"


@dataclass
class NameProbeSection:
    """``name_probe``: the auxiliary emoji-naming target of VLM pre-training (``gf_training.name_probe``)."""

    weight: float = 0.0  # weight of its cross-entropy beside the model's loss (0: off)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError("need name_probe.weight >= 0")


class NameProbeHead(nn.Module):
    """Max-pooling over image tokens, LayerNorm, one linear layer to ``classes`` logits."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(tokens.amax(dim=1)))


class NameProbe(ImageFeatureHead):
    """The head on the vision-language batch's image features; ``cross_entropy(vl_batch)`` after a forward."""

    state_file = NAME_PROBE_STATE

    def __init__(self, model: PI0StyleVLA, classes: int, lr: float, lr_factor: Callable[[int], float],
                 device: torch.device):
        if classes < 2:
            raise ValueError(f"name_probe needs per-emoji samples of at least two emojis, the data has {classes}")
        super().__init__(model, NameProbeHead(self.feature_width(model), classes), lr, lr_factor, device)

    def logits(self) -> torch.Tensor:
        """Logits for the vision-language batch of the last forward (its last image features)."""
        return self.head(self.features(-1))

    def cross_entropy(self, vl_batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the batch's per-emoji samples (0 if it has none); clears the
        captured features."""
        try:
            logits = self.logits()
            labels = vl_batch[EMOJI_LABEL].to(logits.device)
            named = labels != NO_EMOJI
            if not bool(named.any()):
                return logits.sum() * 0.0  # keeps the graph (and every rank's collective) alike
            return nn.functional.cross_entropy(logits[named], labels[named])
        finally:
            self.clear()
