"""Import pi0 checkpoints into ``PI0StyleVLA``.

Two layouts are understood:

* transformers ``PI0ForConditionalGeneration`` (``model.vlm.*`` = PaliGemmaModel, ``model.dit.*`` =
  GemmaModel expert, ``embed_action_time.*`` projections, ``action_out_proj``), as a model
  instance, a state dict or a directory (``config.json`` with ``vlm_config`` + safetensors; its
  ``save_pretrained`` writes the tensors back in the LeRobot naming below);
* LeRobot's pi0 (``[model.]paligemma_with_expert.paligemma.*`` in either the transformers <4.52
  ``language_model.model.*`` or the newer ``model.language_model.*`` nesting,
  ``paligemma_with_expert.gemma_expert.model.*``, bare ``state_proj`` / ``action_*`` names), as a
  state dict or a directory whose ``config.json`` is LeRobot's policy config. LeRobot does not
  store the backbone architecture; it is pi0's (PaliGemma 3B 224 px + Gemma-300M expert), with
  the vocabulary, expert width and padded action/state widths read from the tensors. Its SigLIP
  keys carry the ``vision_tower.vision_model.`` nesting of transformers 4.x, which transformers 5
  flattened to ``vision_tower.``.

The expert's token embedding / LM head of either layout is unused by pi0 and dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .configuration import (
    _PALIGEMMA_3B_TEXT,
    _PALIGEMMA_3B_VISION,
    VLAConfig,
    make_paligemma_dict,
)
from .modeling import PI0StyleVLA

# (pattern, replacement) applied in order; the first match wins. ``None`` drops the key.
_KEY_RULES: list[tuple[str, str | None]] = [
    # transformers PI0ForConditionalGeneration
    (r"^model\.vlm\.(vision_tower|multi_modal_projector|language_model)\.", r"paligemma.model.\1."),
    (r"^model\.dit\.embed_tokens\.", None),
    (r"^model\.dit\.(layers|norm)\.", r"expert.\1."),
    (r"^embed_action_time\.(state_proj|action_in_proj|action_time_mlp_in|action_time_mlp_out)\.", r"\1."),
    # LeRobot pi0 (optionally under "model."), newer transformers nesting; transformers 5's own
    # PI0 save_pretrained writes this layout too, with an extra ".model" under language_model
    (r"^(?:model\.)?paligemma_with_expert\.paligemma\.model\.language_model\.model\.",
     r"paligemma.model.language_model."),
    (r"^(?:model\.)?paligemma_with_expert\.paligemma\.model\.", r"paligemma.model."),
    (r"^(?:model\.)?paligemma_with_expert\.paligemma\.lm_head\.", r"paligemma.lm_head."),
    # LeRobot pi0, transformers < 4.52 nesting
    (r"^(?:model\.)?paligemma_with_expert\.paligemma\.language_model\.model\.", r"paligemma.model.language_model."),
    (r"^(?:model\.)?paligemma_with_expert\.paligemma\.language_model\.lm_head\.", r"paligemma.lm_head."),
    (r"^(?:model\.)?paligemma_with_expert\.paligemma\.(vision_tower|multi_modal_projector)\.", r"paligemma.model.\1."),
    (r"^(?:model\.)?paligemma_with_expert\.gemma_expert\.(lm_head|model\.embed_tokens)\.", None),
    (r"^(?:model\.)?paligemma_with_expert\.gemma_expert\.model\.(layers|norm)\.", r"expert.\1."),
    # projections (both layouts)
    (r"^(?:model\.)?(state_proj|action_in_proj|action_out_proj|action_time_mlp_in|action_time_mlp_out)\.", r"\1."),
]


def convert_pi0_key(key: str) -> str | None:
    """Our parameter name for a pi0 checkpoint key (``None``: not used by our model)."""
    for pattern, replacement in _KEY_RULES:
        if re.match(pattern, key):
            if replacement is None:
                return None
            new_key = re.sub(pattern, replacement, key, count=1)
            # transformers 5 flattened SiglipVisionModel: "vision_tower.vision_model.X" -> "vision_tower.X"
            return new_key.replace("vision_tower.vision_model.", "vision_tower.", 1)
    raise KeyError(f"unrecognised pi0 checkpoint key: {key}")


def convert_pi0_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a pi0 state dict to ``PI0StyleVLA`` names (unused tensors dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = convert_pi0_key(key)
        if new_key is not None:
            out[new_key] = value
    return out


def config_from_transformers_pi0(pi0_config: Any, **overrides: Any) -> VLAConfig:
    """``VLAConfig`` equivalent to a transformers ``PI0Config``.

    ``action_dim`` / ``proprio_dim`` default to the padded widths; set them to the real
    dimensions of your robot (e.g. 7) to slice the padded outputs.
    """
    vlm = pi0_config.vlm_config
    dit = pi0_config.dit_config
    vlm_text = vlm.text_config
    if dit.num_hidden_layers != vlm_text.num_hidden_layers:
        raise ValueError("pi0 expert and VLM must have the same number of layers")
    if (dit.rope_parameters or {}).get("rope_theta") != (vlm_text.rope_parameters or {}).get("rope_theta"):
        raise ValueError("expert and VLM RoPE bases differ; PI0StyleVLA uses one RoPE for both")
    params: dict[str, Any] = {
        "vlm": vlm.to_dict(),
        "expert_hidden_size": dit.hidden_size,
        "expert_intermediate_size": dit.intermediate_size,
        "expert_num_heads": dit.num_attention_heads,
        "expert_num_kv_heads": dit.num_key_value_heads,
        "expert_head_dim": dit.head_dim,
        "expert_hidden_act": dit.hidden_act,
        "expert_rms_norm_eps": dit.rms_norm_eps,
        "action_dim": pi0_config.max_action_dim,
        "proprio_dim": pi0_config.max_state_dim,
        "max_action_dim": pi0_config.max_action_dim,
        "max_proprio_dim": pi0_config.max_state_dim,
        "action_horizon": pi0_config.chunk_size,
        "execution_horizon": pi0_config.chunk_size,
        "num_inference_steps": pi0_config.num_inference_steps,
        "time_beta_alpha": pi0_config.time_sampling_beta_alpha,
        "time_beta_beta": pi0_config.time_sampling_beta_beta,
        "time_scale": pi0_config.time_sampling_scale,
        "time_offset": pi0_config.time_sampling_offset,
        "time_min_period": pi0_config.min_period,
        "time_max_period": pi0_config.max_period,
    }
    params.update(overrides)
    return VLAConfig(**params)


def config_from_lerobot_pi0(
    lerobot_config: dict[str, Any], state_dict: dict[str, torch.Tensor], **overrides: Any
) -> VLAConfig:
    """``VLAConfig`` for a LeRobot pi0 checkpoint: pi0's backbone, sizes read from the tensors."""
    converted = convert_pi0_state_dict(state_dict)
    vocab = converted["paligemma.model.language_model.embed_tokens.weight"].shape[0]
    expert_inter, expert_width = converted["expert.layers.0.mlp.gate_proj.weight"].shape
    action_width = converted["action_in_proj.weight"].shape[1]
    state_width = converted["state_proj.weight"].shape[1]
    text = dict(_PALIGEMMA_3B_TEXT, vocab_size=vocab)
    horizon = int(lerobot_config.get("chunk_size", 50))
    params: dict[str, Any] = {
        "vlm": make_paligemma_dict(text=text, vision=_PALIGEMMA_3B_VISION, image_token_id=257152),
        "expert_hidden_size": expert_width,
        "expert_intermediate_size": expert_inter,
        "action_dim": action_width,
        "proprio_dim": state_width,
        "max_action_dim": action_width,
        "max_proprio_dim": state_width,
        "action_horizon": horizon,
        "execution_horizon": min(int(lerobot_config.get("n_action_steps", horizon)), horizon),
        "num_inference_steps": int(lerobot_config.get("num_steps", lerobot_config.get("num_inference_steps", 10))),
        "max_text_tokens": int(lerobot_config.get("tokenizer_max_length", 48)),
    }
    params.update(overrides)
    return VLAConfig(**params)


