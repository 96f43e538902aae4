"""The pi0-style VLA: PaliGemma + a Gemma-style action expert trained by flow matching.

Token layout and attention (pi0):

    [ image tokens | <bos> text "\\n" (pad) ]  [ proprio ]  [ action_1 ... action_H ]
      prefix (VLM weights)                      suffix (action-expert weights)

Every layer ``i`` computes Q/K/V for the prefix with VLM layer ``i`` and for the suffix with
expert layer ``i``; one attention runs over the concatenation under a block mask: the prefix
attends bidirectionally to itself, the proprio token to the prefix and itself, the action
tokens to everything. Because the prefix never attends to the suffix, the prefix keys/values
are the same for every denoising step, so sampling computes them once (the KV cache) and then
runs only the suffix through the expert for each Euler step.

Numerics follow transformers' ``PI0ForConditionalGeneration`` (checked by a test on tiny
configs): text embeddings scaled by sqrt(width) (Gemma), image and suffix embeddings not
scaled, RoPE positions = cumulative count of valid tokens, the expert's final RMSNorm before the
action head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from transformers.initialization import no_init_weights
from transformers.models.gemma.modeling_gemma import (
    GemmaConfig,
    GemmaDecoderLayer,
    GemmaRMSNorm,
)

from .configuration import CONFIG_NAME, VLAConfig
from .normalization import NORM_STATS_NAME, NormStats, load_norm_stats, save_norm_stats

WEIGHTS_NAME = "model.safetensors"

# Keys of a training/inference batch (see ``PI0StyleVLA.compute_loss``).
BATCH_KEYS = ("pixel_values", "input_ids", "attention_mask", "proprio", "actions", "action_is_pad")

# Block ids of the three token groups; a query may attend to keys of its own or a lower block.
PREFIX_BLOCK, PROPRIO_BLOCK, ACTION_BLOCK = 0, 1, 2

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def _unwrap(module: nn.Module) -> nn.Module:
    """The underlying module of a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def make_block_attention_mask(prefix_pad_mask: torch.Tensor, suffix_len: int) -> torch.Tensor:
    """Boolean mask (B, L, L) for [prefix | proprio | actions], True = may attend.

    ``prefix_pad_mask`` (B, Lp) marks valid prefix tokens; ``suffix_len`` = 1 + action horizon.
    Padded prefix tokens are masked as keys only, so no query row is ever fully masked.
    """
    batch, prefix_len = prefix_pad_mask.shape
    device = prefix_pad_mask.device
    blocks = torch.full((prefix_len + suffix_len,), ACTION_BLOCK, device=device)
    blocks[:prefix_len] = PREFIX_BLOCK
    if suffix_len:
        blocks[prefix_len] = PROPRIO_BLOCK
    allowed = blocks[None, :] <= blocks[:, None]  # [query, key]
    key_valid = torch.cat([prefix_pad_mask.bool(), torch.ones(batch, suffix_len, dtype=torch.bool, device=device)], 1)
    return allowed[None] & key_valid[:, None, :]


def sinusoidal_time_embedding(time: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """pi0's sine/cosine embedding of the flow-matching time, (B,) -> (B, dim), in float32.

    Periods are spaced geometrically from ``min_period`` to ``max_period``.
    """
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angular_freq = 1.0 / period * 2 * math.pi
    angle = angular_freq[None, :] * time.float()[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half layout used by Gemma checkpoints; x is (B, H, L, D)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, impl: str) -> torch.Tensor:
    """Grouped-query attention with an explicit boolean mask (B, Lq, Lk); returns (B, Lq, H * D)."""
    batch, heads, q_len, head_dim = q.shape
    if k.shape[1] != heads:  # GQA: query head h reads key/value head h // group
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    scaling = head_dim**-0.5
    if impl == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scaling)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
        scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(weights, v)
    return out.transpose(1, 2).reshape(batch, q_len, heads * head_dim)


