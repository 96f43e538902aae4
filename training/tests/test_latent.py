"""Latent actions: the latent action model separates two synthetic motions with its codes; the
labels of every episode step; VLA pre-training with latent targets (expert and token modes) with
decreasing loss, then fine-tuning on robot actions only; the gf-lam command."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gf_policy.vla import VLAInference
from gf_training.config import load_config
from gf_training.data import synthetic_episodes
from gf_training.latent import (
    LAMConfig,
    LatentActionModel,
    fit_lam,
    label_episode,
    main,
    synthetic_motion_pairs,
)
from gf_training.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

QUIET = ["logging.progress=false", "logging.tensorboard=false"]


def test_lam_separates_two_synthetic_motions():
    """Pairs of frames where a square moves left or right (and the commands that moved it, which
    villa-X's proprio FDM predicts from the codes): two codes, one per motion, on held-out pairs."""
    torch.manual_seed(0)
    model = LatentActionModel(LAMConfig.tiny(codebook_size=2))
    first, second, labels, actions = synthetic_motion_pairs(2048, seed=0)
    gen = torch.Generator().manual_seed(0)

    def sample():
        idx = torch.randint(0, len(labels), (32,), generator=gen)
        return {"first": first[idx], "second": second[idx], "proprio": torch.zeros(32, 7), "actions": actions[idx]}

    losses = fit_lam(model, sample, steps=200, lr=2e-3, restart_every=25)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    a, b, y, _ = synthetic_motion_pairs(400, seed=1)  # held-out pairs
    codes = model.codes(a, b)[:, 0]
    left, right = codes[y == 0], codes[y == 1]
    majority_left = int(torch.mode(left).values)
    majority_right = int(torch.mode(right).values)
    assert majority_left != majority_right
    purity = ((left == majority_left).sum() + (right == majority_right).sum()) / len(y)
    assert purity > 0.95, purity


def test_labels_follow_frame_pairs_and_clamp_at_the_episode_end():
    torch.manual_seed(0)
    model = LatentActionModel(LAMConfig.tiny(codes_per_pair=2, stride=3)).eval()
    ep = synthetic_episodes(num_episodes=1, length=10, image_size=32)[0]
    labels = label_episode(model, ep, pairs=2)
    assert labels.shape == (10, 4) and labels.dtype == np.int64
    imgs = torch.from_numpy(np.asarray(ep.images))

    def pair(a):
        return model.codes(imgs[a : a + 1], imgs[min(a + 3, 9) : min(a + 3, 9) + 1])[0].numpy()

    for t in (0, 4, 8):
        assert labels[t].tolist() == [*pair(t), *pair(min(t + 3, 9))]


@pytest.fixture(scope="module")
def lam_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lam")
    assert main(["train", "--synthetic", "2", "--tiny", "--steps", "12", "--batch-size", "8", "--out", str(out),
                 "--set", "codebook_size=8", "--set", "codes_per_pair=2", "--no-progress"]) == 0
    return out


def test_gf_lam_command(lam_dir, capsys):
    model = LatentActionModel.from_pretrained(lam_dir)
    assert model.config.codebook_size == 8 and model.config.codes_per_pair == 2
    assert main(["train", "--synthetic", "2", "--tiny", "--out", str(lam_dir)]) == 0
    assert "already holds" in capsys.readouterr().out  # a finished LAM is not trained again
    with pytest.raises(SystemExit):
        main(["train", "--out", str(lam_dir)])  # no data source


@pytest.mark.parametrize("mode", ["expert", "tokens"])
def test_pretraining_with_latent_targets_then_finetuning_on_actions(tmp_path, lam_dir, mode):
    # Sizes given (tokens) or read from the LAM (expert): 8 codes of width 16, 2 pairs x 2 codes.
    sizes = ["model.config.latent_codebook_size=8", "model.config.latent_code_dim=16",
             "model.config.latent_action_tokens=4"] if mode == "tokens" else []
    latent = [f"model.config.latent_action_mode={mode}", *sizes, f"latent.lam={lam_dir}"]
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'pre'}", *QUIET, "train.steps=30", "train.save_steps=[]",
                               "optim.warmup_steps=3", *latent])
    result, trainer = train(cfg)
    lat = result.parts["loss_latent"]
    assert np.mean(lat[-4:]) < np.mean(lat[:4]) and np.mean(result.losses[-4:]) < np.mean(result.losses[:4])
    labels = np.load(tmp_path / "pre" / "latent_codes.npz")
    assert labels["arr_0"].shape == (len(trainer.episodes[0].actions), 4)  # 2 pairs x 2 codes per step
    lam = LatentActionModel.from_pretrained(lam_dir)
    if mode == "expert":
        assert torch.allclose(trainer.model.latent_codebook, lam.code_vectors())
    checkpoint = result.checkpoints[-1]
    policy = VLAInference.from_pretrained(checkpoint)  # latent tokens are denoised / present at inference
    ep = trainer.episodes[0]
    assert policy.predict(ep.images[0], ep.instruction, ep.proprio[0], seed=0).shape == (policy.action_horizon, 7)

    # Fine-tuning predicts robot actions only: no latent loss, no latent action model needed.
    fine = load_config("tiny", [f"output_dir={tmp_path / 'fine'}", *QUIET, "train.steps=4", "train.save_steps=[]",
                                "model.init=checkpoint", f"model.path={checkpoint}",
                                "model.config={latent_loss_weight: 0.0}"])
    result2, trainer2 = train(fine)
    assert set(result2.parts) == {"loss_flow"} and trainer2.model.config.latent_action_mode == mode
    with pytest.raises(ValueError, match="latent.lam"):
        train(load_config("tiny", [f"output_dir={tmp_path / 'x'}", *QUIET, "train.steps=1", *latent[:-1]]))
    with pytest.raises(ValueError, match=r"latent_codebook_size=32 \(the LAM gives 8\)"):
        train(load_config("tiny", [f"output_dir={tmp_path / 'y'}", *QUIET, "train.steps=1", *latent,
                                   "model.config.latent_codebook_size=32"]))
