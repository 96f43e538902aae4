"""gf-bench train / infer: the analytic FLOP model equals torch's FLOP counter on the real
computation (tiny configs, training forward and sampling with/without the KV cache) and on a
meta-device copy of the real-size model; parameter counts of pi0's sizes; both benchmarks run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gf_policy.vla import PI0StyleVLA, VLAConfig
from gf_policy.vla.testing import make_batch
from gf_training.bench import (
    count_parameters,
    counted_forward_flops,
    forward_flops,
    infer_main,
    inference_flops,
    train_main,
    train_step_flops,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def counted(fn) -> int:
    # The math SDPA backend: torch's counter does not see CPU flash-attention kernels.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("overrides", [{}, {"action_horizon": 7, "max_action_dim": 12, "max_proprio_dim": 9},
                                       {"num_images": 2, "expert_hidden_size": 48}])
def test_analytic_flops_equal_the_counter_on_tiny_models(overrides):
    cfg = VLAConfig.tiny(**overrides)
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(cfg)
    batch = make_batch(cfg, batch_size=2)
    assert counted(lambda: model.compute_loss(batch)) == pytest.approx(2 * forward_flops(cfg).total, rel=1e-9)
    model.eval()
    args = (batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["proprio"])
    assert counted(lambda: model.sample_actions(*args)) == pytest.approx(2 * inference_flops(cfg).total, rel=1e-9)
    assert counted(lambda: model.sample_actions(*args, use_cache=False, num_steps=3)) == pytest.approx(
        2 * inference_flops(cfg, num_steps=3, use_cache=False).total, rel=1e-9)
    # backward ~ 2x forward, the factor train_step_flops assumes
    model.train()
    with sdpa_kernel(SDPBackend.MATH):
        loss = model.compute_loss(batch)
    ratio = counted(loss.backward) / (2 * forward_flops(cfg).total)
    assert 1.8 < ratio <= 2.0
    assert train_step_flops(cfg, 8) == pytest.approx(3 * 8 * forward_flops(cfg).total)


def test_analytic_flops_count_a_convolutional_stem():
    base = VLAConfig.tiny()
    vlm = json.loads(json.dumps(base.vlm))
    vlm["vision_config"]["conv_stem"] = [4, 8, 8]
    cfg = base.replace(vlm=vlm)
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(cfg)
    batch = make_batch(cfg, batch_size=2)
    assert counted(lambda: model.compute_loss(batch)) == pytest.approx(2 * forward_flops(cfg).total, rel=1e-9)
    assert forward_flops(cfg).vision > forward_flops(base).vision


def test_real_size_model_flops_and_parameters():
    real = VLAConfig(action_horizon=50)
    params = count_parameters(real)
    assert 3.2e9 < params["total"] < 3.3e9  # PaliGemma 3B (2.92 B) + pi0's ~300 M expert
    assert 3.0e8 < params["expert"] < 3.2e8 and 4.0e8 < params["vision"] < 4.3e8
    f = forward_flops(real)
    assert counted_forward_flops(real) == pytest.approx(f.total, rel=1e-9)
    # ~2 x params x tokens, dominated by the VLM over the 304-token prefix
    assert 1.3e12 < f.total < 1.5e12 and f.prefix > 0.75 * f.total
    cached, uncached = inference_flops(real).total, inference_flops(real, use_cache=False).total
    assert 6 < uncached / cached < 8  # the KV cache saves re-encoding the prefix for each of 10 steps


def test_bench_commands_run(capsys):
    assert train_main(["--steps", "2", "--batch", "2", "--threads", "1", "--no-counter", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tiny"]["steps_per_s"] > 0 and out["real"]["batch"] == 1024
    assert out["real"]["flops_per_step"] == pytest.approx(3 * 1024 * out["real"]["forward_flops_per_sample"])
    assert infer_main(["--repeats", "2", "--threads", "1", "--no-counter"]) == 0
    text = capsys.readouterr().out
    assert "VLABackend.act: p50" in text and "with the KV cache" in text and "H100" in text
