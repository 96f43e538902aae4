"""VLAConfig (JSON round trip, validation) and NormStats (percentiles, [-1, 1] mapping, round trip)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gf_policy.vla import NormStats, VLAConfig, load_norm_stats, save_norm_stats


def test_tiny_config_json_round_trip(tmp_path):
    cfg = VLAConfig.tiny(action_horizon=50, execution_horizon=10, max_action_dim=8)
    cfg.to_json_file(tmp_path / "config.json")
    back = VLAConfig.from_json_file(tmp_path / "config.json")
    assert back == cfg
    assert json.loads((tmp_path / "config.json").read_text())["action_horizon"] == 50
    # The stored backbone dict rebuilds the same Hugging Face config.
    assert back.paligemma_config().text_config.hidden_size == 64
    assert back.tokens_per_image == (32 // 8) ** 2
    assert back.prefix_length == 16 + back.max_text_tokens
    assert back.model_action_dim == 8 and back.model_proprio_dim == 7


def test_default_config_has_pi0_sizes():
    cfg = VLAConfig()
    assert cfg.text_config["hidden_size"] == 2048 and cfg.text_config["num_hidden_layers"] == 18
    assert cfg.vision_config["hidden_size"] == 1152 and cfg.image_size == 224
    assert cfg.tokens_per_image == 256 and cfg.image_token_id == 257152
    assert cfg.expert_hidden_size == 1024 and cfg.expert_intermediate_size == 4096
    assert (cfg.time_beta_alpha, cfg.time_beta_beta, cfg.num_inference_steps, cfg.action_horizon) == (1.5, 1.0, 10, 4)
    expert = cfg.expert_gemma_config()
    assert (expert.num_attention_heads, expert.num_key_value_heads, expert.head_dim) == (8, 1, 256)
    assert VLAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"expert_num_layers": 3},  # must match the VLM depth (shared attention per layer)
        {"expert_num_heads": 4},
        {"expert_hidden_size": 33},
        {"execution_horizon": 5},  # > action_horizon (4)
        {"max_action_dim": 6},  # < action_dim
        {"attn_implementation": "flash"},
    ],
)
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        VLAConfig.tiny(**bad)


def test_unknown_keys_are_rejected():
    data = VLAConfig.tiny().to_dict()
    data["action_horizn"] = 5
    with pytest.raises(ValueError, match="action_horizn"):
        VLAConfig.from_dict(data)


def test_norm_stats_percentiles_and_mapping():
    rng = np.random.default_rng(0)
    data = np.stack([rng.uniform(0, 10, 10_000), rng.normal(5, 2, 10_000), np.full(10_000, 3.0)], axis=1)
    stats = NormStats.from_data(data)
    np.testing.assert_allclose(stats.q01, np.quantile(data, 0.01, axis=0))
    np.testing.assert_allclose(stats.q99, np.quantile(data, 0.99, axis=0))
    normed = stats.normalize(data)
    assert normed.min() >= -1.0 and normed.max() <= 1.0
    # q01 -> -1, q99 -> +1 (non-constant dims)
    np.testing.assert_allclose(stats.normalize(stats.q01[None])[0, :2], [-1, -1], atol=1e-6)
    np.testing.assert_allclose(stats.normalize(stats.q99[None])[0, :2], [1, 1], atol=1e-6)
    # ~98% of the samples are inside the percentile range and survive the round trip exactly
    inside = ((data >= stats.q01) & (data <= stats.q99)).all(axis=1)
    assert inside.mean() > 0.95
    np.testing.assert_allclose(stats.unnormalize(normed[inside]), data[inside], atol=1e-9)
    # outliers are clipped to the range ends
    assert np.allclose(stats.unnormalize(stats.normalize(np.array([[100.0, -100.0, 3.0]]))),
                       [[stats.q99[0], stats.q01[1], 3.0]], atol=1e-5)


def test_norm_stats_torch_matches_numpy_and_json(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(500, 7))
    stats = NormStats.from_data(torch.tensor(data))
    x = rng.normal(size=(4, 3, 7)).astype(np.float32)
    np.testing.assert_allclose(stats.normalize(torch.tensor(x)).numpy(), stats.normalize(x), atol=1e-6)
    np.testing.assert_allclose(stats.unnormalize(torch.tensor(x)).numpy(), stats.unnormalize(x), atol=1e-5)
    assert stats.normalize(x).dtype == np.float32
    save_norm_stats({"proprio": stats, "actions": stats}, tmp_path / "norm_stats.json")
    back = load_norm_stats(tmp_path / "norm_stats.json")
    assert set(back) == {"proprio", "actions"}
    np.testing.assert_array_equal(back["actions"].q01, stats.q01)
    np.testing.assert_array_equal(back["actions"].q99, stats.q99)
    with pytest.raises(ValueError):
        stats.normalize(np.zeros((2, 6)))
    with pytest.raises(ValueError):
        NormStats(q01=np.ones(3), q99=np.zeros(3))