class ActionExpert(nn.Module):
    """Gemma decoder layers and a final RMSNorm, without token embeddings.

    Uses transformers' Gemma modules as parameter containers (so names and numerics line up with
    Gemma / pi0 checkpoints); the joint attention is run by ``PI0StyleVLA``.
    """

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.layers = nn.ModuleList([GemmaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class PI0StyleVLA(nn.Module):
    """PaliGemma VLM + action expert sharing attention layer by layer; flow-matching action head.

    ``self.paligemma`` stays a ``PaliGemmaForConditionalGeneration`` (its LM head remains usable
    for co-training); it and ``self.expert`` may be wrapped by peft (see ``gf_training.schemes``).
    """

    def __init__(self, config: VLAConfig, paligemma: PaliGemmaForConditionalGeneration | None = None):
        super().__init__()
        self.config = config
        self.paligemma = paligemma if paligemma is not None else PaliGemmaForConditionalGeneration(config.paligemma_config())
        expert_cfg = config.expert_gemma_config()
        width = config.expert_hidden_size
        self.expert = ActionExpert(expert_cfg)
        self.state_proj = nn.Linear(config.model_proprio_dim, width)
        self.action_in_proj = nn.Linear(config.model_action_dim, width)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.action_out_proj = nn.Linear(width, config.model_action_dim)
        self.norm_stats: dict[str, NormStats] | None = None
        self._init_new_weights()
        self._check_vlm_matches_config()
        if config.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    # ------------------------------------------------------------------ construction helpers
    def _init_new_weights(self) -> None:
        std = self.config.initializer_range
        new_modules = [self.expert, self.state_proj, self.action_in_proj, self.action_time_mlp_in,
                       self.action_time_mlp_out, self.action_out_proj]
        for root in new_modules:
            for module in root.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, GemmaRMSNorm):
                    nn.init.zeros_(module.weight)  # Gemma norms scale by (1 + weight)

    def _check_vlm_matches_config(self) -> None:
        text = self.vlm.config.text_config
        cfg_text = self.config.text_config
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
            if getattr(text, key) != cfg_text[key]:
                raise ValueError(f"PaliGemma text_config.{key}={getattr(text, key)} differs from VLAConfig ({cfg_text[key]})")

    @classmethod
    def from_config(cls, config: VLAConfig) -> PI0StyleVLA:
        """A randomly initialised model."""
        return cls(config)

    @classmethod
    def from_paligemma(
        cls, local_dir: str | Path, cfg_overrides: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None
    ) -> PI0StyleVLA:
        """Real PaliGemma weights from a local Hugging Face directory (config.json + safetensors),
        a freshly initialised action expert. ``cfg_overrides`` sets other ``VLAConfig`` fields."""
        pg_config = PaliGemmaConfig.from_pretrained(str(local_dir))
        config = VLAConfig(vlm=pg_config.to_dict(), **dict(cfg_overrides or {}))
        paligemma = PaliGemmaForConditionalGeneration.from_pretrained(str(local_dir), dtype=dtype or torch.float32)
        model = cls(config, paligemma=paligemma)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def import_pi0(cls, source: Any, config: VLAConfig | None = None, **cfg_overrides: Any) -> PI0StyleVLA:
        """A pi0 checkpoint (transformers ``PI0ForConditionalGeneration`` or LeRobot layout).
        See ``gf_policy.vla.pi0_import.import_pi0``."""
        from .pi0_import import import_pi0

        return import_pi0(source, config=config, **cfg_overrides)

    # ------------------------------------------------------------------ accessors
    @property
    def vlm(self) -> PaliGemmaForConditionalGeneration:
        """The PaliGemma model (unwrapped if peft wraps it)."""
        return _unwrap(self.paligemma)

    @property
    def action_expert(self) -> ActionExpert:
        """The action expert (unwrapped if peft wraps it)."""
        return _unwrap(self.expert)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.action_out_proj.weight.dtype

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each joint layer (and each vision layer) in the backward pass."""
        self.config.gradient_checkpointing = True
        self.vlm.model.vision_tower.activation_checkpointing_enable({"use_reentrant": False})

    def gradient_checkpointing_disable(self) -> None:
        """Keep all activations again."""
        self.config.gradient_checkpointing = False
        self.vlm.model.vision_tower.activation_checkpointing_disable()

    # ------------------------------------------------------------------ embeddings
    def embed_prefix(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features and scaled text embeddings merged at the image-token positions.

        ``pixel_values`` (B, 3, S, S) or (B, N, 3, S, S); each row of ``input_ids`` holds exactly
        N * tokens_per_image image tokens. Returns embeddings (B, Lp, D) and the pad mask (B, Lp).
        """
        vlm = self.vlm
        if pixel_values.ndim == 4:
            pixel_values = pixel_values[:, None]
        batch, n_images = pixel_values.shape[:2]
        features = vlm.model.get_image_features(pixel_values.flatten(0, 1).to(self.dtype)).pooler_output
        features = features.reshape(batch, n_images * features.shape[1], features.shape[2])
        is_image = input_ids == self.config.image_token_id
        counts = is_image.sum(dim=1)
        if not bool((counts == features.shape[1]).all()):
            raise ValueError(f"each sample needs {features.shape[1]} image tokens, got {counts.tolist()}")
        # The image-token id may lie outside the vocabulary (pi0 checkpoints): look up id 0 there.
        text = vlm.model.language_model.embed_tokens(input_ids.masked_fill(is_image, 0))
        embeds = text.masked_scatter(is_image[..., None], features.to(text.dtype))
        return embeds, attention_mask.bool()

    def embed_suffix(self, proprio: torch.Tensor, noisy_actions: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """[proprio token, action tokens] (B, 1 + H, expert width); time enters by an MLP on
        [action embedding, sinusoidal time embedding]."""
        state = self.state_proj(proprio.to(self.dtype))
        actions = self.action_in_proj(noisy_actions.to(self.dtype))
        cfg = self.config
        time_emb = sinusoidal_time_embedding(time, cfg.expert_hidden_size, cfg.time_min_period, cfg.time_max_period)
        time_emb = time_emb.to(actions.dtype)[:, None, :].expand_as(actions)
        fused = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([actions, time_emb], dim=2))))
        return torch.cat([state[:, None, :], fused], dim=1)

    # ------------------------------------------------------------------ transformer
    def _layer(
        self,
        index: int,
        prefix: torch.Tensor | None,
        suffix: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One joint layer; returns new prefix/suffix states and this layer's keys/values."""
        streams = [
            (prefix, self.vlm.model.language_model.layers[index]),
            (suffix, self.action_expert.layers[index]),
        ]
        qs, ks, vs, lengths = [], [], [], []
        start = 0
        for hidden, layer in streams:
            if hidden is None:
                lengths.append(0)
                continue
            batch, length, _ = hidden.shape
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            shape = (batch, length, -1, attn.head_dim)
            c, s = cos[:, start : start + length], sin[:, start : start + length]
            qs.append(_apply_rope(attn.q_proj(x).view(shape).transpose(1, 2), c, s))
            ks.append(_apply_rope(attn.k_proj(x).view(shape).transpose(1, 2), c, s))
            vs.append(attn.v_proj(x).view(shape).transpose(1, 2))
            lengths.append(length)
            start += length
        k_new, v_new = torch.cat(ks, dim=2), torch.cat(vs, dim=2)
        k, v = k_new, v_new
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = _attention(torch.cat(qs, dim=2), k, v, mask, self.config.attn_implementation)

        # The prefix output of the last layer feeds nothing (only the VLM's LM head would read
        # it): skip its attention output projection and MLP.
        last = index == len(self.action_expert.layers) - 1
        results: list[torch.Tensor | None] = []
        start = 0
        for stream, ((hidden, layer), length) in enumerate(zip(streams, lengths)):
            if hidden is None or (last and stream == 0):
                results.append(None)
                start += length
                continue
            hidden = hidden + layer.self_attn.o_proj(out[:, start : start + length])
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            results.append(hidden)
            start += length
        return results[0], results[1], k_new, v_new

    def _run_layers(
        self,
        prefix: torch.Tensor | None,
        suffix: torch.Tensor | None,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
        build_cache: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, KVCache | None]:
        """All layers over the given streams; ``positions`` (B, Lq) covers prefix then suffix.

        Returns the final suffix states (before the expert's final norm), ``None`` for the prefix
        (its last-layer output is never needed), and the per-layer prefix K/V if ``build_cache``.
        """
        any_stream = prefix if prefix is not None else suffix
        cos, sin = self.vlm.model.language_model.rotary_emb(any_stream, positions)
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        new_cache: KVCache | None = [] if build_cache else None
        for index in range(len(self.action_expert.layers)):
            past = cache[index] if cache is not None else None
            if use_ckpt:
                prefix, suffix, k, v = checkpoint(
                    self._layer, index, prefix, suffix, cos, sin, mask, past, use_reentrant=False
                )
            else:
                prefix, suffix, k, v = self._layer(index, prefix, suffix, cos, sin, mask, past)
            if new_cache is not None:
                new_cache.append((k, v))
        return prefix, suffix, new_cache

    def _velocity(self, suffix_out: torch.Tensor) -> torch.Tensor:
        horizon = self.config.action_horizon
        return self.action_out_proj(self.action_expert.norm(suffix_out[:, -horizon:]))

    @staticmethod
    def _suffix_positions(prefix_pad_mask: torch.Tensor, suffix_len: int) -> torch.Tensor:
        n_valid = prefix_pad_mask.long().sum(dim=1, keepdim=True)
        return n_valid + torch.arange(suffix_len, device=prefix_pad_mask.device)[None, :]

    def predict_velocity(
        self,
        prefix_embeds: torch.Tensor,
        prefix_pad_mask: torch.Tensor,
        proprio: torch.Tensor,
        noisy_actions: torch.Tensor,
        time: torch.Tensor,
    ) -> torch.Tensor:
        """Full joint forward (no cache): velocity (B, H, model_action_dim)."""
        suffix = self.embed_suffix(proprio, noisy_actions, time)
        mask = make_block_attention_mask(prefix_pad_mask, suffix.shape[1])
        positions = torch.cat(
            [prefix_pad_mask.long().cumsum(1) - 1, self._suffix_positions(prefix_pad_mask, suffix.shape[1])], dim=1
        )
        _, suffix_out, _ = self._run_layers(prefix_embeds, suffix, positions, mask)
        return self._velocity(suffix_out)

    # ------------------------------------------------------------------ training
    def _pad(self, x: torch.Tensor, width: int) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x

    def sample_time(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """Flow-matching times ``Beta(a, b) * scale + offset`` (float32, (B,))."""
        cfg = self.config
        beta = torch.distributions.Beta(torch.tensor(cfg.time_beta_alpha), torch.tensor(cfg.time_beta_beta))
        t = beta.sample((batch_size,)) * cfg.time_scale + cfg.time_offset
        return t.float().to(device or self.device)

    def compute_loss(
        self,
        batch: Mapping[str, torch.Tensor],
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching MSE between predicted and target velocity, averaged over valid steps.

        ``batch``: ``pixel_values``, ``input_ids``, ``attention_mask``, ``proprio`` (B, proprio_dim)
        and ``actions`` (B, H, action_dim), both normalised, optional ``action_is_pad`` (B, H) bool
        (True = padding past the episode end, excluded from the loss). ``noise``
        (B, H, model_action_dim) and ``time`` (B,) are sampled when not given. Padded action
        dimensions (``max_action_dim`` > ``action_dim``) are excluded from the loss (LeRobot).
        """
        cfg = self.config
        actions = batch["actions"].to(self.dtype)
        batch_size = actions.shape[0]
        actions = self._pad(actions, cfg.model_action_dim)
        proprio = self._pad(batch["proprio"].to(self.dtype), cfg.model_proprio_dim)
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            time = self.sample_time(batch_size, actions.device)
        t = time.to(actions.dtype)[:, None, None]
        noisy = t * noise + (1 - t) * actions
        target = noise - actions
        prefix, pad_mask = self.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        velocity = self.predict_velocity(prefix, pad_mask, proprio, noisy, time)
        err = (velocity.float() - target.float())[..., : cfg.action_dim].pow(2).mean(dim=-1)  # (B, H)
        is_pad = batch.get("action_is_pad")
        if is_pad is None:
            return err.mean()
        valid = (~is_pad.bool()).float()
        return (err * valid).sum() / valid.sum().clamp_min(1.0)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Training loss (so that DDP/FSDP wrappers see a forward call)."""
        return self.compute_loss(batch)

    # ------------------------------------------------------------------ inference
    def build_prefix_cache(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[KVCache, torch.Tensor]:
        """Run the prefix through the VLM once; returns per-layer (K, V) and the prefix pad mask."""
        prefix, pad_mask = self.embed_prefix(pixel_values, input_ids, attention_mask)
        mask = make_block_attention_mask(pad_mask, 0)
        positions = pad_mask.long().cumsum(1) - 1
        _, _, cache = self._run_layers(prefix, None, positions, mask, build_cache=True)
        assert cache is not None
        return cache, pad_mask

    @torch.no_grad()
    def sample_actions(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        proprio: torch.Tensor,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Euler-integrate the flow from noise (t=1) to actions (t=0): (B, H, action_dim), normalised.

        Deterministic given ``noise`` (B, H, model_action_dim). With ``use_cache`` the prefix is
        encoded once; without it every step recomputes the full joint forward (same result).
        """
        cfg = self.config
        steps = num_steps or cfg.num_inference_steps
        batch_size = input_ids.shape[0]
        device = input_ids.device
        proprio = self._pad(proprio.to(self.dtype), cfg.model_proprio_dim)
        if noise is None:
            noise = torch.randn(
                batch_size, cfg.action_horizon, cfg.model_action_dim, generator=generator, device=device
            )
        x = noise.to(self.dtype)
        if x.shape[1:] != (cfg.action_horizon, cfg.model_action_dim):
            raise ValueError(f"noise must be (B, {cfg.action_horizon}, {cfg.model_action_dim}), got {tuple(x.shape)}")
        dt = -1.0 / steps
        suffix_len = 1 + cfg.action_horizon
        if use_cache:
            cache, pad_mask = self.build_prefix_cache(pixel_values, input_ids, attention_mask)
            prefix_len = pad_mask.shape[1]
            mask = make_block_attention_mask(pad_mask, suffix_len)[:, prefix_len:]
            positions = self._suffix_positions(pad_mask, suffix_len)
        else:
            prefix, pad_mask = self.embed_prefix(pixel_values, input_ids, attention_mask)
        for step in range(steps):
            time = torch.full((batch_size,), 1.0 + step * dt, dtype=torch.float32, device=device)
            if use_cache:
                suffix = self.embed_suffix(proprio, x, time)
                _, suffix_out, _ = self._run_layers(None, suffix, positions, mask, cache=cache)
                velocity = self._velocity(suffix_out)
            else:
                velocity = self.predict_velocity(prefix, pad_mask, proprio, x, time)
            x = x + dt * velocity
        return x[..., : cfg.action_dim]

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path, processor: Any | None = None) -> None:
        """Write ``config.json``, ``model.safetensors``, ``norm_stats.json`` (if set) and the
        processor's tokenizer files (if given). peft-wrapped models must be merged first."""
        if self.paligemma is not self.vlm or self.expert is not self.action_expert:
            raise ValueError("the model holds peft adapters: merge them (merge_and_unload) or save the adapters")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(directory / CONFIG_NAME)
        save_model(self, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        if self.norm_stats:
            save_norm_stats(self.norm_stats, directory / NORM_STATS_NAME)
        if processor is not None:
            processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> PI0StyleVLA:
        """Load a checkpoint written by ``save_pretrained`` (weights, config, norm stats)."""
        directory = Path(directory)
        config = VLAConfig.from_json_file(directory / CONFIG_NAME)
        with no_init_weights():  # every weight is overwritten by the checkpoint: skip random init
            model = cls(config)
        model.vlm.tie_weights()
        missing, unexpected = load_model(model, str(directory / WEIGHTS_NAME), strict=True)
        if missing or unexpected:
            raise ValueError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
        if (directory / NORM_STATS_NAME).exists():
            model.norm_stats = load_norm_stats(directory / NORM_STATS_NAME)
        model = model.to(device)
        return model.to(dtype) if dtype is not None else model
