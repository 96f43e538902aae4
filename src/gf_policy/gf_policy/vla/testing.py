"""Helpers for tests and benchmarks: synthetic batches for tiny configurations (no tokenizer needed)."""

from __future__ import annotations

import torch

from .configuration import VLAConfig

BOS_ID = 2  # Gemma's (and the tiny test tokenizer's) BOS id


def make_batch(
    config: VLAConfig,
    batch_size: int = 2,
    seed: int = 0,
    text_lengths: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """A random training batch in the processor's layout (image tokens, BOS, text, right padding).

    ``text_lengths`` (tokens after BOS, per sample) default to a mix of lengths so that padding
    is exercised. Proprio and actions are uniform in [-1, 1] (already "normalised").
    """
    gen = torch.Generator().manual_seed(seed)
    n_img = config.num_images * config.tokens_per_image
    length = n_img + config.max_text_tokens
    if text_lengths is None:
        text_lengths = [max(1, config.max_text_tokens - 1 - 3 * (i % 3)) for i in range(batch_size)]
    vocab = int(config.text_config["vocab_size"])
    input_ids = torch.zeros(batch_size, length, dtype=torch.long)
    attention_mask = torch.zeros(batch_size, length, dtype=torch.bool)
    for row, n_text in enumerate(text_lengths):
        text = torch.randint(5, vocab, (n_text,), generator=gen)
        text[text == config.image_token_id] = 5
        tokens = torch.cat([torch.full((n_img,), config.image_token_id), torch.tensor([BOS_ID]), text])
        input_ids[row, : len(tokens)] = tokens
        attention_mask[row, : len(tokens)] = True
    size = config.image_size
    return {
        "pixel_values": torch.rand(batch_size, config.num_images, 3, size, size, generator=gen) * 2 - 1,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "proprio": torch.rand(batch_size, config.proprio_dim, generator=gen) * 2 - 1,
        "actions": torch.rand(batch_size, config.action_horizon, config.action_dim, generator=gen) * 2 - 1,
    }


def make_noise(config: VLAConfig, batch_size: int, seed: int = 0) -> torch.Tensor:
    """Fixed sampling noise (B, H, model_action_dim)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, config.action_horizon, config.model_action_dim, generator=gen)


def save_tiny_checkpoint(directory, texts: list[str], action_horizon: int | None = None, seed: int = 0):
    """A tiny-config checkpoint with random weights, normalisation statistics and a tokenizer
    trained on ``texts``, saved to ``directory`` (tests and benchmarks of serving code)."""
    from pathlib import Path

    import numpy as np

    from .modeling import PI0StyleVLA
    from .normalization import NormStats
    from .processing import VLAProcessor, train_tiny_tokenizer

    directory = Path(directory)
    cfg = VLAConfig.tiny() if action_horizon is None else VLAConfig.tiny(action_horizon=action_horizon)
    torch.manual_seed(seed)
    model = PI0StyleVLA.from_config(cfg)
    rng = np.random.default_rng(seed)
    model.norm_stats = {"proprio": NormStats.from_data(rng.normal(0, 0.2, (300, cfg.proprio_dim))),
                        "actions": NormStats.from_data(rng.uniform(-0.5, 0.5, (300, cfg.action_dim)))}
    model.save_pretrained(directory, processor=VLAProcessor(train_tiny_tokenizer(texts, 200, directory / "tok"), cfg))
    return directory
