"""gf-pixel-check: a small CNN learns a per-emoji VL directory written by gf-vl-data and is scored
on renderings of the same emojis that the directory does not hold."""

from __future__ import annotations

import json

import pytest
import torch

from gf_eval.splits import EmojiSplits, load_splits
from gf_training.pixel_check import load_training_set, main, unseen_renderings
from gf_training.vl_generate import generate_cards, generate_glyphs, generate_tabletop

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    full = load_splits("gf-default-v1")
    split = EmojiSplits("pixel-test", {"Train": full.entries("Train")[:4]}, full.template, "four emojis")
    path = tmp_path_factory.mktemp("split") / "pixel-test.json"
    split.save(path)
    return path


def test_glyphs_of_four_emojis_are_told_apart_on_renderings_it_never_saw(tmp_path, split_file):
    vl = generate_glyphs(tmp_path / "glyphs", str(split_file), ["Train"], per_emoji=24, size=48)
    info, entries, images, labels = load_training_set(vl, str(split_file))
    test_images, test_labels = unseen_renderings(info, entries, 4)
    assert images.shape == (96, 3, 48, 48) and sorted(labels.tolist()) == sorted(list(range(4)) * 24)
    assert test_images.shape == (16, 3, 48, 48)
    assert not any(torch.equal(t, i) for t in test_images for i in images)  # none of the training images
    out = tmp_path / "check.json"
    assert main([str(vl), "--split", str(split_file), "--epochs", "25", "--batch-size", "16", "--per-emoji", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["emojis"] == 4 and result["chance"] == 0.25 and len(result["epochs"]) == 25
    assert result["final_accuracy"] >= 0.75, result["epochs"]


def test_scenes_are_refused_in_one_line(tmp_path, split_file, capsys):
    class NoEnv:  # a tabletop directory needs no rendering to be refused: an empty one is enough
        pass

    vl = generate_tabletop(tmp_path / "scenes", str(split_file), ["Train"], scenes=0, env=NoEnv())
    with pytest.raises(SystemExit):
        main([str(vl), "--split", str(split_file)])
    assert "is not per emoji" in capsys.readouterr().err


def test_a_directory_of_another_split_is_refused(tmp_path, split_file, capsys):
    vl = generate_cards(tmp_path / "cards", str(split_file), ["Train"], per_emoji=1, size=32)
    with pytest.raises(SystemExit):
        main([str(vl), "--split", "gf-default-v1"])
    assert "was made from split 'pixel-test'" in capsys.readouterr().err


def test_a_vision_tower_can_stand_in_for_the_cnn(tmp_path, split_file):
    vl = generate_glyphs(tmp_path / "glyphs", str(split_file), ["Train"], per_emoji=24, size=32)
    out = tmp_path / "tower.json"
    assert main([str(vl), "--split", str(split_file), "--tower", "tiny", "--set", "model.config.image_size=32",
                 "--epochs", "25", "--batch-size", "16", "--lr", "0.001", "--per-emoji", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["learner"] == {"tower": "tiny", "set": ["model.config.image_size=32"]}
    assert result["final_accuracy"] >= 0.5, result["epochs"]
    with pytest.raises(SystemExit):
        main([str(vl), "--split", str(split_file), "--set", "model.config.image_size=32"])
