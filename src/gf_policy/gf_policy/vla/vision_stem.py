"""A convolutional stem in place of the vision tower's patch embedding (a hybrid ViT).

SigLIP cuts the image into patches and maps each patch's pixels to one token by a linear map. An
object much smaller than a patch (an emoji on the table is 6-10 px of a 128 px view, inside one
16 px patch, anywhere in it) then reaches the tower as a small shift of a linear function whose
weights depend on where in the patch it lies; a web-scale SigLIP has seen enough images to cope,
a small tower trained from scratch has not. The stem looks at every position with the same small
filters first: per width, a 3x3 convolution, ReLU and 2x2 max-pooling (``gf-pixel-check``'s
classifier is built the same way), until the grid is the patch grid; a 1x1 convolution then
gives each cell the tower's width. The tokens, their number and everything after are SigLIP's.

It is part of the VLM's configuration: ``vision_config["conv_stem"]`` lists the widths, one per
halving, so ``2 ** len(widths)`` must equal the patch size. The key travels in a Hugging Face
PaliGemma ``config.json`` (``gf-vlm export``); ``transformers`` loads such a directory without the
stem (it warns that the patch embedding is missing), so ``PI0StyleVLA.from_paligemma`` installs
the stem afterwards and loads its weights from the directory (``load_conv_stem``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

STEM_KEY = "conv_stem"  # the key in a PaliGemma vision_config that lists the stem's widths


def stem_widths(vision_config: Any) -> list[int] | None:
    """The stem's widths from a vision config (a dict or a transformers config), or None."""
    value = vision_config.get(STEM_KEY) if isinstance(vision_config, dict) else getattr(vision_config, STEM_KEY, None)
    return [int(w) for w in value] if value else None


def check_stem(widths: Sequence[int], patch_size: int) -> None:
    """Raise ``ValueError`` unless the stem's poolings make up exactly one patch."""
    if 2 ** len(widths) != patch_size or min(widths) < 1:
        raise ValueError(f"vision_config.{STEM_KEY}={list(widths)}: need one positive width per halving of the "
                         f"patch size {patch_size} (2 ** {len(widths)} = {2 ** len(widths)})")


class ConvStem(nn.Module):
    """Image (B, 3, S, S) -> (B, out_width, S / 2**n, S / 2**n), n = len(widths)."""

    def __init__(self, widths: Sequence[int], out_width: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.layers = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, out_width, 1)

    @property
    def weight(self) -> torch.Tensor:
        """SigLIP's embeddings read the input dtype from their patch embedding's weight."""
        return self.proj.weight

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layers(pixel_values))


def install_conv_stem(paligemma: nn.Module) -> bool:
    """Replace the vision tower's patch embedding by the stem its config asks for (if any and
    not yet installed); True if the model has a stem afterwards."""
    tower = paligemma.model.vision_tower
    widths = stem_widths(tower.config)
    if widths is None:
        return False
    embeddings = tower.embeddings
    if not isinstance(embeddings.patch_embedding, ConvStem):
        check_stem(widths, int(tower.config.patch_size))
        embeddings.patch_embedding = ConvStem(widths, int(tower.config.hidden_size))
    return True


def load_conv_stem(paligemma: nn.Module, directory: Path) -> None:
    """The stem's weights from a Hugging Face PaliGemma directory (``model*.safetensors``), into the
    stem ``install_conv_stem`` put in ``paligemma``; every weight of the stem must be there."""
    marker = "embeddings.patch_embedding."
    state: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("model*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            state.update({k.split(marker, 1)[1]: f.get_tensor(k) for k in f.keys() if marker in k})
    stem = paligemma.model.vision_tower.embeddings.patch_embedding
    try:
        stem.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{directory}: its config asks for a convolutional stem its weights do not hold: {exc}") from exc
