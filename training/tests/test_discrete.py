"""Discretised action targets: 256 bins that round-trip within half a bin and live in the last
vocabulary ids; the parallel (query tokens) and autoregressive (OpenVLA) variants produce chunks of
the right shape and decode consistently with how they are trained; knowledge insulation routes
the flow-matching gradient away from the VLM; each variant trains with decreasing loss."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gf_policy.vla import PI0StyleVLA, VLAConfig, VLAInference
from gf_policy.vla.techniques import ActionDiscretizer, make_layout_mask, reserved_token_ranges
from gf_policy.vla.testing import make_batch, make_noise
from gf_training.config import load_config
from gf_training.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

VOCAB = 768  # tiny model: 512 text ids + the 256 action bins at the end


def tiny(**overrides) -> PI0StyleVLA:
    torch.manual_seed(0)
    return PI0StyleVLA.from_config(VLAConfig.tiny(vocab_size=VOCAB, **overrides))


def test_discretisation_round_trips_within_half_a_bin():
    disc = ActionDiscretizer(256)
    x = torch.cat([torch.linspace(-1, 1, 10_001), torch.rand(5000) * 2 - 1])
    bins = disc.encode(x)
    assert bins.min() == 0 and bins.max() == 255 and bins.dtype == torch.int64
    err = (disc.decode(bins) - x).abs()
    assert float(err.max()) <= disc.bin_width / 2 + 1e-6
    assert torch.equal(disc.encode(torch.tensor([-5.0, 5.0])), torch.tensor([0, 255]))  # clipped to the end bins
    assert torch.equal(disc.encode(disc.decode(torch.arange(256))), torch.arange(256))  # centres map to their bin
    actions, latents = reserved_token_ranges(VOCAB, 256, 16)
    assert (actions.start, actions.stop) == (VOCAB - 256, VOCAB)  # the last 256 vocabulary ids
    assert (latents.start, latents.stop) == (VOCAB - 272, VOCAB - 256)
    assert torch.equal(actions.index(actions.ids(bins)), bins)


def test_configuration_checks():
    with pytest.raises(ValueError, match="discrete_actions"):
        VLAConfig.tiny(discrete_actions="diffusion")
    with pytest.raises(ValueError, match="flow_matching off"):
        VLAConfig.tiny(flow_matching=False)
    with pytest.raises(ValueError, match="knowledge_insulation"):
        VLAConfig.tiny(vocab_size=VOCAB, discrete_actions="parallel", flow_matching=False, knowledge_insulation=True)
    with pytest.raises(ValueError, match="cannot give"):
        VLAConfig.tiny(discrete_actions="parallel", num_action_bins=480)  # 512 ids: too few left for text
    cfg = VLAConfig.tiny(vocab_size=VOCAB, discrete_actions="parallel")
    assert cfg.reserved_vocab_size == 256 and not cfg.decodes_discrete  # flow is trained: flow decodes
    assert VLAConfig.tiny(vocab_size=VOCAB, discrete_actions="parallel", flow_matching=False).decodes_discrete


def test_layout_mask():
    pad = torch.tensor([[True, True, False]])
    mask = make_layout_mask(pad, vlm_block_len=2, vlm_block_causal=True, expert_blocks=[1, 2])[0].int()
    expected = torch.tensor([
        # p0 p1 pad | b0 b1 | proprio action
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0],  # VLM block, causal
        [1, 1, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # the expert never sees the VLM block
        [1, 1, 0, 0, 0, 1, 1],
    ])
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("variant", ["parallel", "autoregressive"])
def test_variants_produce_chunks_of_the_right_shape_and_decode_as_trained(variant):
    model = tiny(discrete_actions=variant, flow_matching=False).eval()
    cfg = model.config
    batch = make_batch(cfg, batch_size=3)
    chunk = model.sample_actions(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["proprio"])
    assert chunk.shape == (3, cfg.action_horizon, cfg.action_dim)
    disc = model.discretizer
    assert torch.allclose(disc.decode(disc.encode(chunk)), chunk)  # every value is a bin centre
    # The decoded chunk is what the training forward predicts: with it as the target, the
    # teacher-forced (AR) / parallel logits pick exactly the decoded bins.
    batch["actions"] = chunk
    with torch.no_grad():
        embeds, pad = model.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        block, info = model._vlm_block(batch["proprio"], chunk)
        n_valid = pad.long().sum(1, keepdim=True)
        pos = torch.cat([pad.long().cumsum(1) - 1, n_valid + torch.arange(block.shape[1])[None]], 1)
        mask = make_layout_mask(pad, block.shape[1], variant == "autoregressive")
        out, _, _ = model._run_layers(torch.cat([embeds, block], 1), None, pos, mask, keep_prefix_out=True)
        start, count = info["discrete"]
        hidden = model.vlm.model.language_model.norm(out[:, embeds.shape[1] + start : embeds.shape[1] + start + count])
        bins = model._reserved_logits(hidden, model.action_tokens).argmax(-1)
    assert torch.equal(bins, disc.encode(chunk).flatten(1))
    loss = model.compute_loss(batch)
    assert set(model.last_losses) == {"discrete"} and torch.isfinite(loss)


def test_parallel_and_autoregressive_differ_in_what_they_see():
    """AR: a target's logits depend on earlier action tokens only; parallel queries see no targets."""
    ar = tiny(discrete_actions="autoregressive", flow_matching=False).eval()
    batch = make_batch(ar.config, batch_size=1)
    base = torch.zeros(1, ar.config.action_horizon, ar.config.action_dim)
    changed = base.clone()
    changed[0, 1, 3] = 0.9  # target number 1 * 7 + 3 = 10

    def hidden(model, actions):
        embeds, pad = model.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        block, _ = model._vlm_block(batch["proprio"], actions)
        pos = torch.cat([pad.long().cumsum(1) - 1, pad.long().sum(1, keepdim=True) + torch.arange(block.shape[1])], 1)
        mask = make_layout_mask(pad, block.shape[1], model.config.discrete_actions == "autoregressive")
        out, _, _ = model._run_layers(torch.cat([embeds, block], 1), None, pos, mask, keep_prefix_out=True)
        return out[:, embeds.shape[1]:]

    with torch.no_grad():
        a, b = hidden(ar, base), hidden(ar, changed)
    # block = [state, a_1 .. a_{N-1}]; target 10 is the input at block index 11
    assert torch.allclose(a[:, :11], b[:, :11]) and not torch.allclose(a[:, 11:], b[:, 11:])
    par = tiny(discrete_actions="parallel", flow_matching=False).eval()
    with torch.no_grad():
        assert torch.equal(hidden(par, base), hidden(par, changed))


