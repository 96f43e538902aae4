"""The auxiliary scene target (`scene_probe`): what it is trained on, that it learns, that it
resumes exactly and leaves the checkpoint the `vla` backend loads unchanged in form."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gf_training.config import load_config
from gf_training.data import SCENE_TARGET, ChunkDataset, synthetic_episodes
from gf_training.scene_probe import PROBE_STATE, SceneTargets
from gf_training.train import list_checkpoints, train

torch.set_num_threads(1)

QUIET = ["logging.progress=false", "logging.tensorboard=false"]


def tiny_cfg(tmp_path, *overrides: str):
    return load_config("tiny", [f"output_dir={tmp_path / 'run'}", *QUIET, *overrides])


def test_targets_are_the_trial_position_until_the_gripper_closes():
    episodes = synthetic_episodes(num_episodes=4, length=12)
    targets = SceneTargets.from_episodes(episodes)
    start = np.array([ep.trial["cube_xy"] for ep in episodes], dtype=np.float32)
    for ep, xy, rows in zip(episodes, start, targets.per_step):
        closed = np.flatnonzero(ep.actions[:, 6] < 0)[0]  # synthetic demos close half way
        assert closed == 6
        np.testing.assert_allclose(rows[:closed] * targets.std + targets.mean, np.tile(xy, (closed, 1)), atol=1e-6)
        assert np.isnan(rows[closed:]).all()
    dataset = ChunkDataset(episodes, 4, scene_targets=targets.per_step)
    assert np.isfinite(dataset[0][SCENE_TARGET]).all() and np.isnan(dataset[11][SCENE_TARGET]).all()


def test_demos_without_their_trial_are_refused_by_name():
    episodes = [dataclasses.replace(ep, trial=None) for ep in synthetic_episodes(num_episodes=2)]
    with pytest.raises(ValueError, match="episode 0 has no trial with cube_xy: the scene probe needs"):
        SceneTargets.from_episodes(episodes)


def test_probe_learns_where_the_mark_is_and_the_export_keeps_its_form(same_export_form, tmp_path):
    steps = 300
    # 12 episodes: the red card stands on each of the three slots in some of them.
    common = [f"train.steps={steps}", f"train.save_steps=[{steps}]", "optim.warmup_steps=20",
              "data.synthetic.num_episodes=12"]
    with_probe, trainer = train(tiny_cfg(tmp_path / "probe", *common, "scene_probe.weight=1.0"))
    mse = with_probe.parts["loss_scene"]
    assert len(mse) == steps
    # The mark's x takes three values (the red card's slot), its y one: guessing the mean costs an
    # MSE of about 0.5 on the normalised scale; reading the image brings it far below.
    assert np.mean(mse[:10]) > 0.25 and np.mean(mse[-20:]) < 0.2 * np.mean(mse[:10]), (mse[:10], mse[-20:])
    ckpt = with_probe.checkpoints[-1]
    assert (ckpt / PROBE_STATE).exists()

    plain, _ = train(tiny_cfg(tmp_path / "plain", *common))
    same_export_form(ckpt, plain.checkpoints[-1])
    assert not (plain.checkpoints[-1] / PROBE_STATE).exists()
    assert "loss_scene" not in plain.parts


def test_resume_with_the_probe_continues_exactly(resumed_exactly, tmp_path):
    common = ["optim.decay_steps=6", "train.batch_size=4", "train.micro_batch_size=2", "scene_probe.weight=0.5",
              "data.synthetic.num_episodes=12"]
    straight, _ = train(tiny_cfg(tmp_path / "a", "train.steps=6", "train.save_steps=[3, 6]", *common))
    first, _ = train(tiny_cfg(tmp_path / "b", "train.steps=3", "train.save_steps=[3]", *common))
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [3]
    resumed, _ = train(tiny_cfg(tmp_path / "b", "train.steps=6", "train.save_steps=[3, 6]", *common))
    resumed_exactly(straight, first, resumed, "loss_scene", PROBE_STATE)
