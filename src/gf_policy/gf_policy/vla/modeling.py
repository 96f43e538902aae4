"""The pi0-style VLA: PaliGemma + a Gemma-style action expert trained by flow matching.

The VLM reads the prefix [image tokens | text], the action expert the suffix [proprio |
noisy actions]; the two share attention layer by layer under pi0's block mask (``joint``: the
token layout, the joint layers, the KV cache of the prefix for sampling).

Numerics follow transformers' ``PI0ForConditionalGeneration`` (checked by a test on tiny
configs): text embeddings scaled by sqrt(width) (Gemma), image and suffix embeddings not
scaled, RoPE positions = cumulative count of valid tokens, the expert's final RMSNorm before the
action head.

This module is pi0 itself, built from the pieces in ``layers`` and ``joint``; construction and
checkpoints are in ``persistence``. The training targets beyond it (``VLAConfig``; all off by
default) live in modules of their own, mixed into ``PI0StyleVLA``:

* ``targets``  -- what they share: their parameters (registered on the model, so checkpoint keys
  stay put), the VLM block of the layout ``[prefix | VLM block | expert suffix]`` (see
  ``techniques``) whose tokens the VLM's language head predicts, the weighting of the losses;
* ``discrete`` -- discrete action bins (parallel or autoregressive), knowledge insulation;
* ``latent``   -- latent actions (denoised by the expert, or predicted as VLM tokens);
* ``lm``       -- the language-model loss of co-training and greedy text decoding.

The core calls them at marked places only: ``compute_loss`` through ``_trains_beyond_flow``,
``_vlm_block`` / ``_vlm_block_losses`` / ``_weighted_loss`` and ``_noisy_latents`` /
``_latent_flow_loss``; ``sample_actions`` through ``sample_discrete`` and ``_initial_latents`` /
``_latent_velocity``; the joint layer through ``insulated_attention``. With none of them on,
every path is pi0's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PaliGemmaForConditionalGeneration

from .configuration import VLAConfig
from .discrete import DiscreteActionsMixin
from .joint import JointLayersMixin
from .latent import LatentActionsMixin
from .layers import ActionExpert, KVCache, make_block_attention_mask, unwrap
from .lm import LanguageModelMixin
from .normalization import NormStats
from .persistence import WEIGHTS_NAME, PretrainedMixin
from .targets import TechniqueTargetsMixin
from .techniques import make_layout_mask
from .vision_stem import install_conv_stem

__all__ = ["BATCH_KEYS", "WEIGHTS_NAME", "PI0StyleVLA", "make_block_attention_mask"]

# Keys of a training/inference batch (see ``PI0StyleVLA.compute_loss``).
BATCH_KEYS = ("pixel_values", "input_ids", "attention_mask", "proprio", "actions", "action_is_pad")


class PI0StyleVLA(TechniqueTargetsMixin, DiscreteActionsMixin, LatentActionsMixin, LanguageModelMixin,
                  JointLayersMixin, PretrainedMixin, nn.Module):
    """PaliGemma VLM + action expert sharing attention layer by layer; flow-matching action head.

    ``self.paligemma`` stays a ``PaliGemmaForConditionalGeneration`` (its LM head remains usable
    for co-training); it and ``self.expert`` may be wrapped by peft (see ``gf_training.schemes``).
    The mixins add the techniques' methods, the joint layers (``joint``) and construction /
    checkpoints (``persistence``); every parameter stays registered on this module, so the
    checkpoint's key names do not depend on where the code lives.
    """

    def __init__(self, config: VLAConfig, paligemma: PaliGemmaForConditionalGeneration | None = None):
        super().__init__()
        self.config = config
        self.paligemma = paligemma if paligemma is not None else PaliGemmaForConditionalGeneration(config.paligemma_config())
        install_conv_stem(self.vlm)  # vision_stem.py: only if the VLM's config asks for one
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
        self._build_technique_heads()  # targets.py: only the parameters the config asks for
        # Detached per-target losses of the last compute_loss / forward call (for logging).
        self.last_losses: dict[str, torch.Tensor] = {}
        # When a list: every joint layer appends its attention weights (gf_training.attention).
        self.attention_recorder: list[torch.Tensor] | None = None
        self._init_new_weights()
        self._check_vlm_matches_config()
        if config.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    # ------------------------------------------------------------------ accessors
    @property
    def vlm(self) -> PaliGemmaForConditionalGeneration:
        """The PaliGemma model (unwrapped if peft wraps it)."""
        return unwrap(self.paligemma)

    @property
    def action_expert(self) -> ActionExpert:
        """The action expert (unwrapped if peft wraps it)."""
        return unwrap(self.expert)

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
        if noisy_latents is not None:  # latent actions in the expert (latent.py)
            parts.append(self._fuse_time(self.latent_in_proj(noisy_latents.to(self.dtype)), time))
        parts.append(self._fuse_time(self.action_in_proj(noisy_actions.to(self.dtype)), time))
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ flow
    def _velocity(self, suffix_out: torch.Tensor) -> torch.Tensor:
        horizon = self.config.action_horizon
        return self.action_out_proj(self.action_expert.norm(suffix_out[:, -horizon:]))

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

        With technique targets on (``targets``), the weighted sum of the flow loss and theirs:
        the same forward runs the VLM block (discrete actions, latent tokens) after the prefix and
        latent actions in the expert suffix; ``last_losses`` holds each part.
        """
        cfg = self.config
        actions = self._pad(batch["actions"].to(self.dtype), cfg.model_action_dim)
        proprio = self._visible_proprio(self._pad(batch["proprio"].to(self.dtype), cfg.model_proprio_dim))
        is_pad = batch.get("action_is_pad")
        beyond_pi0 = self._trains_beyond_flow()  # targets.py; False: pi0's loss alone
        # The random draws, in their fixed order: proprio dropout, noise, time, latent noise
        # (embedding the prefix draws none), so seeded runs repeat exactly.
        latents = None
        if cfg.flow_matching:
            if noise is None:
                noise = torch.randn_like(actions)
            elif beyond_pi0:
                # With technique targets a given noise takes the model's dtype; pi0 keeps it as
                # given (float32 noise on a bf16 model: float32 targets). Both as they always were.
                noise = noise.to(actions)
            if time is None:
                time = self.sample_time(actions.shape[0], actions.device)
            t = time.to(actions.dtype)[:, None, None]
            latents = self._noisy_latents(batch, t)  # latent.py: (noisy, target) in expert mode, else None
        # [prefix | VLM block | expert suffix]: the VLM block only for language-head targets, the
        # expert suffix only for flow matching. Positions of both continue from the prefix: they
        # never see each other.
        prefix, pad_mask = self.embed_prefix(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        n_valid = pad_mask.long().sum(dim=1, keepdim=True)
        streams, positions = [prefix], [pad_mask.long().cumsum(1) - 1]
        block, block_targets = None, {}
        if beyond_pi0 and self._has_vlm_block():
            block, block_targets = self._vlm_block(proprio, actions)  # targets.py
            streams.append(block)
            positions.append(n_valid + torch.arange(block.shape[1], device=prefix.device)[None, :])
        block_len = 0 if block is None else block.shape[1]
        suffix, expert_blocks = None, []
        if cfg.flow_matching:
            noisy_latents = None if latents is None else latents[0]
            suffix = self.embed_suffix(proprio, t * noise + (1 - t) * actions, time, noisy_latents)
            expert_blocks = self._expert_blocks(self._n_expert_latents())
            positions.append(n_valid + torch.arange(len(expert_blocks), device=prefix.device)[None, :])
        mask = make_layout_mask(pad_mask, block_len, cfg.discrete_actions == "autoregressive", expert_blocks)
        vlm_out, suffix_out, _ = self._run_layers(torch.cat(streams, 1), suffix, torch.cat(positions, 1), mask,
                                                  keep_prefix_out=block_len > 0)
        losses: dict[str, torch.Tensor] = {}
        if suffix_out is not None:
            losses["flow"] = self._flow_loss(self._velocity(suffix_out), noise - actions, is_pad)
            if latents is not None:
                losses["latent"] = self._latent_flow_loss(suffix_out, latents[1])  # latent.py
        if block is not None:  # targets.py: the language head's losses on the VLM block
            losses.update(self._vlm_block_losses(vlm_out[:, prefix.shape[1]:], block_targets, batch, actions, is_pad))
        self.last_losses = {k: v.detach() for k, v in losses.items()}
        return self._weighted_loss(losses)

    def _flow_loss(self, velocity: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
        err = (velocity.float() - target.float())[..., : self.config.action_dim].pow(2).mean(dim=-1)  # (B, H)
        if is_pad is None:
            return err.mean()
        valid = (~is_pad.bool()).float()
        return (err * valid).sum() / valid.sum().clamp_min(1.0)

    def forward(
        self, batch: Mapping[str, torch.Tensor] | None, vl_batch: Mapping[str, torch.Tensor] | None = None,
        vl_fraction: float = 0.0, vl_loss_weight: float = 1.0,
    ) -> torch.Tensor:
        """Training loss (so that DDP/FSDP wrappers see a forward call).

        Co-training: with ``vl_batch`` (see ``compute_lm_loss``) the loss is the per-sample mean
        over a mixed batch, ``(1 - f) * action loss + f * w * LM loss`` with ``f = vl_fraction``
        (the share of vision-language samples) and ``w = vl_loss_weight``. Without ``batch``
        (VLM pre-training) it is the LM loss alone."""
        if batch is None:
            if vl_batch is None:
                raise ValueError("forward needs an action batch, a vision-language batch, or both")
            lm = self.compute_lm_loss(vl_batch)  # lm.py
            self.last_losses = {"lm": lm.detach()}
            return vl_loss_weight * lm
        loss = self.compute_loss(batch)
        if vl_batch is None:
            return loss
        losses = dict(self.last_losses)
        lm = self.compute_lm_loss(vl_batch)
        self.last_losses = {**losses, "lm": lm.detach()}
        return (1.0 - vl_fraction) * loss + vl_fraction * vl_loss_weight * lm

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
        ``sample_discrete`` instead; latent actions in the expert are integrated jointly with the
        actions (villa-X style: the action tokens attend to them at every step; always cached).
        """
        cfg = self.config
        if cfg.decodes_discrete:
            return self.sample_discrete(pixel_values, input_ids, attention_mask, proprio)  # discrete.py
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
        z = self._initial_latents(batch_size, generator, x.device)  # latent.py: None unless in the expert
        if not use_cache and z is None:
            prefix, pad_mask = self.embed_prefix(pixel_values, input_ids, attention_mask)
            for step in range(steps):
                time = torch.full((batch_size,), 1.0 + step * dt, dtype=torch.float32, device=device)
                x = x + dt * self.predict_velocity(prefix, pad_mask, proprio, x, time)
            return x[..., : cfg.action_dim]
        cache, pad_mask = self.build_prefix_cache(pixel_values, input_ids, attention_mask)
        blocks = self._expert_blocks(self._n_expert_latents())
        mask = make_layout_mask(pad_mask, 0, False, blocks)[:, pad_mask.shape[1]:]
        positions = self._suffix_positions(pad_mask, len(blocks))
        for step in range(steps):
            time = torch.full((batch_size,), 1.0 + step * dt, dtype=torch.float32, device=device)
            _, suffix_out, _ = self._run_layers(None, self.embed_suffix(proprio, x, time, z), positions, mask, cache=cache)
            x = x + dt * self._velocity(suffix_out)
            if z is not None:
                z = z + dt * self._latent_velocity(suffix_out)
        return x[..., : cfg.action_dim]
