"""Reference check (issue 7, item 8): with identical weights our model reproduces transformers'
``PI0ForConditionalGeneration`` — velocity, flow-matching loss and sampled actions — and
pi0 checkpoints in the transformers and LeRobot layouts import to the same model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import PI0Config, PI0ForConditionalGeneration

from gf_policy.vla import PI0StyleVLA, VLAInference, VLAProcessor, import_pi0, train_tiny_tokenizer
from gf_policy.vla.normalization import MeanStdStats
from gf_policy.vla.pi0_import import config_from_lerobot_pi0, convert_pi0_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

IMAGE_TOKEN = 300  # outside the 300-token vocabulary, as in pi0 (257152 with a 257152 vocabulary)
PAD_DIM = 8  # pi0 pads state/actions to max_*_dim; we use the first 7


def reference_model(chunk_size: int = 4, seed: int = 0, vision_width: int = 32, vision_heads: int = 2
                    ) -> PI0ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = PI0Config(
        vlm_config={
            "model_type": "paligemma",
            "text_config": {"model_type": "gemma", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
                             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 300},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": vision_width, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": vision_heads, "image_size": 32, "patch_size": 8,
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
    ref = reference_model(vision_width=LEROBOT_VISION_WIDTH, vision_heads=LEROBOT_VISION_HEADS)
    sd = to_lerobot(ref.state_dict(), old_nesting=False)
    cfg = config_from_lerobot_pi0({"chunk_size": 4, "n_action_steps": 2, "num_steps": 5}, sd, action_dim=7, proprio_dim=7)
    assert (cfg.expert_hidden_size, cfg.expert_intermediate_size) == (32, 64)
    assert (cfg.model_action_dim, cfg.model_proprio_dim, cfg.action_dim) == (PAD_DIM, PAD_DIM, 7)
    assert (cfg.action_horizon, cfg.execution_horizon, cfg.num_inference_steps) == (4, 2, 5)
    assert cfg.text_config["vocab_size"] == 300 and cfg.text_config["hidden_size"] == 64  # the checkpoint's backbone


def test_real_pi0_shapes_infer_paligemma_3b_and_gemma_300m():
    """pi0's published sizes (shapes only, on the meta device) give PaliGemma 3B + Gemma-300M."""
    from gf_policy.vla.configuration import _PALIGEMMA_3B_TEXT, _PALIGEMMA_3B_VISION
    from gf_policy.vla.pi0_import import infer_backbone

    def t(*shape):
        return torch.empty(*shape, device="meta")

    lm, vt = "paligemma.model.language_model.", "paligemma.model.vision_tower."
    sd = {"paligemma.lm_head.weight": t(257152, 2048),
          vt + "embeddings.patch_embedding.weight": t(1152, 3, 14, 14),
          vt + "embeddings.position_embedding.weight": t(256, 1152)}
    for i in range(18):
        sd |= {f"{lm}layers.{i}.mlp.gate_proj.weight": t(16384, 2048), f"{lm}layers.{i}.self_attn.q_proj.weight": t(2048, 2048),
               f"{lm}layers.{i}.self_attn.k_proj.weight": t(256, 2048), f"expert.layers.{i}.mlp.gate_proj.weight": t(4096, 1024)}
    for i in range(27):
        sd[f"{vt}encoder.layers.{i}.mlp.fc1.weight"] = t(4304, 1152)
    from gf_policy.vla.pi0_import import tie_embeddings

    text, vision, expert = infer_backbone(tie_embeddings(sd))
    assert text == dict(_PALIGEMMA_3B_TEXT, vocab_size=257152)
    assert vision == _PALIGEMMA_3B_VISION
    assert expert == {"expert_hidden_size": 1024, "expert_intermediate_size": 4096}


# --- checkpoints written the way LeRobot writes them (issue 16) -------------------------------
# LeRobot saves pi0 with safetensors' save_model, which keeps one name per shared tensor: the tied
# PaliGemma LM head / token embedding survive only as ``...paligemma.lm_head.weight``, and the
# expert has neither an LM head nor a token embedding. LeRobot's config.json does not describe the
# backbone. Its SigLIP keys keep the ``vision_tower.vision_model.`` nesting of transformers 4.x.

