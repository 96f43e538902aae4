"""VLAInference: checkpoint directory -> unnormalised, clipped action chunks from raw observations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gf_policy.vla import (
    NormStats,
    PI0StyleVLA,
    VLAConfig,
    VLAInference,
    VLAProcessor,
    train_tiny_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

INSTRUCTIONS = ["Pick the cube and place it on grinning face", "Pick the cube and place it on red heart"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    cfg = VLAConfig.tiny(action_horizon=5, execution_horizon=2)
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(cfg)
    with torch.no_grad():  # a visibly non-zero action head so that unnormalisation matters
        model.action_out_proj.weight.normal_(0, 0.5)
        model.action_out_proj.bias.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    # actions: translation deltas in [-0.3, 0.3] -> the model's [-1, 1] is a 0.3 scale; gripper +-1
    actions = np.concatenate([rng.uniform(-0.3, 0.3, (1000, 6)), rng.choice([-1.0, 1.0], (1000, 1))], 1)
    model.norm_stats = {
        "proprio": NormStats.from_data(rng.normal(0, 0.2, (1000, 7))),
        "actions": NormStats.from_data(actions),
    }
    tok = train_tiny_tokenizer(INSTRUCTIONS, 100, out / "tok")
    model.save_pretrained(out, processor=VLAProcessor(tok, cfg))
    return out, model


def test_predict_returns_unnormalised_actions(checkpoint):
    directory, model = checkpoint
    policy = VLAInference.from_pretrained(directory, device="cpu")
    assert (policy.action_horizon, policy.execution_horizon, policy.action_space) == (5, 2, "ee_delta_pose")
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    proprio = np.array([0.1, -0.2, 0.05, 0.0, 0.1, 0.3, 0.5], np.float32)
    noise = torch.randn(1, 5, 7, generator=torch.Generator().manual_seed(0))
    out = policy.predict(image, INSTRUCTIONS[0], proprio, noise=noise)
    assert out.shape == (5, 7) and out.dtype == np.float32
    # the same computation by hand: processor -> normalise proprio -> sample -> clip -> unnormalise -> clip
    inputs = policy.processor(image, INSTRUCTIONS[0])
    p = torch.from_numpy(model.norm_stats["proprio"].normalize(proprio[None]))
    raw = model.eval().sample_actions(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], p,
                                      noise=noise)
    expected = np.clip(model.norm_stats["actions"].unnormalize(raw.clamp(-1, 1).numpy())[0], -1, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(raw).max() > 1.0  # the untrained head does overshoot, so the clipping is exercised
    assert np.abs(out[:, :6]).max() <= 0.3 + 1e-4  # translation range of the statistics
    assert np.all(np.abs(out) <= 1.0)


def test_seed_determinism_and_batch_consistency(checkpoint):
    directory, _ = checkpoint
    policy = VLAInference.from_pretrained(directory)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    proprios = rng.normal(0, 0.2, (2, 7)).astype(np.float32)
    a = policy.predict(images[0], INSTRUCTIONS[0], proprios[0], seed=3)
    b = policy.predict(images[0], INSTRUCTIONS[0], proprios[0], seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, policy.predict(images[0], INSTRUCTIONS[0], proprios[0], seed=4))
    noise = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(5))
    batch = policy.predict_batch(images, INSTRUCTIONS, proprios, noise=noise)
    assert batch.shape == (2, 5, 7)
    for i in range(2):
        single = policy.predict(images[i], INSTRUCTIONS[i], proprios[i], noise=noise[i : i + 1])
        np.testing.assert_allclose(batch[i], single, atol=1e-5)


def test_bad_inputs_raise_clear_errors(checkpoint, tmp_path):
    directory, model = checkpoint
    policy = VLAInference.from_pretrained(directory)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="proprio"):
        policy.predict(image, "x", np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        policy.predict(image, "x", np.full(7, np.nan))
    with pytest.raises(ValueError, match="uint8"):
        policy.predict(image.astype(np.float32), "x", np.zeros(7))
    # a checkpoint without statistics cannot produce actions in the benchmark's units
    model.norm_stats, stats = None, model.norm_stats
    try:
        model.save_pretrained(tmp_path / "nostats", processor=policy.processor)
    finally:
        model.norm_stats = stats
    with pytest.raises(FileNotFoundError, match="norm_stats"):
        VLAInference.from_pretrained(tmp_path / "nostats")
