"""Turn camera images and instructions into model inputs (PaliGemma prompt format).

Images: uint8 H x W x 3 RGB, cropped to the configured part of the frame (``image_crop``, if
set), resized with Pillow (bicubic, as PaliGemma's own processor) to the configured square size
and normalised the SigLIP way, ``(x / 255 - 0.5) / 0.5`` -> [-1, 1]. The crop-and-resize rule is
``gf_bringup.images.fit_image``, shared with training's episode cache and the remote backends.

Prompt (PaliGemma / pi0): ``<image> * (num_images * tokens_per_image) + <bos> + text + "\\n"``,
right-padded to ``num_images * tokens_per_image + max_text_tokens`` with an attention mask. The
image-token id is the model's (``VLAConfig.image_token_id``), so any tokenizer works: a real
PaliGemma tokenizer from a checkpoint directory, or a tiny one trained offline for tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gf_bringup.images import fit_image

from .configuration import VLAConfig
from .local_files import local_dir

ImageInput = np.ndarray | Sequence[np.ndarray] | Sequence[Sequence[np.ndarray]]

# Special tokens of the offline test tokenizer, in Gemma's id order (pad 0, eos 1, bos 2, unk 3),
# followed by the image token (id 4, the default image_token_id of VLAConfig.tiny()).
TINY_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>")


def clean_instruction(text: str) -> str:
    """Normalise an instruction the way pi0 does before tokenising (one line, no underscores)."""
    return text.strip().replace("_", " ").replace("\n", " ")


def _as_nested_images(images: ImageInput) -> list[list[np.ndarray]]:
    """Normalise every accepted image layout to ``batch[sample][camera]``.

    Accepted: one H x W x 3 array (batch 1, one camera); a B x H x W x 3 array or a list of
    H x W x 3 arrays (batch of one-camera samples); a B x N x H x W x 3 array or a list of lists
    (batch of multi-camera samples).
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [[images]]
        if images.ndim == 4:
            return [[img] for img in images]
        if images.ndim == 5:
            return [list(sample) for sample in images]
        raise ValueError(f"image array must have 3, 4 or 5 dimensions, got shape {images.shape}")
    nested = []
    for sample in images:
        if isinstance(sample, np.ndarray) and sample.ndim == 3:
            nested.append([sample])
        else:
            nested.append(list(sample))
    return nested


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0, 1] -> the range the vision tower reads, [-1, 1] (SigLIP's)."""
    return (pixels - 0.5) / 0.5


class VLAProcessor:
    """Image preprocessing and prompt tokenisation for ``PI0StyleVLA``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: VLAConfig):
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer needs a BOS token (PaliGemma prompt format)")
        self.tokenizer = tokenizer
        self.config = config
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: VLAConfig) -> VLAProcessor:
        """Load the tokenizer saved in ``directory`` (ours, or a real PaliGemma tokenizer)."""
        return cls(AutoTokenizer.from_pretrained(str(local_dir(directory, "tokenizer"))), config)

    def for_fitted_images(self) -> VLAProcessor:
        """This processor for images already cropped and resized by ``fit_image`` (training's
        decoded episodes and VL samples, a remote client's frames): cropping them again would show
        the model another part of the table than the camera frame shows it at inference."""
        if self.config.image_crop is None:
            return self
        return VLAProcessor(self.tokenizer, self.config.replace(image_crop=None))

    def save_pretrained(self, directory: str | Path) -> None:
        """Save the tokenizer files next to the model."""
        self.tokenizer.save_pretrained(str(directory))

    # ------------------------------------------------------------------ images
    def preprocess_image(self, image: np.ndarray) -> torch.Tensor:
        """One uint8 H x W x 3 image -> float tensor (3, S, S) in [-1, 1]."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"expected a uint8 H x W x 3 RGB image, got {desc}")
        image = fit_image(image, self.config.image_size, self.config.image_crop)
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
        return to_model_range(x / 255.0)

    def preprocess_images(self, images: ImageInput) -> torch.Tensor:
        """Images in any accepted layout -> (B, num_images, 3, S, S)."""
        nested = _as_nested_images(images)
        for sample in nested:
            if len(sample) != self.config.num_images:
                raise ValueError(f"each sample needs {self.config.num_images} camera image(s), got {len(sample)}")
        return torch.stack([torch.stack([self.preprocess_image(img) for img in sample]) for sample in nested])

    # ------------------------------------------------------------------ text
    def tokenize(self, instructions: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instructions -> (input_ids, attention_mask), each (B, prefix_length), right-padded.

        Text longer than ``max_text_tokens`` (including BOS and the trailing newline) is truncated,
        with a warning: the end of an instruction is the emoji's name, which is then lost.
        """
        if isinstance(instructions, str):
            instructions = [instructions]
        cfg = self.config
        n_img = cfg.num_images * cfg.tokens_per_image
        length = n_img + cfg.max_text_tokens
        ids = torch.full((len(instructions), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(instructions), length), dtype=torch.bool)
        for row, text in enumerate(instructions):
            text_ids = self.tokenizer.encode(clean_instruction(text) + "\n", add_special_tokens=False)
            if 1 + len(text_ids) > cfg.max_text_tokens and not getattr(self, "_warned_truncation", False):
                self._warned_truncation = True  # once per processor: a run's log, not one line per batch
                warnings.warn(f"{1 + len(text_ids)} tokens for {text!r} exceed max_text_tokens={cfg.max_text_tokens}: "
                              "its end is cut off (raise max_text_tokens, or use a tokenizer that knows these words)",
                              TruncatedInstructionWarning, stacklevel=2)
            tokens = ([cfg.image_token_id] * n_img + [self.tokenizer.bos_token_id] + list(text_ids))[:length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = True
        return ids, mask

    def __call__(self, images: ImageInput, instructions: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Images + instructions -> ``pixel_values`` (B, N, 3, S, S), ``input_ids``, ``attention_mask``."""
        pixel_values = self.preprocess_images(images)
        input_ids, attention_mask = self.tokenize(instructions)
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} image samples but {input_ids.shape[0]} instructions")
        return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class TruncatedInstructionWarning(UserWarning):
    """An instruction longer than the model's text budget lost its end (usually the emoji's name)."""


def train_tiny_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerBase:
    """Train a small BPE tokenizer on ``texts`` offline and save it transformers-loadable.

    Special tokens follow Gemma's id order (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3)
    plus ``<image>`` at id 4. ``AutoTokenizer.from_pretrained(out_dir)`` loads the result.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(TINY_SPECIAL_TOKENS), show_progress=False
    )
    # Train on the prompt form (cleaned text + newline) so the newline is in the vocabulary.
    core.train_from_iterator([clean_instruction(t) + "\n" for t in texts], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        extra_special_tokens=["<image>"],
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
