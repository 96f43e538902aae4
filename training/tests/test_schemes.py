"""Fine-tuning schemes: which parameters learn, frozen weights stay bit-identical through AdamW
steps, LoRA adapters merge / save / load without changing the model's actions."""

from __future__ import annotations

import os

import pytest
import torch

from gf_policy.vla import PI0StyleVLA, VLAConfig
from gf_policy.vla.testing import make_batch, make_noise
from gf_training.schemes import (
    SchemeConfig,
    apply_scheme,
    load_adapters,
    merge_adapters,
    save_adapters,
    trainable_parameter_report,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

PROJECTIONS = ("state_proj.", "action_in_proj.", "action_time_mlp_in.", "action_time_mlp_out.", "action_out_proj.")


def base_model(seed: int = 0) -> PI0StyleVLA:
    torch.manual_seed(seed)
    return PI0StyleVLA.from_config(VLAConfig.tiny())


def part_of(name: str) -> str:
    """Which part a (possibly peft-prefixed) parameter name belongs to."""
    if name.startswith("paligemma."):
        kind = "vision" if ("vision_tower" in name or "multi_modal_projector" in name) else "language"
    elif name.startswith("expert."):
        kind = "expert"
    elif name.startswith(PROJECTIONS):
        kind = "projections"
    else:
        raise AssertionError(name)
    return kind + ("_lora" if "lora_" in name else "")


def train_steps(model: PI0StyleVLA, steps: int = 3) -> dict[str, torch.Tensor]:
    """A few AdamW steps (weight decay on) on a fixed batch; returns the grads of the first step."""
    model.train()
    batch = make_batch(model.config, batch_size=2)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    first: dict[str, torch.Tensor] = {}
    for step in range(steps):
        opt.zero_grad()
        model.compute_loss(batch, noise=make_noise(model.config, 2, step), time=torch.tensor([0.3, 0.7])).backward()
        if step == 0:
            first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
    return first


# scheme -> parts that must receive (non-zero) gradients; every other part must get none
EXPECTED = {
    ("full", False): {"vision", "language", "expert", "projections"},
    # openpi's pi0 LoRA recipe: the vision tower and projector train fully beside the adapters
    ("lora", False): {"vision", "language_lora", "expert", "projections"},
    ("lora", True): {"vision", "language_lora", "expert_lora", "projections"},
    ("action_expert", False): {"expert", "projections"},
    ("frozen_vlm", False): {"expert", "projections"},
    ("frozen_vlm", True): {"expert_lora", "projections"},
}


@pytest.mark.parametrize("name,expert_lora", list(EXPECTED))
def test_gradients_and_frozen_weights(name, expert_lora):
    model = base_model()
    apply_scheme(model, SchemeConfig(name=name, expert_lora=expert_lora, lora_rank=4, lora_alpha=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    grads = train_steps(model)

    assert {part_of(n) for n in trainable} == EXPECTED[(name, expert_lora)]
    assert set(grads) <= trainable  # frozen parameters never receive a gradient
    # every trainable part does learn (LoRA A gets no gradient on step 1 because B starts at 0)
    assert {part_of(n) for n, g in grads.items() if g.abs().sum() > 0} == EXPECTED[(name, expert_lora)]
    for n, p in model.named_parameters():
        if n in trainable:
            continue
        assert torch.equal(p, before[n]), f"frozen {n} changed"
    changed = {part_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == EXPECTED[(name, expert_lora)]

    report = trainable_parameter_report(model)
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if name not in ("full", "lora"):
        assert report.parts["vision"][0] == 0
    if name == "lora":  # the vision side trains whole, counted once
        assert report.parts["vision"][0] == report.parts["vision"][1] == trainable_parameter_report(base_model()).parts["vision"][1]
    assert "trainable" in str(report)


def test_lora_can_freeze_the_vision_tower_or_adapt_it_instead():
    frozen = apply_scheme(base_model(), SchemeConfig(name="lora", lora_rank=4, lora_train_vision=False))
    grads = train_steps(frozen)
    assert {part_of(n) for n, g in grads.items() if g.abs().sum() > 0} == {"language_lora", "expert", "projections"}
    assert trainable_parameter_report(frozen).parts["vision"][0] == 0
    adapted = apply_scheme(base_model(), SchemeConfig(name="lora", lora_rank=4, lora_include_vision=True,
                                                      lora_train_vision=False))
    assert {part_of(n) for n, p in adapted.named_parameters() if p.requires_grad} == {
        "vision_lora", "language_lora", "expert", "projections"}
    with pytest.raises(ValueError, match="set lora_train_vision: false"):
        SchemeConfig(name="lora", lora_include_vision=True)


def test_lora_targets_language_model_only_by_default():
    model = apply_scheme(base_model(), SchemeConfig(name="lora", lora_rank=4))
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_names and all("language_model.layers" in n for n in lora_names)
    with_vision = apply_scheme(base_model(), SchemeConfig(name="lora", lora_rank=4, lora_include_vision=True,
                                                          lora_train_vision=False))
    assert any("vision_tower" in n and "lora_" in n for n, _ in with_vision.named_parameters())


def test_scheme_config_validation():
    with pytest.raises(ValueError, match="unknown"):
        SchemeConfig(name="qlora")
    with pytest.raises(ValueError):
        SchemeConfig(name="full", expert_lora=True)
    model = apply_scheme(base_model(), SchemeConfig(name="lora"))
    with pytest.raises(ValueError, match="adapters"):
        apply_scheme(model, SchemeConfig(name="lora"))


def sample(model: PI0StyleVLA) -> torch.Tensor:
    batch = make_batch(model.config, batch_size=2, seed=11)
    return model.eval().sample_actions(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                       batch["proprio"], noise=make_noise(model.config, 2, seed=12))


@pytest.mark.parametrize("expert_lora", [False, True])
def test_lora_adapters_merge_save_and_load(tmp_path, expert_lora):
    model = apply_scheme(base_model(), SchemeConfig(name="lora", expert_lora=expert_lora, lora_rank=4, lora_alpha=8))
    train_steps(model, steps=4)
    adapted = sample(model)
    assert not torch.allclose(adapted, sample(base_model()), atol=1e-4)  # training changed the actions

    # adapters: peft save_pretrained, then re-attached to a model with the same base weights
    written = save_adapters(model, tmp_path / "adapters")
    assert all((d / "adapter_model.safetensors").exists() for d in written)
    assert len(written) == (2 if expert_lora else 1)
    plain = base_model()
    # parts trained fully outside the VLM are not adapters: carry them over as plain weights (the
    # VLM's vision tower, trained fully too, travels with the adapters as peft modules_to_save)
    fully_trained = [*PROJECTIONS] + ([] if expert_lora else ["expert."])
    plain.load_state_dict({k: v for k, v in _plain_state(model).items() if k.startswith(tuple(fully_trained))},
                          strict=False)
    reloaded = load_adapters(plain, tmp_path / "adapters")
    torch.testing.assert_close(sample(reloaded), adapted, atol=1e-6, rtol=0)

    # merge: identical actions from plain weights
    merged = merge_adapters(model)
    assert "lora_" not in " ".join(n for n, _ in merged.named_parameters())
    torch.testing.assert_close(sample(merged), adapted, atol=1e-5, rtol=1e-5)

    # save -> load of the merged model: identical actions
    merged.save_pretrained(tmp_path / "ckpt")
    loaded = PI0StyleVLA.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(sample(loaded), sample(merged))


def _plain_state(model: PI0StyleVLA) -> dict[str, torch.Tensor]:
    """State dict of the parts of ``model`` that are not peft-wrapped, under plain names."""
    return {k: v for k, v in model.state_dict().items() if "base_model.model" not in k}


def test_peft_wrapped_model_refuses_plain_save(tmp_path):
    model = apply_scheme(base_model(), SchemeConfig(name="lora", lora_rank=4))
    with pytest.raises(ValueError, match="merge"):
        model.save_pretrained(tmp_path / "x")


@pytest.mark.parametrize("name", ["full", "action_expert", "frozen_vlm"])
def test_save_load_identical_actions_after_training(tmp_path, name):
    model = apply_scheme(base_model(), SchemeConfig(name=name))
    train_steps(model, steps=2)
    model.save_pretrained(tmp_path / name)
    loaded = PI0StyleVLA.from_pretrained(tmp_path / name)
    assert torch.equal(sample(loaded), sample(model))
