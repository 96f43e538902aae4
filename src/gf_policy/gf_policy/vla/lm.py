"""The VLM's language head on vision-language data (a mixin of ``PI0StyleVLA``): the
language-model loss of co-training (``compute_lm_loss``) and greedy decoding (``generate_text``,
used by probes). Both run the prefix stream alone through the joint layers, so the action
expert takes no part."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .techniques import make_layout_mask, make_prefix_lm_mask


class LanguageModelMixin:
    """PaliGemma's prefix-LM loss and greedy decoding (see the module doc)."""

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
