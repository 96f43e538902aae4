"""The catalogue tokenizer (gf-vl-data tokenizer): every emoji name encodes without unknown
characters, round-trips, and every instruction fits the mini VLM's text budget."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from gf_eval.splits import load_splits
from gf_training.catalogue_tokenizer import DEFAULT_VOCAB_SIZE, coverage
from gf_training.vl_data import catalogue_entries, main

MINI_VLM_MAX_TEXT_TOKENS = 24  # configs/mini: the prompt budget the comparison's models get


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "catalogue"
    assert main(["tokenizer", "--out", str(out)]) == 0
    return out


def test_every_catalogue_name_is_covered_and_fits_the_prompt(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert len(tokenizer) == DEFAULT_VOCAB_SIZE
    report = coverage(tokenizer)
    assert report.names == 1377 and report.names_with_unknown == []
    assert report.longest_instruction <= MINI_VLM_MAX_TEXT_TOKENS
    entries = catalogue_entries(load_splits("gf-default-v1"))
    for entry in entries[100:300]:  # the Val and Hard names, which no Train demo shows
        ids = tokenizer.encode(entry.description, add_special_tokens=False)
        assert tokenizer.decode(ids) == entry.description


def test_a_tokenizer_trained_on_train_instructions_only_misses_held_out_names(tmp_path):
    from gf_policy.vla.processing import train_tiny_tokenizer

    splits = load_splits("gf-default-v1")
    train_only = train_tiny_tokenizer([splits.instruction(e) for e in splits.entries("Train")], 512, tmp_path / "tok")
    report = coverage(train_only)
    assert report.names_with_unknown  # why the comparison needs the catalogue tokenizer