LEROBOT_VISION_WIDTH, LEROBOT_VISION_HEADS = 144, 2  # SigLIP heads 72 wide, as in pi0's So400m


def write_lerobot_pi0(ref: PI0ForConditionalGeneration, directory, old_nesting: bool = False,
                      normalizer: dict[str, torch.Tensor] | None = None, buffers: dict[str, torch.Tensor] | None = None):
    sd = to_lerobot(ref.state_dict(), old_nesting)
    embed = "model.paligemma_with_expert.paligemma." + (
        "language_model.model.embed_tokens.weight" if old_nesting else "model.language_model.embed_tokens.weight")
    del sd[embed], sd["model.paligemma_with_expert.gemma_expert.lm_head.weight"]
    sd.pop("model.paligemma_with_expert.gemma_expert.model.embed_tokens.weight", None)
    sd = {k.replace(".vision_tower.", ".vision_tower.vision_model.", 1) if ".vision_tower.vision_model." not in k else k: v
          for k, v in sd.items()}
    assert not any("embed_tokens" in k for k in sd) and sum("lm_head" in k for k in sd) == 1
    sd.update(buffers or {})
    directory.mkdir(parents=True)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(directory / "model.safetensors"))
    cfg = ref.config
    (directory / "config.json").write_text(json.dumps({
        "type": "pi0", "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
        "chunk_size": cfg.chunk_size, "n_action_steps": cfg.chunk_size, "max_state_dim": PAD_DIM,
        "max_action_dim": PAD_DIM, "num_inference_steps": 10, "tokenizer_max_length": 16,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}}))
    if normalizer is not None:
        save_file(normalizer, str(directory / "policy_preprocessor_step_3_normalizer_processor.safetensors"))