def test_knowledge_insulation_sends_flow_gradients_to_the_expert_only():
    plain = tiny(discrete_actions="parallel")
    insulated = tiny(discrete_actions="parallel", knowledge_insulation=True)
    insulated.load_state_dict(plain.state_dict())
    batch = make_batch(plain.config, batch_size=2)
    noise, time = make_noise(plain.config, 2, seed=3), torch.tensor([0.3, 0.8])

    def grads(model, **changes):
        """(loss, VLM language-layer gradients, expert gradient mass) under config ``changes``."""
        saved = model.config
        model.config = saved.replace(**changes)
        try:
            model.train().zero_grad()
            loss = model.compute_loss(batch, noise=noise, time=time)
            loss.backward()
        finally:
            model.config = saved
        vlm = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                         for p in model.vlm.model.language_model.layers.parameters()])
        expert = sum(float(p.grad.abs().sum()) for p in model.action_expert.parameters() if p.grad is not None)
        return loss.detach(), vlm, expert

    # Flow matching alone: same loss value, but it reaches the VLM only without insulation.
    loss_p, vlm_p, expert_p = grads(plain, discrete_loss_weight=0.0)
    loss_i, vlm_i, expert_i = grads(insulated, discrete_loss_weight=0.0)
    assert torch.allclose(loss_p, loss_i, atol=1e-6)
    assert vlm_p.abs().sum() > 0 and vlm_i.abs().sum() == 0 and expert_i > 0
    assert abs(expert_i - expert_p) < 1e-3 * expert_p  # the expert's own gradient is unchanged
    # Both targets: under insulation the VLM's gradient is exactly the discrete loss's.
    _, vlm_total, _ = grads(insulated)
    _, vlm_discrete, _ = grads(insulated, flow_matching=False, knowledge_insulation=False)
    assert torch.allclose(vlm_total, vlm_discrete, atol=1e-6)
    _, vlm_total_plain, _ = grads(plain)
    assert not torch.allclose(vlm_total_plain, vlm_discrete, atol=1e-6)


QUIET = ["logging.progress=false", "logging.tensorboard=false"]


@pytest.mark.parametrize("variant,extra", [
    ("parallel", ["model.config.knowledge_insulation=true"]),
    ("autoregressive", ["model.config.flow_matching=false"]),
])
def test_each_variant_trains_with_decreasing_loss(tmp_path, variant, extra):
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", *QUIET, "train.steps=30", "train.save_steps=[]",
                               "optim.warmup_steps=3", f"model.config.vocab_size={VOCAB}",
                               f"model.config.discrete_actions={variant}", *extra])
    result, trainer = train(cfg)
    first, last = np.mean(result.losses[:4]), np.mean(result.losses[-4:])
    assert last < 0.7 * first, (first, last)
    disc = result.parts["loss_discrete"]
    assert np.mean(disc[-4:]) < np.mean(disc[:4])
    # the tokenizer stays clear of the action-bin ids
    assert len(trainer.processor.tokenizer) <= VOCAB - 256
    # the exported checkpoint loads and predicts a chunk in the benchmark's action space
    policy = VLAInference.from_pretrained(result.checkpoints[-1])
    ep = trainer.episodes[0]
    chunk = policy.predict(ep.images[0], ep.instruction, ep.proprio[0], seed=0)
    assert chunk.shape == (policy.action_horizon, 7) and np.isfinite(chunk).all()
