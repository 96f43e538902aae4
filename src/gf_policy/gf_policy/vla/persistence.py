"""Construction and checkpoints of ``PI0StyleVLA`` (a mixin of it): random initialisation of
the new weights, PaliGemma / pi0 weights, ``save_pretrained`` / ``from_pretrained``.

A checkpoint directory holds ``config.json`` (``VLAConfig``), ``model.safetensors`` (the
model's state dict, key names as registered on ``PI0StyleVLA``), ``norm_stats.json`` if set
and the processor's tokenizer files if given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from transformers.initialization import no_init_weights
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

from .configuration import CONFIG_NAME, VLAConfig
from .local_files import local_dir as require_local_dir
from .normalization import NORM_STATS_NAME, load_norm_stats, save_norm_stats
from .vision_stem import install_conv_stem, load_conv_stem

if TYPE_CHECKING:
    from .modeling import PI0StyleVLA

WEIGHTS_NAME = "model.safetensors"


class PretrainedMixin:
    """Initialisation, loading and saving of ``PI0StyleVLA`` (see the module doc)."""

    # ------------------------------------------------------------------ construction helpers
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
        if install_conv_stem(paligemma):  # transformers knows no stem: it skipped those weights
            load_conv_stem(paligemma, Path(local_dir))
        model = cls(config, paligemma=paligemma)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def import_pi0(cls, source: Any, config: VLAConfig | None = None, **cfg_overrides: Any) -> PI0StyleVLA:
        """A pi0 checkpoint (transformers ``PI0ForConditionalGeneration`` or LeRobot layout).
        See ``gf_policy.vla.pi0_import.import_pi0``."""
        from .pi0_import import import_pi0

        return import_pi0(source, config=config, **cfg_overrides)

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
