"""The joint VLM + action-expert transformer of ``PI0StyleVLA`` (a mixin of it).

Token layout and attention (pi0):

    [ image tokens | <bos> text "\\n" (pad) ]  [ proprio ]  [ action_1 ... action_H ]
      prefix (VLM weights)                      suffix (action-expert weights)

Every layer ``i`` computes Q/K/V for the prefix with VLM layer ``i`` and for the suffix with
expert layer ``i``; one attention runs over the concatenation under a block mask: the prefix
attends bidirectionally to itself, the proprio token to the prefix and itself, the action
tokens to everything. Because the prefix never attends to the suffix, the prefix keys/values
are the same for every denoising step, so sampling computes them once (the KV cache) and then
runs only the suffix through the expert for each Euler step.

The masks are built by ``layers.make_block_attention_mask`` (pi0's layout) and
``techniques.make_layout_mask`` (with a VLM block and latent tokens), from the block ids of
``_expert_blocks``; the RoPE positions of the suffix by ``_suffix_positions``. Knowledge
insulation swaps the attention for ``discrete.insulated_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .discrete import insulated_attention
from .layers import KVCache, apply_rope, attention, sinusoidal_time_embedding


class JointLayersMixin:
    """The joint layers over [prefix | suffix] streams, their positions and block ids (see the module doc)."""

    def _fuse_time(self, tokens: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Suffix tokens with the flow-matching time: an MLP on [token, sinusoidal time embedding]."""
        cfg = self.config
        time_emb = sinusoidal_time_embedding(time, cfg.expert_hidden_size, cfg.time_min_period, cfg.time_max_period)
        time_emb = time_emb.to(tokens.dtype)[:, None, :].expand_as(tokens)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([tokens, time_emb], dim=2))))

    @staticmethod
    def _suffix_positions(prefix_pad_mask: torch.Tensor, suffix_len: int) -> torch.Tensor:
        n_valid = prefix_pad_mask.long().sum(dim=1, keepdim=True)
        return n_valid + torch.arange(suffix_len, device=prefix_pad_mask.device)[None, :]

    def _expert_blocks(self, n_latents: int) -> list[int]:
        """Block ids of the expert suffix [proprio | (latents) | actions] (``make_layout_mask``):
        pi0's [1, 2, ..., 2]; latent actions see proprio and each other, the actions see all."""
        horizon = self.config.action_horizon
        if n_latents:
            return [1] + [2] * n_latents + [3] * horizon
        return [1] + [2] * horizon

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
            qs.append(apply_rope(attn.q_proj(x).view(shape).transpose(1, 2), c, s))
            ks.append(apply_rope(attn.k_proj(x).view(shape).transpose(1, 2), c, s))
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
            out = insulated_attention(qs, ks, vs, mask, impl)  # discrete.py: stop-gradient into the VLM
        else:
            out = attention(torch.cat(qs, dim=2), k, v, mask, impl, record=self.attention_recorder)

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
