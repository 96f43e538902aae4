"""PI0StyleVLA on tiny configs: shapes, the block mask, KV-cache sampling, loss masking,
gradient checkpointing, overfitting, checkpoints and loading PaliGemma weights."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import PaliGemmaForConditionalGeneration

from gf_policy.vla import (
    PI0StyleVLA,
    VLAConfig,
    VLAProcessor,
    make_block_attention_mask,
    train_tiny_tokenizer,
)
from gf_policy.vla.testing import make_batch, make_noise

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def tiny_model(seed: int = 0, **overrides) -> PI0StyleVLA:
    torch.manual_seed(seed)
    model = PI0StyleVLA.from_config(VLAConfig.tiny(**overrides))
    # Non-trivial norm weights so that a wrong norm would show in the comparisons below.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.2)
    return model.eval()


def sample_inputs(batch):
    return batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["proprio"]


def test_block_mask_pattern():
    pad = torch.tensor([[True, True, False]])  # prefix of 3 tokens, the last one padding
    mask = make_block_attention_mask(pad, suffix_len=3)[0].int()  # proprio + 2 actions
    expected = torch.tensor(
        [  # keys: p0 p1 pad | proprio | a1 a2
            [1, 1, 0, 0, 0, 0],  # prefix: bidirectional among valid prefix tokens
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],  # padded query still sees the valid prefix (no empty rows)
            [1, 1, 0, 1, 0, 0],  # proprio: prefix + itself
            [1, 1, 0, 1, 1, 1],  # actions: everything, bidirectionally
            [1, 1, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


def test_mask_semantics_in_the_network():
    """Prefix states ignore the suffix; the proprio token ignores the actions; actions see proprio."""
    model = tiny_model()
    cfg = model.config
    batch = make_batch(cfg, batch_size=2)
    prefix, pad = model.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    time = torch.full((2,), 0.5)

    def run(proprio, actions):
        suffix = model.embed_suffix(model._pad(proprio, cfg.model_proprio_dim), actions, time)
        mask = make_block_attention_mask(pad, suffix.shape[1])
        pos = torch.cat([pad.long().cumsum(1) - 1, model._suffix_positions(pad, suffix.shape[1])], 1)
        _, s_out, kv = model._run_layers(prefix, suffix, pos, mask, build_cache=True)
        # keys/values of the prefix tokens at every layer
        return torch.cat([torch.cat([k, v], -1)[:, :, : prefix.shape[1]] for k, v in kv]), s_out

    with torch.no_grad():
        a1, a2 = make_noise(cfg, 2, seed=1), make_noise(cfg, 2, seed=2)
        p1, s1 = run(batch["proprio"], a1)
        p2, s2 = run(batch["proprio"], a2)
        p3, s3 = run(-batch["proprio"], a1)
    assert torch.equal(p1, p2) and torch.equal(p1, p3)  # prefix K/V never depend on the suffix
    assert torch.allclose(s1[:, 0], s2[:, 0])  # proprio token does not attend to actions
    assert not torch.allclose(s1[:, 1:], s2[:, 1:])
    assert not torch.allclose(s1[:, 1:], s3[:, 1:], atol=1e-4)  # actions attend to proprio


@pytest.mark.parametrize("horizon", [4, 50])
def test_shapes_and_kv_cache_equals_full_recompute(horizon):
    model = tiny_model(action_horizon=horizon, max_action_dim=8)
    cfg = model.config
    batch = make_batch(cfg, batch_size=3)
    noise = make_noise(cfg, 3)
    cached = model.sample_actions(*sample_inputs(batch), noise=noise)
    full = model.sample_actions(*sample_inputs(batch), noise=noise, use_cache=False)
    assert cached.shape == (3, horizon, 7)
    assert torch.allclose(cached, full, atol=1e-5)
    assert torch.equal(cached, model.sample_actions(*sample_inputs(batch), noise=noise))  # deterministic
    assert not torch.allclose(cached, model.sample_actions(*sample_inputs(batch), noise=make_noise(cfg, 3, 9)))
    loss = model.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_prefix_cache_is_computed_once():
    model = tiny_model()
    batch = make_batch(model.config, batch_size=1)
    calls = {"vlm": 0, "expert": 0}
    model.vlm.model.language_model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda *_: calls.__setitem__("vlm", calls["vlm"] + 1))
    model.expert.layers[0].self_attn.q_proj.register_forward_hook(
        lambda *_: calls.__setitem__("expert", calls["expert"] + 1))
    model.sample_actions(*sample_inputs(batch), num_steps=7)
    assert calls == {"vlm": 1, "expert": 7}


def test_sdpa_and_eager_attention_agree():
    model = tiny_model()
    batch = make_batch(model.config, batch_size=2)
    noise = make_noise(model.config, 2)
    sdpa = model.sample_actions(*sample_inputs(batch), noise=noise)
    model.config.attn_implementation = "eager"
    eager = model.sample_actions(*sample_inputs(batch), noise=noise)
    assert torch.allclose(sdpa, eager, atol=1e-5)


def test_padding_tokens_do_not_matter():
    model = tiny_model()
    batch = make_batch(model.config, batch_size=2, text_lengths=[5, 9])
    noise = make_noise(model.config, 2)
    ref = model.sample_actions(*sample_inputs(batch), noise=noise)
    ids = batch["input_ids"].clone()
    ids[~batch["attention_mask"]] = 77  # garbage in padded positions
    assert torch.allclose(model.sample_actions(batch["pixel_values"], ids, batch["attention_mask"], batch["proprio"],
                                               noise=noise), ref, atol=1e-6)


def test_loss_ignores_padded_action_steps_and_dims():
    model = tiny_model(max_action_dim=9)
    batch = make_batch(model.config, batch_size=2)
    noise, time = make_noise(model.config, 2), torch.tensor([0.3, 0.8])
    is_pad = torch.zeros(2, 4, dtype=torch.bool)
    is_pad[0, 2:] = True
    base = model.compute_loss(dict(batch, action_is_pad=is_pad), noise=noise, time=time)
    no_pad = model.compute_loss(dict(batch, action_is_pad=torch.zeros_like(is_pad)), noise=noise, time=time)
    assert torch.allclose(no_pad, model.compute_loss(batch, noise=noise, time=time))
    assert not torch.allclose(no_pad, base)
    # Loss = hand-computed MSE over the real action dims (0-6 of 9) of the valid steps only.
    # (Padded steps still enter the network as tokens; they are just not scored.)
    with torch.no_grad():
        acts = model._pad(batch["actions"], 9)
        t = time[:, None, None]
        prefix, pad = model.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        v = model.predict_velocity(prefix, pad, batch["proprio"], t * noise + (1 - t) * acts, time)
        err = ((v - (noise - acts))[..., :7] ** 2).mean(-1)
    assert torch.allclose(base, err[~is_pad].mean(), atol=1e-6)


def test_time_distribution_is_beta_1_5_1():
    model = tiny_model()
    torch.manual_seed(0)
    t = model.sample_time(20000)
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1) has mean 0.6; scaled by 0.999 and shifted by 0.001
    assert abs(t.mean().item() - (0.6 * 0.999 + 0.001)) < 0.01


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model()
    model.train()
    batch = make_batch(model.config, batch_size=2)
    noise, time = make_noise(model.config, 2), torch.tensor([0.2, 0.9])

    def grads():
        model.zero_grad()
        model.compute_loss(batch, noise=noise, time=time).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    # Count runs of each layer's first module: twice (forward + recomputation in backward) when
    # checkpointing works. (torch stops a recomputation early once it has what backward needs,
    # so only the first module of a layer is sure to run again.)
    calls = []
    hook = model.vlm.model.language_model.layers[1].input_layernorm.register_forward_pre_hook(
        lambda *_: calls.append(1))
    vision_calls = []
    vhook = model.vlm.model.vision_tower.encoder.layers[0].layer_norm1.register_forward_pre_hook(
        lambda *_: vision_calls.append(1))
    model.gradient_checkpointing_enable()
    ckpt = grads()
    hook.remove()
    vhook.remove()
    assert len(calls) == 2 and len(vision_calls) == 2
    assert plain.keys() == ckpt.keys()
    # Every parameter is trained except the parts of the last VLM layer (and final norm) that
    # only the LM head would read: the action path needs just that layer's keys and values.
    last = f"paligemma.model.language_model.layers.{len(model.expert.layers) - 1}."
    unused = {n for n, _ in model.named_parameters()} - plain.keys()
    assert unused == {last + "self_attn.o_proj.weight", last + "post_attention_layernorm.weight",
                      last + "mlp.gate_proj.weight", last + "mlp.up_proj.weight", last + "mlp.down_proj.weight",
                      "paligemma.model.language_model.norm.weight"}
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(VLAConfig.tiny())
    model.train()
    batch = make_batch(model.config, batch_size=4)
    noise, time = make_noise(model.config, 4), torch.tensor([0.1, 0.4, 0.7, 0.95])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = model.compute_loss(batch, noise=noise, time=time)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_save_and_load_give_identical_actions(tmp_path):
    model = tiny_model(action_horizon=6, execution_horizon=3)
    batch = make_batch(model.config, batch_size=2)
    noise = make_noise(model.config, 2)
    tok = train_tiny_tokenizer(["pick the cube"], 60, tmp_path / "tok")
    model.save_pretrained(tmp_path / "ckpt", processor=VLAProcessor(tok, model.config))
    loaded = PI0StyleVLA.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert loaded.vlm.lm_head.weight is loaded.vlm.model.language_model.embed_tokens.weight  # still tied
    assert torch.equal(model.sample_actions(*sample_inputs(batch), noise=noise),
                       loaded.sample_actions(*sample_inputs(batch), noise=noise))
    assert (tmp_path / "ckpt" / "tokenizer.json").exists()


def test_a_model_without_proprio_acts_the_same_whatever_the_proprio(tmp_path):
    model = tiny_model(proprio_dropout=1.0)
    batch = make_batch(model.config, batch_size=2)
    noise = make_noise(model.config, 2)
    ref = model.sample_actions(*sample_inputs(batch), noise=noise)
    other = batch["proprio"].flip(0) * 0.5
    assert torch.equal(model.sample_actions(*sample_inputs(batch)[:3], other, noise=noise), ref)
    # The learned stand-in is part of the checkpoint.
    with torch.no_grad():
        model.proprio_mask_value.normal_()
    tok = train_tiny_tokenizer(["pick the cube"], 60, tmp_path / "tok")
    model.save_pretrained(tmp_path / "ckpt", processor=VLAProcessor(tok, model.config))
    loaded = PI0StyleVLA.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(loaded.proprio_mask_value, model.proprio_mask_value)
    assert torch.equal(loaded.sample_actions(*sample_inputs(batch), noise=noise),
                       model.sample_actions(*sample_inputs(batch), noise=noise))


def test_proprio_dropout_hides_proprio_in_training_only():
    model = tiny_model(proprio_dropout=0.5)
    batch = make_batch(model.config, batch_size=64)
    noise, time = make_noise(model.config, 64), torch.full((64,), 0.5)
    with torch.no_grad():
        model.proprio_mask_value.fill_(3.0)  # far from any normalised proprio, so hiding shows
        model.train()
        torch.manual_seed(0)
        per_sample_train = [model.compute_loss({k: v[i:i + 1] for k, v in batch.items()}, noise[i:i + 1], time[i:i + 1])
                            for i in range(64)]
        model.eval()
        per_sample_eval = [model.compute_loss({k: v[i:i + 1] for k, v in batch.items()}, noise[i:i + 1], time[i:i + 1])
                           for i in range(64)]
    hidden = sum(not torch.equal(a, b) for a, b in zip(per_sample_train, per_sample_eval))
    assert 16 <= hidden <= 48  # about half (binomial 64, 0.5: outside this range p < 1e-4)
    # At inference the proprio is seen: other proprio, other actions.
    ref = model.sample_actions(*sample_inputs(batch), noise=noise)
    assert not torch.allclose(model.sample_actions(*sample_inputs(batch)[:3], -batch["proprio"], noise=noise), ref)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_proprio_dropout_is_a_probability(p):
    with pytest.raises(ValueError, match="proprio_dropout"):
        VLAConfig.tiny(proprio_dropout=p)


def test_language_model_head_stays_usable():
    model = tiny_model()
    batch = make_batch(model.config, batch_size=2)
    out = model.paligemma(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long(),
                          pixel_values=batch["pixel_values"][:, 0])
    assert out.logits.shape == (*batch["input_ids"].shape, model.config.text_config["vocab_size"])


def test_from_paligemma_loads_local_weights(tmp_path):
    cfg = VLAConfig.tiny()
    torch.manual_seed(3)
    pg = PaliGemmaForConditionalGeneration(cfg.paligemma_config())
    pg.save_pretrained(tmp_path / "pg")
    train_tiny_tokenizer(["pick the cube"], 60, tmp_path / "pg")
    model = PI0StyleVLA.from_paligemma(tmp_path / "pg", cfg_overrides={"expert_hidden_size": 48, "action_horizon": 5})
    assert isinstance(model.paligemma, PaliGemmaForConditionalGeneration)
    assert model.config.expert_hidden_size == 48 and model.config.action_horizon == 5
    ours = model.paligemma.state_dict()
    for name, value in pg.state_dict().items():
        assert torch.equal(ours[name], value), name
    proc = VLAProcessor.from_pretrained(tmp_path / "pg", model.config)  # tokenizer from the same dir
    batch = make_batch(model.config, batch_size=1)
    assert model.eval().sample_actions(*sample_inputs(batch)).shape == (1, 5, 7)
    assert proc.tokenizer.bos_token_id == 2


def test_from_paligemma_reads_the_original_hub_layout(tmp_path):
    """paligemma-3b-pt-224 on the Hub uses the transformers 4.x key nesting; it must load too."""
    from safetensors.torch import save_file

    cfg = VLAConfig.tiny()
    torch.manual_seed(4)
    pg = PaliGemmaForConditionalGeneration(cfg.paligemma_config())
    pg.config.save_pretrained(tmp_path / "hub")
    old = {}
    for name, value in pg.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding, not stored
        name = (name.replace("model.language_model.", "language_model.model.")
                .replace("model.vision_tower.", "vision_tower.vision_model.")
                .replace("model.multi_modal_projector.", "multi_modal_projector."))
        old[name] = value.clone().contiguous()
    save_file(old, str(tmp_path / "hub" / "model.safetensors"), metadata={"format": "pt"})
    model = PI0StyleVLA.from_paligemma(tmp_path / "hub")
    ours = model.paligemma.state_dict()
    for name, value in pg.state_dict().items():
        assert torch.equal(ours[name], value), name
