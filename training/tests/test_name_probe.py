"""The auxiliary naming target (`name_probe`): its labels, that it learns, that it resumes exactly
and leaves the checkpoint a row starts from unchanged in form."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gf_training.config import load_config
from gf_training.name_probe import NAME_PROBE_STATE
from gf_training.train import train
from gf_training.vl_format import EMOJI_LABEL, NO_EMOJI, VLCollator, VLDataset, read_vl_dir

torch.set_num_threads(1)

QUIET = ["logging.progress=false", "logging.tensorboard=false"]


def test_each_per_emoji_sample_is_labelled_by_its_emoji(glyph_dir, vl_only, tmp_path):
    _, records = read_vl_dir(glyph_dir)
    dataset = VLDataset([glyph_dir], image_size=32)
    assert dataset.named_emojis == sorted({r.emoji_ids[0] for r in records})
    for i in (0, 7, len(records) - 1):
        assert dataset.named_emojis[dataset[i]["emoji"]] == records[i].emoji_ids[0]
    # A directory whose images show no single emoji (a scene generator's) carries no label.
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    info = json.loads((glyph_dir / "info.json").read_text())
    (scenes / "info.json").write_text(json.dumps({**info, "generator": "which"}))
    (scenes / "manifest.jsonl").write_text((glyph_dir / "manifest.jsonl").read_text().splitlines()[0] + "\n")
    (scenes / "images").symlink_to(glyph_dir / "images")
    mixed = VLDataset([glyph_dir, scenes], image_size=32)
    assert mixed.named_emojis == dataset.named_emojis and mixed[len(records)]["emoji"] == NO_EMOJI

    _, trainer = train(vl_only(tmp_path / "run", "train.steps=1", "train.save_steps=[]"))
    batch = VLCollator(trainer.fitted_processor, 24)([mixed[0], mixed[len(records)]])
    assert batch[EMOJI_LABEL].tolist() == [mixed[0]["emoji"], NO_EMOJI]


def test_probe_learns_the_names_and_the_export_keeps_its_form(vl_only, same_export_form, tmp_path):
    steps = 200
    common = [f"train.steps={steps}", f"train.save_steps=[{steps}]", "optim.lr=0.001"]
    with_probe, _ = train(vl_only(tmp_path / "probe", *common, "name_probe.weight=1.0"))
    names = with_probe.parts["loss_names"]
    assert len(names) == steps
    assert np.mean(names[-10:]) < 0.5 * np.mean(names[:5]), (names[:5], names[-10:])
    checkpoint = with_probe.checkpoints[-1]
    assert (checkpoint / NAME_PROBE_STATE).exists()
    plain, _ = train(vl_only(tmp_path / "plain", *common))
    same_export_form(checkpoint, plain.checkpoints[-1])
    assert not (plain.checkpoints[-1] / NAME_PROBE_STATE).exists() and "loss_names" not in plain.parts


def test_resume_with_the_probe_continues_exactly(vl_only, resumed_exactly, tmp_path):
    common = ["name_probe.weight=0.5", "optim.decay_steps=6"]
    straight, _ = train(vl_only(tmp_path / "a", "train.steps=6", "train.save_steps=[3, 6]", *common))
    first, _ = train(vl_only(tmp_path / "b", "train.steps=3", "train.save_steps=[3]", *common))
    resumed, _ = train(vl_only(tmp_path / "b", "train.steps=6", "train.save_steps=[3, 6]", *common))
    resumed_exactly(straight, first, resumed, "loss_names", NAME_PROBE_STATE)


def test_a_run_without_vision_language_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="name_probe.weight > 0 needs vision-language data"):
        train(load_config("tiny", [f"output_dir={tmp_path}", *QUIET, "train.steps=1", "name_probe.weight=1.0"]))
