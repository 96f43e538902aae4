"""How the training targets beyond pi0 plug into ``PI0StyleVLA`` (a mixin of it).

The techniques (``VLAConfig``; discrete actions in ``discrete``, latent actions in ``latent``)
share what is kept here:

* their parameters, registered on the model itself and always in the same order, so that
  checkpoint key names and the order of ``parameters()`` (optimiser state) do not depend on
  where the code lives: ``_build_technique_heads``, ``technique_modules``;
* the VLM block of the layout ``[prefix | VLM block | expert suffix]`` (mask:
  ``techniques.make_layout_mask``), run with the VLM's weights after the prefix. The language
  head reads its final hidden states to predict reserved vocabulary ids::

      [ state | latent queries | action queries             ]   parallel
      [ state | latent queries | a_1 ... a_{N-1}            ]   autoregressive (teacher forcing)
        proprio  (latent tokens)  (discrete actions)

  ``_vlm_block`` builds it, ``_vlm_block_losses`` scores it (cross-entropy, ``_token_ce``);
* the weighting of all losses (``_weighted_loss``).

``PI0StyleVLA.compute_loss`` calls these hooks; ``_trains_beyond_flow`` tells it whether any
target besides flow matching is trained (if not, it runs pi0 alone).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .techniques import ActionDiscretizer, TokenRange, reserved_token_ranges


class TechniqueTargetsMixin:
    """Parameters, VLM block and loss weighting of the technique targets (see the module doc)."""

    def _build_technique_heads(self) -> None:
        """Parameters of the targets beyond flow matching (only those the config asks for)."""
        cfg = self.config
        vlm_width = int(cfg.text_config["hidden_size"])
        if cfg.discrete_actions is not None or cfg.latent_action_mode == "tokens":
            # The proprio "state" token that opens the VLM block (pi0 feeds proprio to the expert only).
            self.vlm_state_proj = nn.Linear(cfg.model_proprio_dim, vlm_width)
        self._build_discrete_heads(vlm_width)  # action_queries
        self._build_latent_heads(vlm_width)  # latent_queries, latent_in_proj, latent_out_proj, latent_codebook
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

    def _trains_beyond_flow(self) -> bool:
        """A target other than pi0's flow matching is trained (else ``compute_loss`` is pi0's)."""
        cfg = self.config
        return cfg.discrete_active or cfg.latent_active or not cfg.flow_matching

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
        batch = proprio.shape[0]
        parts = [self.vlm_state_proj(proprio.to(self.dtype))[:, None, :]]
        info: dict[str, tuple[int, int]] = {}
        latent, latent_targets = self._latent_block_part(batch, start=1)  # latent.py
        if latent is not None:
            parts.append(latent)
            info["latent"] = latent_targets
        start = sum(part.shape[1] for part in parts)
        discrete, discrete_targets = self._discrete_block_part(batch, actions, start, with_actions)  # discrete.py
        if discrete is not None:
            parts.append(discrete)
        if discrete_targets is not None:
            info["discrete"] = discrete_targets
        return torch.cat(parts, dim=1), info

    def _vlm_block_losses(
        self, block_out: torch.Tensor, info: Mapping[str, tuple[int, int]], batch: Mapping[str, torch.Tensor],
        actions: torch.Tensor, is_pad: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The language head's losses on the VLM block's final states ``block_out`` (B, Lb, D)."""
        hidden = self.vlm.model.language_model.norm(block_out)
        losses: dict[str, torch.Tensor] = {}
        if "discrete" in info:
            losses["discrete"] = self._discrete_loss(hidden, info["discrete"], actions, is_pad)
        if "latent" in info:
            losses["latent"] = self._latent_token_loss(hidden, info["latent"], batch["latent_codes"])
        return losses

    def _weighted_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss: the per-target losses weighted by the config (flow matching: 1).

        Under knowledge insulation the flow term trains the expert only and the discrete term
        the VLM (``discrete.insulated_attention``); the sum is the same."""
        cfg = self.config
        weights = {"flow": 1.0, "discrete": cfg.discrete_loss_weight, "latent": cfg.latent_loss_weight}
        return sum(weights[k] * v for k, v in losses.items())

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
