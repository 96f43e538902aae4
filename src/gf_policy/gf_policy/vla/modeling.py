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

Training targets beyond pi0 (``VLAConfig``; all off by default, see ``techniques``): discrete
action bins predicted by the VLM's language head (parallel query tokens or autoregressive),
knowledge insulation (the expert reads the VLM's keys/values through a stop-gradient), latent
actions (denoised by the expert, or predicted as tokens by the VLM), and the language-model loss
of co-training (``compute_lm_loss``) with greedy decoding (``generate_text``). They use the
layout ``[prefix | VLM block | expert suffix]``; with none of them on, the code path is pi0's.
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
from .local_files import local_dir as require_local_dir
from .normalization import NORM_STATS_NAME, NormStats, load_norm_stats, save_norm_stats
from .techniques import (
    ActionDiscretizer,
    TokenRange,
    make_layout_mask,
    make_prefix_lm_mask,
    reserved_token_ranges,
)

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


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, impl: str,
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Grouped-query attention with an explicit boolean mask (B, Lq, Lk); returns (B, Lq, H * D).

    With ``record`` (a list) the explicit softmax runs and the weights (B, H, Lq, Lk) are
    appended to it (attention maps, ``gf_training.attention``)."""
    batch, heads, q_len, head_dim = q.shape
    if k.shape[1] != heads:  # GQA: query head h reads key/value head h // group
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    scaling = head_dim**-0.5
    if impl == "sdpa" and record is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scaling)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
        scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if record is not None:
            record.append(weights.detach())
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
        if config.proprio_dropout > 0:
            # Stands in for a hidden proprio vector (in normalised input space, so it reaches the
            # expert's state token and the VLM's alike); learned, so it can leave the data's range.
            self.proprio_mask_value = nn.Parameter(torch.zeros(config.model_proprio_dim))
        self._build_technique_heads()
        # Detached per-target losses of the last compute_loss / forward call (for logging).
        self.last_losses: dict[str, torch.Tensor] = {}
        # When a list: every joint layer appends its attention weights (gf_training.attention).
        self.attention_recorder: list[torch.Tensor] | None = None
        self._init_new_weights()
        self._check_vlm_matches_config()
        if config.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    # ------------------------------------------------------------------ construction helpers
    def _build_technique_heads(self) -> None:
        """Parameters of the targets beyond flow matching (only those the config asks for)."""
        cfg = self.config
        vlm_width = int(cfg.text_config["hidden_size"])
        if cfg.discrete_actions is not None or cfg.latent_action_mode == "tokens":
            # The proprio "state" token that opens the VLM block (pi0 feeds proprio to the expert only).
            self.vlm_state_proj = nn.Linear(cfg.model_proprio_dim, vlm_width)
        if cfg.discrete_actions == "parallel":
            self.action_queries = nn.Parameter(torch.zeros(cfg.action_horizon * cfg.action_dim, vlm_width))
        if cfg.latent_action_mode == "tokens":
            self.latent_queries = nn.Parameter(torch.zeros(cfg.latent_action_tokens, vlm_width))
        if cfg.latent_action_mode == "expert":
            self.latent_in_proj = nn.Linear(cfg.latent_code_dim, cfg.expert_hidden_size)
            self.latent_out_proj = nn.Linear(cfg.expert_hidden_size, cfg.latent_code_dim)
            # The latent action model's (unit-norm) code vectors: the expert denoises them.
            self.register_buffer("latent_codebook", torch.zeros(cfg.latent_codebook_size, cfg.latent_code_dim))
        self.action_tokens, self.latent_tokens = reserved_token_ranges(
            int(cfg.text_config["vocab_size"]),
            cfg.num_action_bins if cfg.discrete_actions is not None else 0,
            cfg.latent_codebook_size if cfg.latent_action_mode == "tokens" else 0,
        )
        self.discretizer = ActionDiscretizer(cfg.num_action_bins)

    def technique_modules(self) -> list[nn.Module | nn.Parameter]:
        """The parameters that exist only for discrete / latent targets."""
        names = ("vlm_state_proj", "action_queries", "latent_queries", "latent_in_proj", "latent_out_proj")
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def _init_new_weights(self) -> None:
        std = self.config.initializer_range
        new_modules = [self.expert, self.state_proj, self.action_in_proj, self.action_time_mlp_in,
                       self.action_time_mlp_out, self.action_out_proj]
        for extra in self.technique_modules():
            if isinstance(extra, nn.Parameter):
                nn.init.normal_(extra, std=std)
            else:
                new_modules.append(extra)
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
        pg_config = PaliGemmaConfig.from_pretrained(str(require_local_dir(local_dir, "PaliGemma model")))
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
    def _visible_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        """``proprio`` (B, model_proprio_dim) as the model may see it: with ``proprio_dropout`` p,
        each training sample's vector is hidden (replaced by ``proprio_mask_value``) with
        probability p; p = 1 hides it always, at inference too (a policy without proprio)."""
        p = self.config.proprio_dropout
        if p <= 0 or (p < 1 and not self.training):
            return proprio
        hidden = torch.ones(proprio.shape[0], 1, dtype=torch.bool, device=proprio.device)
        if p < 1:
            hidden = torch.rand(proprio.shape[0], 1, device=proprio.device) < p
        return torch.where(hidden, self.proprio_mask_value.to(proprio.dtype), proprio)

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

    def embed_suffix(
        self, proprio: torch.Tensor, noisy_actions: torch.Tensor, time: torch.Tensor,
        noisy_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[proprio token, (latent tokens,) action tokens] (B, 1 + [n +] H, expert width); time
        enters by an MLP on [token embedding, sinusoidal time embedding]."""
        state = self.state_proj(proprio.to(self.dtype))
        parts = [state[:, None, :]]
        if noisy_latents is not None:
            parts.append(self._fuse_time(self.latent_in_proj(noisy_latents.to(self.dtype)), time))
        parts.append(self._fuse_time(self.action_in_proj(noisy_actions.to(self.dtype)), time))
        return torch.cat(parts, dim=1)

    def _fuse_time(self, tokens: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        time_emb = sinusoidal_time_embedding(time, cfg.expert_hidden_size, cfg.time_min_period, cfg.time_max_period)
        time_emb = time_emb.to(tokens.dtype)[:, None, :].expand_as(tokens)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([tokens, time_emb], dim=2))))

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
        keep_prefix_out: bool = False,
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
        impl = self.config.attn_implementation
        if (self.config.knowledge_insulation and len(qs) == 2 and past is None and torch.is_grad_enabled()
                and self.attention_recorder is None):
            # Knowledge insulation: the expert reads the VLM stream's keys/values through a
            # stop-gradient. The VLM rows never attend to expert keys (block mask), so splitting
            # the attention by query stream gives the same forward values.
            n_vlm = lengths[0]
            out = torch.cat([
                _attention(qs[0], ks[0], vs[0], mask[:, :n_vlm, :n_vlm], impl),
                _attention(qs[1], torch.cat([ks[0].detach(), ks[1]], dim=2),
                           torch.cat([vs[0].detach(), vs[1]], dim=2), mask[:, n_vlm:], impl),
            ], dim=1)
        else:
            out = _attention(torch.cat(qs, dim=2), k, v, mask, impl, record=self.attention_recorder)

        # The prefix output of the last layer feeds nothing unless the VLM's LM head reads it
        # (``keep_prefix_out``): otherwise skip its attention output projection and MLP.
        last = index == len(self.action_expert.layers) - 1 and not keep_prefix_out
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
        keep_prefix_out: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, KVCache | None]:
        """All layers over the given streams; ``positions`` (B, Lq) covers prefix then suffix.

        Returns the final suffix states (before the expert's final norm), the final prefix states
        (before the VLM's final norm) only with ``keep_prefix_out`` (else ``None``: pi0 never
        needs them), and the per-layer K/V of this call's tokens if ``build_cache``.
        """
        any_stream = prefix if prefix is not None else suffix
        cos, sin = self.vlm.model.language_model.rotary_emb(any_stream, positions)
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        new_cache: KVCache | None = [] if build_cache else None
        for index in range(len(self.action_expert.layers)):
            past = cache[index] if cache is not None else None
            if use_ckpt:
                prefix, suffix, k, v = checkpoint(
                    self._layer, index, prefix, suffix, cos, sin, mask, past, keep_prefix_out, use_reentrant=False
                )
            else:
                prefix, suffix, k, v = self._layer(index, prefix, suffix, cos, sin, mask, past, keep_prefix_out)
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
        if cfg.discrete_active or cfg.latent_active or not cfg.flow_matching:
            return self._technique_loss(batch, noise=noise, time=time)
        actions = batch["actions"].to(self.dtype)
        batch_size = actions.shape[0]
        actions = self._pad(actions, cfg.model_action_dim)
        proprio = self._visible_proprio(self._pad(batch["proprio"].to(self.dtype), cfg.model_proprio_dim))
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            time = self.sample_time(batch_size, actions.device)
        t = time.to(actions.dtype)[:, None, None]
        noisy = t * noise + (1 - t) * actions
        target = noise - actions
        prefix, pad_mask = self.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        velocity = self.predict_velocity(prefix, pad_mask, proprio, noisy, time)
        loss = self._flow_loss(velocity, target, batch.get("action_is_pad"))
        self.last_losses = {"flow": loss.detach()}
        return loss

    def _flow_loss(self, velocity: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
        err = (velocity.float() - target.float())[..., : self.config.action_dim].pow(2).mean(dim=-1)  # (B, H)
        if is_pad is None:
            return err.mean()
        valid = (~is_pad.bool()).float()
        return (err * valid).sum() / valid.sum().clamp_min(1.0)

    def forward(
        self, batch: Mapping[str, torch.Tensor], vl_batch: Mapping[str, torch.Tensor] | None = None,
        vl_fraction: float = 0.0, vl_loss_weight: float = 1.0,
    ) -> torch.Tensor:
        """Training loss (so that DDP/FSDP wrappers see a forward call).

        Co-training: with ``vl_batch`` (see ``compute_lm_loss``) the loss is the per-sample mean
        over a mixed batch, ``(1 - f) * action loss + f * w * LM loss`` with ``f = vl_fraction``
        (the share of vision-language samples) and ``w = vl_loss_weight``."""
        loss = self.compute_loss(batch)
        if vl_batch is None:
            return loss
        losses = dict(self.last_losses)
        lm = self.compute_lm_loss(vl_batch)
        self.last_losses = {**losses, "lm": lm.detach()}
        return (1.0 - vl_fraction) * loss + vl_fraction * vl_loss_weight * lm

    # ------------------------------------------------------------------ discrete / latent targets
    @property
    def _vlm_width(self) -> int:
        return int(self.config.text_config["hidden_size"])

    def _n_expert_latents(self) -> int:
        """Latent tokens in the expert suffix (expert mode, latent targets on)."""
        cfg = self.config
        return cfg.latent_action_tokens if cfg.latent_active and cfg.latent_action_mode == "expert" else 0

    def _expert_blocks(self, n_latents: int) -> list[int]:
        """Block ids of [proprio | latents | actions]: latents see proprio and each other, actions see all."""
        horizon = self.config.action_horizon
        if n_latents:
            return [1] + [2] * n_latents + [3] * horizon
        return [1] + [2] * horizon

    def _latent_targets(self, codes: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, n) -> code vectors (B, n, d), scaled to unit variance per dimension."""
        book = self.latent_codebook
        if not bool(book.abs().sum() > 0):
            raise ValueError("the latent codebook is empty: call set_latent_codebook() with the latent action model's codes")
        return book[codes] * (book.shape[1] ** 0.5)

    def set_latent_codebook(self, codebook: torch.Tensor) -> None:
        """Copy the latent action model's code vectors (K, d) into the model (expert mode)."""
        if not hasattr(self, "latent_codebook"):
            raise ValueError("latent_action_mode is not 'expert': the model keeps no codebook")
        if tuple(codebook.shape) != tuple(self.latent_codebook.shape):
            raise ValueError(f"codebook shape {tuple(codebook.shape)} != {tuple(self.latent_codebook.shape)}")
        with torch.no_grad():
            self.latent_codebook.copy_(codebook.to(self.latent_codebook))

    def _has_vlm_block(self) -> bool:
        cfg = self.config
        return cfg.discrete_active or cfg.decodes_discrete or (cfg.latent_active and cfg.latent_action_mode == "tokens")

    def _vlm_block(
        self, proprio: torch.Tensor, actions: torch.Tensor | None, with_actions: bool = True,
    ) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """The VLM block [state, (latent queries), (action queries | action tokens)] (B, Lb, D).

        Returns it and, per target, ``(first logit position in the block, count)``: parallel
        queries predict their own target; autoregressive tokens are predicted from the position
        before them (teacher forcing: the inputs are the target tokens shifted by one).
        ``actions`` (normalised, (B, H, action_dim)) is needed for the autoregressive variant;
        ``with_actions=False`` stops before the action part (the start of AR decoding)."""
        cfg = self.config
        batch = proprio.shape[0]
        parts = [self.vlm_state_proj(proprio.to(self.dtype))[:, None, :]]
        info: dict[str, tuple[int, int]] = {}
        pos = 1
        if cfg.latent_active and cfg.latent_action_mode == "tokens":
            parts.append(self.latent_queries.to(self.dtype)[None].expand(batch, -1, -1))
            info["latent"] = (pos, cfg.latent_action_tokens)
            pos += cfg.latent_action_tokens
        n_targets = cfg.action_horizon * cfg.action_dim
        if cfg.discrete_actions == "parallel" and with_actions:
            parts.append(self.action_queries.to(self.dtype)[None].expand(batch, -1, -1))
            info["discrete"] = (pos, n_targets)
        elif cfg.discrete_actions == "autoregressive":
            info["discrete"] = (pos - 1, n_targets)
            if with_actions:
                ids = self.action_tokens.ids(self.discretizer.encode(actions[..., : cfg.action_dim]).flatten(1))
                parts.append(self.vlm.model.language_model.embed_tokens(ids[:, :-1]).to(self.dtype))
        return torch.cat(parts, dim=1), info

    def _reserved_logits(self, hidden: torch.Tensor, tokens: TokenRange) -> torch.Tensor:
        """LM-head logits over a reserved id range only (B, N, size)."""
        weight = self.vlm.lm_head.weight[tokens.start : tokens.stop]
        return F.linear(hidden, weight)

    def _token_ce(self, hidden: torch.Tensor, index: torch.Tensor, tokens: TokenRange) -> torch.Tensor:
        """Per-target cross-entropy (B, N) of range indices ``index`` (B, N) given final hidden states."""
        if self.config.discrete_vocab == "full":
            logits, target = self.vlm.lm_head(hidden), tokens.ids(index)
        else:
            logits, target = self._reserved_logits(hidden, tokens), index
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view(index.shape)

    def _technique_loss(
        self, batch: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None, time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Losses of the extended layout ``[prefix | VLM block | expert suffix]`` (see
        ``gf_policy.vla.techniques``): flow matching (optionally with jointly denoised latent
        actions), discrete action tokens and latent-action tokens; weighted sum."""
        cfg = self.config
        actions = batch["actions"].to(self.dtype)
        batch_size, horizon = actions.shape[:2]
        proprio = self._visible_proprio(self._pad(batch["proprio"].to(self.dtype), cfg.model_proprio_dim))
        is_pad = batch.get("action_is_pad")
        prefix, pad_mask = self.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        prefix_len = prefix.shape[1]
        n_valid = pad_mask.long().sum(dim=1, keepdim=True)
        positions = [pad_mask.long().cumsum(1) - 1]
        stream, info, block_len = prefix, {}, 0
        if self._has_vlm_block():
            block, info = self._vlm_block(proprio, actions)
            block_len = block.shape[1]
            stream = torch.cat([prefix, block], dim=1)
            positions.append(n_valid + torch.arange(block_len, device=prefix.device)[None, :])
        suffix, expert_blocks, n_lat = None, [], 0
        if cfg.flow_matching:
            padded = self._pad(actions, cfg.model_action_dim)
            noise = torch.randn_like(padded) if noise is None else noise.to(padded)
            time = self.sample_time(batch_size, padded.device) if time is None else time
            t = time.to(padded.dtype)[:, None, None]
            noisy_latents = None
            n_lat = self._n_expert_latents()
            if n_lat:
                z = self._latent_targets(batch["latent_codes"].long()).to(padded.dtype)
                z_noise = torch.randn_like(z)
                noisy_latents, z_target = t * z_noise + (1 - t) * z, z_noise - z
            suffix = self.embed_suffix(proprio, t * noise + (1 - t) * padded, time, noisy_latents)
            expert_blocks = self._expert_blocks(n_lat)
            positions.append(n_valid + torch.arange(len(expert_blocks), device=prefix.device)[None, :])
        mask = make_layout_mask(pad_mask, block_len, cfg.discrete_actions == "autoregressive", expert_blocks)
        vlm_out, suffix_out, _ = self._run_layers(stream, suffix, torch.cat(positions, 1), mask,
                                                  keep_prefix_out=block_len > 0)
        losses: dict[str, torch.Tensor] = {}
        if suffix_out is not None:
            losses["flow"] = self._flow_loss(self._velocity(suffix_out), noise - padded, is_pad)
            if n_lat:
                z_velocity = self.latent_out_proj(self.action_expert.norm(suffix_out[:, 1 : 1 + n_lat]))
                losses["latent"] = (z_velocity.float() - z_target.float()).pow(2).mean()
        if block_len:
            hidden = self.vlm.model.language_model.norm(vlm_out[:, prefix_len:])
            if "discrete" in info:
                start, count = info["discrete"]
                bins = self.discretizer.encode(actions[..., : cfg.action_dim]).flatten(1)
                ce = self._token_ce(hidden[:, start : start + count], bins, self.action_tokens)
                ce = ce.view(batch_size, horizon, cfg.action_dim).mean(dim=-1)
                valid = torch.ones_like(ce) if is_pad is None else (~is_pad.bool()).float()
                losses["discrete"] = (ce * valid).sum() / valid.sum().clamp_min(1.0)
            if "latent" in info:
                start, count = info["latent"]
                codes = batch["latent_codes"].long()
                losses["latent"] = self._token_ce(hidden[:, start : start + count], codes, self.latent_tokens).mean()
        weights = {"flow": 1.0, "discrete": cfg.discrete_loss_weight, "latent": cfg.latent_loss_weight}
        self.last_losses = {k: v.detach() for k, v in losses.items()}
        return sum(weights[k] * v for k, v in losses.items())

    @torch.no_grad()
    def sample_discrete(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, proprio: torch.Tensor,
    ) -> torch.Tensor:
        """Decode the discrete action tokens (greedy): (B, H, action_dim) bin centres, normalised.

        Parallel: one forward over [prefix | state, queries]. Autoregressive: the prefix is
        encoded once (KV cache), then one token per step through the VLM, OpenVLA style."""
        cfg = self.config
        if cfg.discrete_actions is None:
            raise ValueError("the model has no discrete action head (discrete_actions is null)")
        proprio = self._visible_proprio(self._pad(proprio.to(self.dtype), cfg.model_proprio_dim))
        batch_size = proprio.shape[0]
        n_targets = cfg.action_horizon * cfg.action_dim
        if cfg.discrete_actions == "parallel":
            prefix, pad_mask = self.embed_prefix(pixel_values, input_ids, attention_mask)
            block, info = self._vlm_block(proprio, None)
            n_valid = pad_mask.long().sum(dim=1, keepdim=True)
            positions = torch.cat([pad_mask.long().cumsum(1) - 1,
                                   n_valid + torch.arange(block.shape[1], device=block.device)[None]], 1)
            mask = make_layout_mask(pad_mask, block.shape[1])
            out, _, _ = self._run_layers(torch.cat([prefix, block], 1), None, positions, mask, keep_prefix_out=True)
            start, count = info["discrete"]
            hidden = self.vlm.model.language_model.norm(out[:, prefix.shape[1] + start : prefix.shape[1] + start + count])
            bins = self._reserved_logits(hidden, self.action_tokens).argmax(dim=-1)
        else:
            cache, pad_mask = self.build_prefix_cache(pixel_values, input_ids, attention_mask)
            n_valid = pad_mask.long().sum(dim=1, keepdim=True)
            tokens, _ = self._vlm_block(proprio, None, with_actions=False)
            done, picked = 0, []
            for _ in range(n_targets):
                length = tokens.shape[1]
                positions = n_valid + done + torch.arange(length, device=tokens.device)[None]
                own = torch.ones(length, done + length, dtype=torch.bool, device=tokens.device).tril(done)
                mask = torch.cat([pad_mask[:, None, :].expand(-1, length, -1), own[None].expand(batch_size, -1, -1)], 2)
                out, _, new = self._run_layers(tokens, None, positions, mask, cache=cache, build_cache=True,
                                               keep_prefix_out=True)
                cache = [(torch.cat([ck, k], 2), torch.cat([cv, v], 2)) for (ck, cv), (k, v) in zip(cache, new)]
                done += length
                hidden = self.vlm.model.language_model.norm(out[:, -1:])
                bin_ = self._reserved_logits(hidden, self.action_tokens).argmax(dim=-1)  # (B, 1)
                picked.append(bin_)
                tokens = self.vlm.model.language_model.embed_tokens(self.action_tokens.ids(bin_)).to(self.dtype)
            bins = torch.cat(picked, dim=1)
        return self.discretizer.decode(bins).view(batch_size, cfg.action_horizon, cfg.action_dim).to(self.dtype)

    # ------------------------------------------------------------------ language head (co-training, probes)
    def compute_lm_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Next-token cross-entropy on the answer of vision-language samples (PaliGemma prefix-LM).

        ``batch``: ``vl_pixel_values``, ``vl_input_ids`` ([image tokens, BOS, question, "\\n",
        answer, EOS], right-padded), ``vl_attention_mask`` and ``vl_target_mask`` (True on the
        answer and EOS tokens: they are predicted, causally; the rest is a bidirectional prefix)."""
        ids, attn = batch["vl_input_ids"], batch["vl_attention_mask"].bool()
        target = batch["vl_target_mask"].bool() & attn
        embeds, pad_mask = self.embed_prefix(batch["vl_pixel_values"], ids, attn)
        mask = make_prefix_lm_mask(pad_mask, target)
        positions = (pad_mask.long().cumsum(1) - 1).clamp_min(0)
        out, _, _ = self._run_layers(embeds, None, positions, mask, keep_prefix_out=True)
        predicts = target[:, 1:]  # position j predicts token j + 1
        hidden = self.vlm.model.language_model.norm(out[:, :-1][predicts])
        logits = self.vlm.lm_head(hidden)
        return F.cross_entropy(logits.float(), ids[:, 1:][predicts])

    @torch.no_grad()
    def generate_text(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        max_new_tokens: int = 24, eos_token_id: int | None = 1, suppress_ids: list[int] | None = None,
    ) -> list[list[int]]:
        """Greedy decoding from a right-padded prompt [image tokens, BOS, prompt, "\\n"] (the
        PaliGemma captioning format); returns the new token ids of each row, up to EOS.
        ``suppress_ids`` are never generated (e.g. the reserved action-bin ids)."""
        embeds, pad_mask = self.embed_prefix(pixel_values, input_ids, attention_mask)
        batch_size = embeds.shape[0]
        positions = pad_mask.long().cumsum(1) - 1
        mask = make_layout_mask(pad_mask)
        out, _, cache = self._run_layers(embeds, None, positions, mask, build_cache=True, keep_prefix_out=True)
        n_valid = pad_mask.long().sum(dim=1)
        hidden = out[torch.arange(batch_size), n_valid - 1][:, None]
        key_mask = pad_mask
        outputs: list[list[int]] = [[] for _ in range(batch_size)]
        finished = torch.zeros(batch_size, dtype=torch.bool, device=embeds.device)
        for step in range(max_new_tokens):
            logits = self.vlm.lm_head(self.vlm.model.language_model.norm(hidden))[:, -1].float()
            if suppress_ids:
                logits[:, suppress_ids] = float("-inf")
            token = logits.argmax(dim=-1)
            for row in range(batch_size):
                if not finished[row]:
                    if eos_token_id is not None and int(token[row]) == eos_token_id:
                        finished[row] = True
                    else:
                        outputs[row].append(int(token[row]))
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            key_mask = torch.cat([key_mask, torch.ones(batch_size, 1, dtype=torch.bool, device=embeds.device)], 1)
            emb = self.vlm.model.language_model.embed_tokens(token[:, None]).to(self.dtype)
            out, _, new = self._run_layers(emb, None, (n_valid + step)[:, None], key_mask[:, None, :], cache=cache,
                                           build_cache=True, keep_prefix_out=True)
            cache = [(torch.cat([ck, k], 2), torch.cat([cv, v], 2)) for (ck, cv), (k, v) in zip(cache, new)]
            hidden = out
        return outputs

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
        Models that decode discrete actions (``VLAConfig.decodes_discrete``) return
        ``sample_discrete`` instead; with latent actions in the expert they are integrated jointly.
        """
        cfg = self.config
        if cfg.decodes_discrete:
            return self.sample_discrete(pixel_values, input_ids, attention_mask, proprio)
        steps = num_steps or cfg.num_inference_steps
        batch_size = input_ids.shape[0]
        device = input_ids.device
        proprio = self._visible_proprio(self._pad(proprio.to(self.dtype), cfg.model_proprio_dim))
        if noise is None:
            noise = torch.randn(
                batch_size, cfg.action_horizon, cfg.model_action_dim, generator=generator, device=device
            )
        x = noise.to(self.dtype)
        if x.shape[1:] != (cfg.action_horizon, cfg.model_action_dim):
            raise ValueError(f"noise must be (B, {cfg.action_horizon}, {cfg.model_action_dim}), got {tuple(x.shape)}")
        dt = -1.0 / steps
        if self._n_expert_latents():
            return self._sample_with_latents(pixel_values, input_ids, attention_mask, proprio, x, steps, generator)
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

    def _sample_with_latents(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        proprio: torch.Tensor, x: torch.Tensor, steps: int, generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Joint Euler integration of latent actions and robot actions (villa-X style; the robot
        action tokens attend to the latent tokens at every step)."""
        cfg = self.config
        n_lat = self._n_expert_latents()
        batch_size, device = x.shape[0], x.device
        z = torch.randn(batch_size, n_lat, cfg.latent_code_dim, generator=generator, device=device).to(self.dtype)
        cache, pad_mask = self.build_prefix_cache(pixel_values, input_ids, attention_mask)
        blocks = self._expert_blocks(n_lat)
        prefix_len = pad_mask.shape[1]
        mask = make_layout_mask(pad_mask, 0, False, blocks)[:, prefix_len:]
        positions = self._suffix_positions(pad_mask, len(blocks))
        dt = -1.0 / steps
        for step in range(steps):
            time = torch.full((batch_size,), 1.0 + step * dt, dtype=torch.float32, device=device)
            suffix = self.embed_suffix(proprio, x, time, z)
            _, suffix_out, _ = self._run_layers(None, suffix, positions, mask, cache=cache)
            x = x + dt * self._velocity(suffix_out)
            z = z + dt * self.latent_out_proj(self.action_expert.norm(suffix_out[:, 1 : 1 + n_lat]))
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
        directory = require_local_dir(directory, "checkpoint")
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