@pytest.mark.parametrize("old_nesting", [False, True])
def test_lerobot_checkpoint_with_tied_embeddings_matches_transformers(tmp_path, old_nesting):
    ref = reference_model(seed=11, vision_width=LEROBOT_VISION_WIDTH, vision_heads=LEROBOT_VISION_HEADS)
    write_lerobot_pi0(ref, tmp_path / "pi0", old_nesting)
    ours = import_pi0(tmp_path / "pi0", action_dim=7, proprio_dim=7).eval()  # config inferred from the tensors
    text, vision = ours.config.text_config, ours.config.vlm["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"], text["vocab_size"]) == (64, 2, 128, 300)
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (2, 1, 32)
    assert (vision["hidden_size"], vision["num_attention_heads"], vision["num_hidden_layers"]) == (144, 2, 2)
    assert (vision["patch_size"], vision["image_size"], ours.config.image_token_id) == (8, 32, IMAGE_TOKEN)
    assert (ours.config.expert_hidden_size, ours.config.action_horizon, ours.config.model_action_dim) == (32, 4, PAD_DIM)
    assert ours.norm_stats is None  # no normaliser statistics in this checkpoint
    x = inputs(4, seed=3)
    with torch.no_grad():
        out = ref(**ref_kwargs(x), actions=x["actions"], noise=x["noise"], timestep=x["time"])
        t = x["time"][:, None, None]
        prefix, pad = ours.embed_prefix(x["pixel_values"], x["input_ids"], x["attention_mask"])
        velocity = ours.predict_velocity(prefix, pad, x["state"], t * x["noise"] + (1 - t) * x["actions"], x["time"])
        expected = ref.sample_actions(**ref_kwargs(x), noise=x["noise"].clone())[..., :7]
        got = ours.sample_actions(x["pixel_values"], x["input_ids"], x["attention_mask"], x["state"][:, :7],
                                  noise=x["noise"].clone())
    torch.testing.assert_close(velocity, out.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert got.abs().mean() > 0.1
    # the tied tensor serves as both the embedding and the LM head
    torch.testing.assert_close(ours.paligemma.lm_head.weight, ref.model.vlm.language_model.embed_tokens.weight)


def test_lerobot_config_from_tied_keys_only():
    ref = reference_model(vision_width=LEROBOT_VISION_WIDTH, vision_heads=LEROBOT_VISION_HEADS)
    sd = to_lerobot(ref.state_dict(), old_nesting=False)
    del sd["model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"]
    cfg = config_from_lerobot_pi0({"chunk_size": 4}, sd)  # raised KeyError before issue 16
    assert cfg.text_config["vocab_size"] == 300 and cfg.vlm["vision_config"]["num_attention_heads"] == 2


def _mean_std(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5


@pytest.mark.parametrize("where", ["processor", "buffers"])
def test_lerobot_checkpoint_normalisation_stats(tmp_path, where):
    (s_mean, s_std), (a_mean, a_std) = _mean_std(PAD_DIM, 1), _mean_std(PAD_DIM, 2)
    if where == "processor":  # LeRobot >= 0.4: the normaliser step of the policy's processor pipeline
        normalizer = {"observation.state.mean": s_mean, "observation.state.std": s_std,
                      "action.mean": a_mean, "action.std": a_std}
        buffers = None
    else:  # older LeRobot: buffers inside model.safetensors
        normalizer = None
        buffers = {"normalize_inputs.buffer_observation_state.mean": s_mean,
                   "normalize_inputs.buffer_observation_state.std": s_std,
                   "normalize_targets.buffer_action.mean": a_mean, "normalize_targets.buffer_action.std": a_std,
                   "unnormalize_outputs.buffer_action.mean": a_mean, "unnormalize_outputs.buffer_action.std": a_std}
    ref = reference_model(seed=4, vision_width=LEROBOT_VISION_WIDTH, vision_heads=LEROBOT_VISION_HEADS)
    write_lerobot_pi0(ref, tmp_path / "pi0", normalizer=normalizer, buffers=buffers)
    model = import_pi0(tmp_path / "pi0", action_dim=7, proprio_dim=7)
    stats = model.norm_stats
    assert isinstance(stats["proprio"], MeanStdStats) and isinstance(stats["actions"], MeanStdStats)
    np.testing.assert_allclose(stats["proprio"].mean, s_mean[:7].double().numpy())
    np.testing.assert_allclose(stats["actions"].std, a_std[:7].double().numpy())
    # pi0's mapping: (x - mean) / std
    x = np.linspace(-1, 1, 7, dtype=np.float32)
    np.testing.assert_allclose(stats["proprio"].normalize(x), (x - s_mean[:7].numpy()) / s_std[:7].numpy(), rtol=1e-5)
    # selectable: without them the model has no statistics, and a run computes its own
    assert import_pi0(tmp_path / "pi0", action_dim=7, proprio_dim=7, checkpoint_stats=False).norm_stats is None
    # the kind survives our checkpoint format, and inference uses it
    model.save_pretrained(tmp_path / "ours")
    reloaded = PI0StyleVLA.from_pretrained(tmp_path / "ours")
    assert isinstance(reloaded.norm_stats["actions"], MeanStdStats)
    np.testing.assert_allclose(reloaded.norm_stats["actions"].mean, stats["actions"].mean)


def test_inference_unnormalises_with_mean_std(tmp_path):
    from gf_policy.vla import VLAConfig

    cfg = VLAConfig.tiny(action_horizon=3, execution_horizon=3, num_inference_steps=2)
    model = PI0StyleVLA.from_config(cfg).eval()
    rng = np.random.default_rng(0)
    model.norm_stats = {"proprio": MeanStdStats.from_data(rng.normal(0.3, 0.2, (200, 7))),
                        "actions": MeanStdStats(mean=np.full(7, 0.05), std=np.full(7, 0.1))}
    tok = tmp_path / "tok"
    train_tiny_tokenizer(["pick the cube"], int(cfg.text_config["vocab_size"]) - cfg.reserved_vocab_size, tok)
    processor = VLAProcessor.from_pretrained(tok, cfg)
    policy = VLAInference(model, processor, model.norm_stats)
    image, proprio = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.full(7, 0.3, np.float32)
    noise = torch.randn(1, 3, cfg.model_action_dim, generator=torch.Generator().manual_seed(5)) * 3
    chunk = policy.predict(image, "pick the cube", proprio, noise=noise.clone())
    with torch.no_grad():
        batch = processor([image], ["pick the cube"])
        raw = model.sample_actions(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                   torch.from_numpy(model.norm_stats["proprio"].normalize(proprio[None])),
                                   noise=noise.clone())[0].numpy()
    assert np.abs(raw).max() > 1.0  # outputs beyond one std, which quantile clipping would cut
    np.testing.assert_allclose(chunk, 0.05 + 0.1 * raw, atol=1e-4)
