"""Reference check (issue 7, item 8): with identical weights our model reproduces transformers'
``PI0ForConditionalGeneration`` — velocity, flow-matching loss and sampled actions — and
pi0 checkpoints in the transformers and LeRobot layouts import to the same model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import PI0Config, PI0ForConditionalGeneration

from gf_policy.vla import PI0StyleVLA, import_pi0
from gf_policy.vla.pi0_import import config_from_lerobot_pi0, convert_pi0_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

IMAGE_TOKEN = 300  # outside the 300-token vocabulary, as in pi0 (257152 with a 257152 vocabulary)
PAD_DIM = 8  # pi0 pads state/actions to max_*_dim; we use the first 7


def reference_model(chunk_size: int = 4, seed: int = 0) -> PI0ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = PI0Config(
        vlm_config={
            "model_type": "paligemma",
            "text_config": {"model_type": "gemma", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
                             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 300},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                               "vision_use_head": False},
            "projection_dim": 64,
            "image_token_id": IMAGE_TOKEN,
        },
        dit_config={"model_type": "gemma", "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
        chunk_size=chunk_size,
        max_state_dim=PAD_DIM,
        max_action_dim=PAD_DIM,
        loss_reduction="none",
    )
    model = PI0ForConditionalGeneration(cfg).eval()
    # Move every weight away from its init (norms start at 0 = identity, projections tiny) so
    # that any mismatch in how a part is used shows up in the outputs.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
            elif p.ndim >= 2:
                p.mul_(3.0)
            else:
                p.normal_(0.0, 0.1)
    return model


def inputs(chunk_size: int, batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(5, 290, (batch, 10), generator=g)
    ids = torch.cat([torch.full((batch, 16), IMAGE_TOKEN), torch.full((batch, 1), 2), text], dim=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, -3:] = False  # right padding of different lengths
    mask[2, -7:] = False
    ids[~mask] = 0
    state = torch.randn(batch, PAD_DIM, generator=g)
    state[:, 7:] = 0  # zero padding, as our model pads 7 -> 8
    actions = torch.randn(batch, chunk_size, PAD_DIM, generator=g)
    actions[..., 7:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.randn(batch, 1, 3, 32, 32, generator=g),
        "state": state,
        "actions": actions,
        "noise": torch.randn(batch, chunk_size, PAD_DIM, generator=g),
        "time": torch.rand(batch, generator=g) * 0.999 + 0.001,
    }


def ref_kwargs(x):
    return {"state": x["state"], "input_ids": x["input_ids"], "pixel_values": x["pixel_values"],
                "attention_mask": x["attention_mask"].long(), "pixel_attention_mask": torch.ones(x["state"].shape[0], 1, dtype=torch.bool)}


def our_batch(x):
    return {"pixel_values": x["pixel_values"], "input_ids": x["input_ids"], "attention_mask": x["attention_mask"],
                "proprio": x["state"][:, :7], "actions": x["actions"][..., :7]}


@pytest.mark.parametrize("chunk_size,attn", [(4, "eager"), (4, "sdpa"), (50, "sdpa")])
def test_matches_transformers_pi0(chunk_size, attn):
    ref = reference_model(chunk_size)
    ours = import_pi0(ref, action_dim=7, proprio_dim=7, attn_implementation=attn).eval()
    assert ours.config.model_action_dim == PAD_DIM and ours.config.action_horizon == chunk_size
    x = inputs(chunk_size)
    with torch.no_grad():
        out = ref(**ref_kwargs(x), actions=x["actions"], noise=x["noise"], timestep=x["time"])
        # velocity for every padded dimension
        t = x["time"][:, None, None]
        prefix, pad = ours.embed_prefix(x["pixel_values"], x["input_ids"], x["attention_mask"])
        velocity = ours.predict_velocity(prefix, pad, x["state"], t * x["noise"] + (1 - t) * x["actions"], x["time"])
        torch.testing.assert_close(velocity, out.logits, atol=1e-4, rtol=1e-4)
        # loss: theirs with reduction "none", restricted to the real dims, averaged
        ref_loss = out.loss[..., :7].mean()
        loss = ours.compute_loss(our_batch(x), noise=x["noise"], time=x["time"])
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        # 10 Euler steps from the same noise
        ref_actions = ref.sample_actions(**ref_kwargs(x), noise=x["noise"].clone())
        actions = ours.sample_actions(x["pixel_values"], x["input_ids"], x["attention_mask"], x["state"][:, :7],
                                      noise=x["noise"].clone())
    assert actions.shape == (3, chunk_size, 7)
    torch.testing.assert_close(actions, ref_actions[..., :7], atol=1e-4, rtol=1e-4)
    assert actions.abs().mean() > 0.1  # not a degenerate all-zero comparison


def test_import_from_a_saved_transformers_directory(tmp_path):
    ref = reference_model(seed=5)
    ref.save_pretrained(tmp_path / "pi0")
    ours = PI0StyleVLA.import_pi0(tmp_path / "pi0", action_dim=7, proprio_dim=7).eval()
    x = inputs(4, seed=2)
    with torch.no_grad():
        expected = ref.sample_actions(**ref_kwargs(x), noise=x["noise"].clone())[..., :7]
        got = ours.sample_actions(x["pixel_values"], x["input_ids"], x["attention_mask"], x["state"][:, :7],
                                  noise=x["noise"].clone())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def to_lerobot(state_dict: dict[str, torch.Tensor], old_nesting: bool) -> dict[str, torch.Tensor]:
    """Rename a transformers PI0 state dict to LeRobot's pi0 layout (per transformers' own
    conversion mapping for pi0); ``old_nesting`` uses the transformers 4.x PaliGemma layout."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("model.vlm."):
            rest = key[len("model.vlm."):]
            if old_nesting:
                rest = (rest.replace("language_model.", "language_model.model.", 1)
                        .replace("vision_tower.", "vision_tower.vision_model.", 1))
                key = "model.paligemma_with_expert.paligemma." + rest
            else:
                key = "model.paligemma_with_expert.paligemma.model." + rest
        elif key.startswith("model.dit."):
            key = "model.paligemma_with_expert.gemma_expert.model." + key[len("model.dit."):]
        elif key.startswith("embed_action_time."):
            key = "model." + key[len("embed_action_time."):]
        else:
            key = "model." + key
        out[key] = value
    embed = "model.paligemma_with_expert.paligemma." + (
        "language_model.model.embed_tokens.weight" if old_nesting else "model.language_model.embed_tokens.weight")
    lm_head = "model.paligemma_with_expert.paligemma." + ("language_model.lm_head.weight" if old_nesting else "lm_head.weight")
    out[lm_head] = out[embed]
    out["model.paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(300, 32)
    return out


@pytest.mark.parametrize("old_nesting", [False, True])
def test_lerobot_layout_imports_identically(tmp_path, old_nesting):
    ref = reference_model(seed=7)
    direct = import_pi0(ref, action_dim=7, proprio_dim=7)
    lerobot = to_lerobot(ref.state_dict(), old_nesting)
    assert convert_pi0_key("model.paligemma_with_expert.gemma_expert.lm_head.weight") is None
    from_sd = import_pi0(lerobot, config=direct.config)
    for (name, a), (name2, b) in zip(direct.state_dict().items(), from_sd.state_dict().items()):
        assert name == name2 and torch.equal(a, b), name
    # a LeRobot directory: safetensors + LeRobot's policy config.json
    (tmp_path / "lr").mkdir()
    save_file({k: v.contiguous().clone() for k, v in lerobot.items()}, str(tmp_path / "lr" / "model.safetensors"))
    (tmp_path / "lr" / "config.json").write_text(json.dumps({"type": "pi0", "chunk_size": 4, "n_action_steps": 2}))
    from_dir = import_pi0(tmp_path / "lr", config=direct.config)
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(), from_dir.state_dict().values()))


def test_lerobot_config_reads_sizes_from_tensors():
    sd = to_lerobot(reference_model().state_dict(), old_nesting=False)
    cfg = config_from_lerobot_pi0({"chunk_size": 4, "n_action_steps": 2, "num_steps": 5}, sd, action_dim=7, proprio_dim=7)
    assert (cfg.expert_hidden_size, cfg.expert_intermediate_size) == (32, 64)
    assert (cfg.model_action_dim, cfg.model_proprio_dim, cfg.action_dim) == (PAD_DIM, PAD_DIM, 7)
    assert (cfg.action_horizon, cfg.execution_horizon, cfg.num_inference_steps) == (4, 2, 5)
    assert cfg.text_config["vocab_size"] == 300 and cfg.text_config["hidden_size"] == 2048  # pi0's backbone
