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

The expert's token embedding / LM head of either layout is unused by pi0 and dropped. pi0 ties
the PaliGemma LM head to the token embedding, and LeRobot writes only one of the two tied tensors
(``paligemma.lm_head.weight``, no ``embed_tokens``); either key alone is enough.

LeRobot does not store the backbone architecture either: ``infer_backbone`` reads every size from
the tensors (widths, depths, MLP sizes, vocabulary, patch and image size), with two facts of pi0's
backbone for what shapes cannot tell: its Gemma attention has a single key/value head (so the head
size is the key projection's width), and its SigLIP heads are 72 wide (So400m: 1152 / 16). A real
pi0 checkpoint therefore gets PaliGemma 3B + Gemma-300M, a tiny test checkpoint its tiny sizes.

Normalisation: pi0 was trained on mean/std-normalised state and actions. ``checkpoint_norm_stats``
reads those statistics where LeRobot keeps them (the ``*normalizer_processor.safetensors`` of its
processor pipeline, or the ``normalize_inputs`` / ``unnormalize_outputs`` buffers older versions
stored in the model file) and ``import_pi0`` attaches them to the model as ``MeanStdStats``.
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
from .normalization import MeanStdStats

PALIGEMMA_IMAGE_TOKEN_ID = 257152  # PaliGemma's <image>; pi0's 257152-token vocabulary ends before it
SIGLIP_HEAD_DIM = 72  # SigLIP So400m: 1152 wide, 16 heads
LM_HEAD = "paligemma.lm_head.weight"
EMBED_TOKENS = "paligemma.model.language_model.embed_tokens.weight"
# Normalisation buffers of LeRobot < 0.4 policies, inside model.safetensors (statistics, not weights).
_LEROBOT_NORM_BUFFER = re.compile(r"^(?:normalize_inputs|normalize_targets|unnormalize_outputs)\.buffer_(\w+)\.(\w+)$")
# LeRobot's feature names for the quantities our model normalises.
LEROBOT_STATE_FEATURE = "observation.state"
LEROBOT_ACTION_FEATURE = "action"

# (pattern, replacement) applied in order; the first match wins. ``None`` drops the key.
_KEY_RULES: list[tuple[str, str | None]] = [
    # LeRobot < 0.4: normalisation statistics stored as buffers (read by checkpoint_norm_stats)
    (_LEROBOT_NORM_BUFFER.pattern, None),
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
    return tie_embeddings(out)


def tie_embeddings(converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill in whichever of the tied LM head / token embedding is missing from the other."""
    if EMBED_TOKENS not in converted and LM_HEAD in converted:
        return dict(converted, **{EMBED_TOKENS: converted[LM_HEAD]})
    if LM_HEAD not in converted and EMBED_TOKENS in converted:
        return dict(converted, **{LM_HEAD: converted[EMBED_TOKENS]})
    return converted


def _count_layers(converted: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in converted if (m := pattern.match(key))}
    if not indices or indices != set(range(max(indices) + 1)):
        raise ValueError(f"pi0 import: layers under {prefix} are missing or not numbered 0..N-1")
    return len(indices)


def infer_backbone(converted: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """(text config, vision config, expert sizes) of a converted pi0 state dict, from its shapes."""
    text_prefix = "paligemma.model.language_model."
    vision_prefix = "paligemma.model.vision_tower.encoder.layers."
    vocab, width = converted[EMBED_TOKENS].shape
    text_inter = converted[text_prefix + "layers.0.mlp.gate_proj.weight"].shape[0]
    # pi0's Gemma attention has one key/value head, so the key projection is one head wide.
    head_dim = converted[text_prefix + "layers.0.self_attn.k_proj.weight"].shape[0]
    heads = converted[text_prefix + "layers.0.self_attn.q_proj.weight"].shape[0] // head_dim
    text = dict(_PALIGEMMA_3B_TEXT, hidden_size=width, num_hidden_layers=_count_layers(converted, text_prefix + "layers."),
                intermediate_size=text_inter, num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim,
                vocab_size=vocab)
    patch = converted["paligemma.model.vision_tower.embeddings.patch_embedding.weight"]
    vision_width, _, patch_size, _ = patch.shape
    positions = converted["paligemma.model.vision_tower.embeddings.position_embedding.weight"].shape[0]
    side = round(positions ** 0.5)
    if side * side != positions:
        raise ValueError(f"pi0 import: {positions} vision positions are not a square grid")
    if vision_width % SIGLIP_HEAD_DIM:
        raise ValueError(f"pi0 import: vision width {vision_width} is not a multiple of SigLIP's head size "
                         f"{SIGLIP_HEAD_DIM}; pass a full VLAConfig")
    vision = dict(_PALIGEMMA_3B_VISION, hidden_size=vision_width,
                  intermediate_size=converted[vision_prefix + "0.mlp.fc1.weight"].shape[0],
                  num_hidden_layers=_count_layers(converted, vision_prefix),
                  num_attention_heads=vision_width // SIGLIP_HEAD_DIM, patch_size=patch_size, image_size=side * patch_size)
    expert_inter, expert_width = converted["expert.layers.0.mlp.gate_proj.weight"].shape
    expert = {"expert_hidden_size": expert_width, "expert_intermediate_size": expert_inter}
    return text, vision, expert


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
    """``VLAConfig`` for a LeRobot pi0 checkpoint: backbone and widths from the tensors (see
    ``infer_backbone``), horizons and step counts from LeRobot's policy config."""
    converted = convert_pi0_state_dict(state_dict)
    text, vision, expert = infer_backbone(converted)
    action_width = converted["action_in_proj.weight"].shape[1]
    state_width = converted["state_proj.weight"].shape[1]
    horizon = int(lerobot_config.get("chunk_size", 50))
    params: dict[str, Any] = {
        "vlm": make_paligemma_dict(text=text, vision=vision,
                                   image_token_id=min(PALIGEMMA_IMAGE_TOKEN_ID, int(text["vocab_size"]))),
        **expert,
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


def lerobot_stats(directory: str | Path | None, state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{feature: {stat: tensor}}`` of a LeRobot policy: its processor's normaliser files in
    ``directory`` and/or the normalisation buffers of an older model file."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = _LEROBOT_NORM_BUFFER.match(key)
        if m:  # buffer names encode the feature with "_" for "." (observation_state)
            feature = m.group(1).replace("_", ".")
            stats.setdefault(feature, {})[m.group(2)] = value
    if directory is not None:
        for file in sorted(Path(directory).glob("*normalizer_processor.safetensors")):
            for key, value in load_file(str(file)).items():
                feature, _, stat = key.rpartition(".")
                stats.setdefault(feature, {})[stat] = value
    return stats


def checkpoint_norm_stats(
    directory: str | Path | None, state_dict: dict[str, torch.Tensor], proprio_dim: int, action_dim: int
) -> dict[str, MeanStdStats] | None:
    """pi0's own mean/std statistics of state and actions (first ``proprio_dim`` / ``action_dim``
    dimensions), or ``None`` when the checkpoint carries none (e.g. a base model)."""
    stats = lerobot_stats(directory, state_dict)
    out: dict[str, MeanStdStats] = {}
    for ours, feature, dim in (("proprio", LEROBOT_STATE_FEATURE, proprio_dim), ("actions", LEROBOT_ACTION_FEATURE, action_dim)):
        entry = stats.get(feature, {})
        if "mean" not in entry or "std" not in entry:
            return None
        full = MeanStdStats(entry["mean"].double().numpy(), entry["std"].double().numpy())
        if full.dim < dim:
            raise ValueError(f"the checkpoint's {feature} statistics have {full.dim} dimensions, the model uses {dim}")
        out[ours] = full.first(dim)
    return out


def _read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    # LeRobot keeps its processor pipeline's state (normaliser statistics) beside the weights.
    files = sorted(f for f in directory.glob("*.safetensors") if not f.name.endswith("_processor.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def load_converted_state(model: PI0StyleVLA, converted: dict[str, torch.Tensor]) -> None:
    """Copy converted tensors into ``model``; every parameter must be covered (tied LM head aside)."""
    own = model.state_dict()
    converted = tie_embeddings(converted)
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if missing or unexpected:
        raise ValueError(f"pi0 import: missing {missing[:10]}, unexpected {unexpected[:10]}")
    for key, value in converted.items():
        if own[key].shape != value.shape:
            raise ValueError(f"pi0 import: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


def import_pi0(
    source: Any, config: VLAConfig | None = None, *, checkpoint_stats: bool = True, **cfg_overrides: Any
) -> PI0StyleVLA:
    """Build a ``PI0StyleVLA`` holding the weights of a pi0 checkpoint.

    ``source``: a transformers ``PI0ForConditionalGeneration``, a state dict (needs ``config``),
    or a directory (transformers or LeRobot layout). ``cfg_overrides`` adjust the derived
    ``VLAConfig`` (e.g. ``action_dim=7, proprio_dim=7`` to use the first 7 of pi0's 32 padded
    dimensions, ``num_images=3`` for pi0's three cameras).

    With ``checkpoint_stats`` (default) the checkpoint's own mean/std statistics, when it has
    any, become ``model.norm_stats``; a training run then chooses whether to keep them
    (``data.normalization: checkpoint``) or to compute its own.
    """
    if config is not None and cfg_overrides:
        config = config.replace(**cfg_overrides)
    directory: Path | None = None
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
    if checkpoint_stats:
        model.norm_stats = checkpoint_norm_stats(directory, state, config.proprio_dim, config.action_dim)
    return model
