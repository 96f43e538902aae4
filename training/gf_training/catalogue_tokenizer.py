"""A tiny tokenizer that covers every emoji of the catalogue, for models that must name any emoji.

A run's own tokenizer (``gf_training.build.build_processor``) is trained on its demos' instructions
and VL texts: with Train demos only, held-out names split into many pieces or unknown characters
(``<unk>``), and a long instruction can exceed ``max_text_tokens`` and lose the end of its emoji
name. A VLM that is to know every emoji, and the rows fine-tuned from it, need one tokenizer
trained on all the texts any of them will see: every catalogue name in the instruction template,
and every question and answer form of ``gf-vl-data``. Rows then share it with
``model.tokenizer: DIR``, so they differ only in what the comparison varies.

``gf-vl-data tokenizer --out DIR [--vocab-size N]`` writes it and reports its coverage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gf_bringup.constants import DEFAULT_SPLIT

# 1024 ids in the mini VLM's vocabulary, less the ids discrete action bins (256) and latent codes
# (32) may overwrite at its end (VLAConfig.reserved_vocab_size): one tokenizer serves every row.
DEFAULT_VOCAB_SIZE = 736


def catalogue_texts(split: str = DEFAULT_SPLIT) -> list[str]:
    """Every text form a model of the comparison reads or writes, for every catalogue emoji."""
    from gf_eval.camera import POSITION_NAMES
    from gf_eval.splits import load_splits
    from gf_training.vl_generate import catalogue_entries
    from gf_training.vl_samples import (
        CARD_QUESTIONS,
        CUBE_QUESTIONS,
        TABLETOP_QUESTIONS,
        WHICH_QUESTIONS,
        location_answer,
        tabletop_answer,
    )

    splits = load_splits(split)
    entries = catalogue_entries(splits)
    texts = [*CARD_QUESTIONS, *TABLETOP_QUESTIONS, *CUBE_QUESTIONS, *POSITION_NAMES]
    texts += [location_answer((x, x), 100, 100) for x in range(100)]
    for i, entry in enumerate(entries):
        texts += [splits.instruction(entry), entry.description]
        texts.append(WHICH_QUESTIONS[i % len(WHICH_QUESTIONS)].format(desc=entry.description))
        texts.append(tabletop_answer([e.description for e in (entry, entries[i - 1], entries[i - 2])]))
    return sorted(set(texts))


@dataclass(frozen=True)
class Coverage:
    names: int
    names_with_unknown: list[str]
    longest_instruction: int  # tokens, with BOS and the newline the prompt adds
    longest_name: int

    def summary(self) -> str:
        unknown = ", ".join(self.names_with_unknown[:5]) or "none"
        return (f"{self.names} names, {len(self.names_with_unknown)} with unknown characters ({unknown}); "
                f"longest instruction {self.longest_instruction} tokens, longest name {self.longest_name}")


def coverage(tokenizer: Any, split: str = DEFAULT_SPLIT) -> Coverage:
    """How ``tokenizer`` encodes every catalogue emoji's name and instruction."""
    from gf_eval.splits import load_splits
    from gf_policy.vla.processing import clean_instruction
    from gf_training.vl_generate import catalogue_entries

    splits = load_splits(split)
    entries = catalogue_entries(splits)
    unk = tokenizer.unk_token_id
    unknown, longest_instruction, longest_name = [], 0, 0
    for entry in entries:
        name = tokenizer.encode(entry.description, add_special_tokens=False)
        prompt = tokenizer.encode(clean_instruction(splits.instruction(entry)) + "\n", add_special_tokens=False)
        if unk in name:
            unknown.append(entry.description)
        longest_name = max(longest_name, len(name))
        longest_instruction = max(longest_instruction, len(prompt) + 1)
    return Coverage(len(entries), unknown, longest_instruction, longest_name)


def build_catalogue_tokenizer(out: str | Path, split: str = DEFAULT_SPLIT, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train and save the tokenizer (``AutoTokenizer``-loadable); returns it."""
    from gf_policy.vla.processing import train_tiny_tokenizer

    return train_tiny_tokenizer(catalogue_texts(split), vocab_size, Path(out))
