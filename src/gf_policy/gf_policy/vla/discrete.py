"""Discrete action targets and knowledge insulation (a mixin of ``PI0StyleVLA``).

Actions are binned (``techniques.ActionDiscretizer``) and predicted as the last vocabulary ids
by the VLM's language head from the VLM block (``targets``):

* ``parallel``: one learnable query token per action dimension and step (``action_queries``),
  all decoded in one forward;
* ``autoregressive`` (OpenVLA): the bin tokens themselves, causally; decoded one at a time
  over the prefix's KV cache.

Knowledge insulation (``VLAConfig.knowledge_insulation``): the expert reads the VLM's keys and
values through a stop-gradient (``insulated_attention``, called by the joint layer), so the
flow-matching loss trains the expert only and the VLM learns from the discrete targets.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import attention
from .techniques import make_layout_mask


def insulated_attention(
    qs: list[torch.Tensor], ks: list[torch.Tensor], vs: list[torch.Tensor], mask: torch.Tensor, impl: str,
) -> torch.Tensor:
    """Joint attention of a [VLM stream, expert stream] pair, the expert's keys/values of the VLM
    stream detached. The VLM rows never attend to expert keys (block mask), so splitting the
    attention by query stream gives the same forward values as one attention over both."""
    n_vlm = qs[0].shape[2]
    return torch.cat([
        attention(qs[0], ks[0], vs[0], mask[:, :n_vlm, :n_vlm], impl),
        attention(qs[1], torch.cat([ks[0].detach(), ks[1]], dim=2),
                  torch.cat([vs[0].detach(), vs[1]], dim=2), mask[:, n_vlm:], impl),
    ], dim=1)


class DiscreteActionsMixin:
    """Discrete action bins through the VLM's language head (see the module doc)."""

    def _build_discrete_heads(self, vlm_width: int) -> None:
        cfg = self.config
        if cfg.discrete_actions == "parallel":
            self.action_queries = nn.Parameter(torch.zeros(cfg.action_horizon * cfg.action_dim, vlm_width))

    def _discrete_block_part(
        self, batch: int, actions: torch.Tensor | None, start: int, with_actions: bool,
    ) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
        """The discrete-action tokens of the VLM block, which begin at block index ``start``, and
        ``(first logit position, count)`` of their targets (``None``: no discrete targets).

        Parallel: the queries predict their own targets (nothing without ``with_actions``).
        Autoregressive: the target tokens but the last (from ``actions``), each target predicted
        from the position before it, the first from the block's token before the part."""
        cfg = self.config
        n_targets = cfg.action_horizon * cfg.action_dim
        if cfg.discrete_actions == "parallel" and with_actions:
            return self.action_queries.to(self.dtype)[None].expand(batch, -1, -1), (start, n_targets)
        if cfg.discrete_actions == "autoregressive":
            tokens = None
            if with_actions:
                ids = self.action_tokens.ids(self.discretizer.encode(actions[..., : cfg.action_dim]).flatten(1))
                tokens = self.vlm.model.language_model.embed_tokens(ids[:, :-1]).to(self.dtype)
            return tokens, (start - 1, n_targets)
        return None, None

    def _discrete_loss(
        self, hidden: torch.Tensor, targets: tuple[int, int], actions: torch.Tensor, is_pad: torch.Tensor | None,
    ) -> torch.Tensor:
        """Cross-entropy of the action bins, averaged over action dims and valid steps; ``hidden``
        are the VLM block's normed final states, ``targets`` = (first logit position, count)."""
        cfg = self.config
        batch_size, horizon = actions.shape[:2]
        start, count = targets
        bins = self.discretizer.encode(actions[..., : cfg.action_dim]).flatten(1)
        ce = self._token_ce(hidden[:, start : start + count], bins, self.action_tokens)
        ce = ce.view(batch_size, horizon, cfg.action_dim).mean(dim=-1)
        valid = torch.ones_like(ce) if is_pad is None else (~is_pad.bool()).float()
        return (ce * valid).sum() / valid.sum().clamp_min(1.0)

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
