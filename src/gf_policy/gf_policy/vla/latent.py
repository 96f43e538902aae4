"""Latent-action targets, villa-X style (a mixin of ``PI0StyleVLA``).

A latent action model (``gf_training.latent``) labels each training step with codes of its VQ
codebook (``batch["latent_codes"]``, (B, n)). ``VLAConfig.latent_action_mode`` picks how the
VLA learns them:

* ``expert``: the code vectors are denoised by the action expert, by flow matching like the
  actions and with the same noise level, as tokens between proprio and the actions, which
  attend to them (expert suffix ``[proprio | latents | actions]``, blocks 1 | 2 | 3); sampling
  integrates them jointly with the actions. Parameters: ``latent_in_proj``, ``latent_out_proj``
  and the ``latent_codebook`` buffer (``set_latent_codebook``).
* ``tokens``: the codes are reserved vocabulary ids predicted by the VLM's language head from
  learnable query tokens (``latent_queries``) in the VLM block (``targets``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class LatentActionsMixin:
    """Latent actions in the expert or as VLM tokens (see the module doc)."""

    def _build_latent_heads(self, vlm_width: int) -> None:
        cfg = self.config
        if cfg.latent_action_mode == "tokens":
            self.latent_queries = nn.Parameter(torch.zeros(cfg.latent_action_tokens, vlm_width))
        if cfg.latent_action_mode == "expert":
            self.latent_in_proj = nn.Linear(cfg.latent_code_dim, cfg.expert_hidden_size)
            self.latent_out_proj = nn.Linear(cfg.expert_hidden_size, cfg.latent_code_dim)
            # The latent action model's (unit-norm) code vectors: the expert denoises them.
            self.register_buffer("latent_codebook", torch.zeros(cfg.latent_codebook_size, cfg.latent_code_dim))

    def set_latent_codebook(self, codebook: torch.Tensor) -> None:
        """Copy the latent action model's code vectors (K, d) into the model (expert mode)."""
        if not hasattr(self, "latent_codebook"):
            raise ValueError("latent_action_mode is not 'expert': the model keeps no codebook")
        if tuple(codebook.shape) != tuple(self.latent_codebook.shape):
            raise ValueError(f"codebook shape {tuple(codebook.shape)} != {tuple(self.latent_codebook.shape)}")
        with torch.no_grad():
            self.latent_codebook.copy_(codebook.to(self.latent_codebook))

    # ------------------------------------------------------------------ expert mode
    def _n_expert_latents(self) -> int:
        """Latent tokens in the expert suffix (expert mode, latent targets on)."""
        cfg = self.config
        return cfg.latent_action_tokens if cfg.latent_active and cfg.latent_action_mode == "expert" else 0

    def _latent_targets(self, codes: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, n) -> code vectors (B, n, d), scaled to unit variance per dimension."""
        book = self.latent_codebook
        if not bool(book.abs().sum() > 0):
            raise ValueError("the latent codebook is empty: call set_latent_codebook() with the latent action model's codes")
        return book[codes] * (book.shape[1] ** 0.5)

    def _noisy_latents(
        self, batch: Mapping[str, torch.Tensor], t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Training: (noisy latents, velocity target) at flow time ``t`` (B, 1, 1), or ``None``
        unless latents go through the expert. Draws the latents' noise (after the actions')."""
        if not self._n_expert_latents():
            return None
        z = self._latent_targets(batch["latent_codes"].long()).to(self.dtype)
        z_noise = torch.randn_like(z)
        return t * z_noise + (1 - t) * z, z_noise - z

    def _latent_velocity(self, suffix_out: torch.Tensor) -> torch.Tensor:
        """Predicted velocity of the latent tokens (B, n, d) from the expert's final states."""
        n_lat = self._n_expert_latents()
        return self.latent_out_proj(self.action_expert.norm(suffix_out[:, 1 : 1 + n_lat]))

    def _latent_flow_loss(self, suffix_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self._latent_velocity(suffix_out).float() - target.float()).pow(2).mean()

    def _initial_latents(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device,
    ) -> torch.Tensor | None:
        """Sampling: pure-noise latents (B, n, d) to integrate with the actions, or ``None``
        unless latents go through the expert. Drawn after the actions' noise."""
        n_lat = self._n_expert_latents()
        if not n_lat:
            return None
        z = torch.randn(batch_size, n_lat, self.config.latent_code_dim, generator=generator, device=device)
        return z.to(self.dtype)

    # ------------------------------------------------------------------ tokens mode
    def _latent_block_part(self, batch: int, start: int) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
        """The latent query tokens of the VLM block, which begin at block index ``start``, and
        ``(first logit position, count)`` of their targets (``None``: tokens mode is off)."""
        cfg = self.config
        if not (cfg.latent_active and cfg.latent_action_mode == "tokens"):
            return None, None
        return self.latent_queries.to(self.dtype)[None].expand(batch, -1, -1), (start, cfg.latent_action_tokens)

    def _latent_token_loss(self, hidden: torch.Tensor, targets: tuple[int, int], codes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the latent codes from the VLM block's normed final states ``hidden``."""
        start, count = targets
        return self._token_ce(hidden[:, start : start + count], codes.long(), self.latent_tokens).mean()