def _read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def load_converted_state(model: PI0StyleVLA, converted: dict[str, torch.Tensor]) -> None:
    """Copy converted tensors into ``model``; every parameter must be covered (tied LM head aside)."""
    own = model.state_dict()
    lm_head, embed = "paligemma.lm_head.weight", "paligemma.model.language_model.embed_tokens.weight"
    if lm_head not in converted and embed in converted:
        converted = dict(converted, **{lm_head: converted[embed]})  # pi0 ties the LM head to the embedding
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if missing or unexpected:
        raise ValueError(f"pi0 import: missing {missing[:10]}, unexpected {unexpected[:10]}")
    for key, value in converted.items():
        if own[key].shape != value.shape:
            raise ValueError(f"pi0 import: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


def import_pi0(source: Any, config: VLAConfig | None = None, **cfg_overrides: Any) -> PI0StyleVLA:
    """Build a ``PI0StyleVLA`` holding the weights of a pi0 checkpoint.

    ``source``: a transformers ``PI0ForConditionalGeneration``, a state dict (needs ``config``),
    or a directory (transformers or LeRobot layout). ``cfg_overrides`` adjust the derived
    ``VLAConfig`` (e.g. ``action_dim=7, proprio_dim=7`` to use the first 7 of pi0's 32 padded
    dimensions, ``num_images=3`` for pi0's three cameras).
    """
    if config is not None and cfg_overrides:
        config = config.replace(**cfg_overrides)
    if isinstance(source, (str, Path)):
        directory = Path(source)
        state = _read_safetensors_dir(directory)
        raw = json.loads((directory / "config.json").read_text()) if (directory / "config.json").exists() else {}
        if config is None:
            if "vlm_config" in raw:
                from transformers import PI0Config

                config = config_from_transformers_pi0(PI0Config.from_pretrained(str(directory)), **cfg_overrides)
            else:
                config = config_from_lerobot_pi0(raw, state, **cfg_overrides)
    elif isinstance(source, dict):
        state = source
        if config is None:
            raise ValueError("importing a bare state dict needs a VLAConfig")
    else:  # a PI0ForConditionalGeneration instance
        state = source.state_dict()
        if config is None:
            config = config_from_transformers_pi0(source.config, **cfg_overrides)
    model = PI0StyleVLA(config)
    load_converted_state(model, convert_pi0_state_dict(state))
    return model
