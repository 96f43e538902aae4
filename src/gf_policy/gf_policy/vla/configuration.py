"""Configuration of the pi0-style VLA (kept apart from the modelling code, LeRobot style).

One ``VLAConfig`` describes a checkpoint completely: the PaliGemma backbone (stored as the full
Hugging Face ``PaliGemmaConfig`` dictionary, so real checkpoints round-trip without losing a
field), the action expert, the action/proprio interface and the flow-matching settings.

Flow-matching convention (pi0 / openpi / transformers ``PI0ForConditionalGeneration``):
``t ~ Beta(1.5, 1) * 0.999 + 0.001``, ``x_t = t * noise + (1 - t) * actions``, the network
predicts the velocity ``u = noise - actions``; sampling integrates from ``t = 1`` (pure noise)
to ``t = 0`` with ``num_inference_steps`` Euler steps of ``dt = -1 / N``. Beta(1.5, 1) puts more
weight on large ``t``, i.e. on the noisier end.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import GemmaConfig, PaliGemmaConfig

from .vision_stem import check_stem, stem_widths

CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

# Sizes of the released PaliGemma 3B (224 px) backbone and of pi0's Gemma-300M action expert.
_PALIGEMMA_3B_TEXT = {
    "model_type": "gemma",
    "hidden_size": 2048,
    "num_hidden_layers": 18,
    "intermediate_size": 16384,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "vocab_size": 257216,
}
_PALIGEMMA_3B_VISION = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "vision_use_head": False,
}


def make_paligemma_dict(
    *,
    text: dict[str, Any],
    vision: dict[str, Any],
    image_token_id: int,
) -> dict[str, Any]:
    """Build a complete, JSON-serialisable ``PaliGemmaConfig`` dictionary from the sizes given."""
    cfg = PaliGemmaConfig(
        text_config=dict(text),
        vision_config=dict(vision),
        projection_dim=text["hidden_size"],
        hidden_size=text["hidden_size"],
        vocab_size=text["vocab_size"],
        image_token_id=image_token_id,
    )
    return cfg.to_dict()


def _default_vlm() -> dict[str, Any]:
    return make_paligemma_dict(text=_PALIGEMMA_3B_TEXT, vision=_PALIGEMMA_3B_VISION, image_token_id=257152)


@dataclass
class VLAConfig:
    """Everything needed to rebuild a ``PI0StyleVLA`` (saved as ``config.json`` in a checkpoint).

    The action expert shares attention with the VLM layer by layer, so its depth, number of query
    heads, key/value heads and head size must equal the VLM language model's; ``None`` means
    "follow the VLM" and any other value is checked. Only its width and MLP size are free.
    """

    vlm: dict[str, Any] = field(default_factory=_default_vlm)
    # --- action expert (Gemma-style: RMSNorm, GeGLU MLP, RoPE, GQA) ---
    expert_hidden_size: int = 1024
    expert_intermediate_size: int = 4096
    expert_num_layers: int | None = None
    expert_num_heads: int | None = None
    expert_num_kv_heads: int | None = None
    expert_head_dim: int | None = None
    expert_hidden_act: str = "gelu_pytorch_tanh"
    expert_rms_norm_eps: float = 1e-6
    # --- action / proprio interface ---
    action_dim: int = 7
    proprio_dim: int = 7
    # Widths the model works in (pi0 checkpoints zero-pad to 32); None = the real dimension.
    max_action_dim: int | None = None
    max_proprio_dim: int | None = None
    action_horizon: int = 4
    execution_horizon: int = 4
    action_space: str = "ee_delta_pose"
    # Bounds of the action space; inference clips unnormalised actions to them (None: no clip).
    action_low: float | None = -1.0
    action_high: float | None = 1.0
    # --- flow matching ---
    num_inference_steps: int = 10
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_scale: float = 0.999
    time_offset: float = 0.001
    time_min_period: float = 4e-3
    time_max_period: float = 4.0
    # --- training targets beyond flow matching (gf_training's knowledge-transfer techniques;
    # the defaults are plain pi0). See ``gf_policy.vla.techniques`` for the token layout. ---
    flow_matching: bool = True  # the action expert's flow-matching loss
    # Discretised actions predicted by the VLM's language head: None | "parallel" (one learnable
    # query token per action dimension and step, all decoded at once) | "autoregressive" (OpenVLA).
    discrete_actions: str | None = None
    num_action_bins: int = 256  # uniform bins over the normalised range, the last vocabulary ids
    discrete_loss_weight: float = 1.0  # 0 keeps the architecture but trains no discrete target
    # Softmax over the "full" vocabulary (OpenVLA) or only over the reserved "reserved" ids (cheaper).
    discrete_vocab: str = "full"
    # Knowledge insulation: the expert reads the VLM's keys/values through a stop-gradient, so
    # the flow-matching loss trains the expert only and the VLM learns from the discrete targets.
    knowledge_insulation: bool = False
    action_decoding: str = "auto"  # what sample_actions returns: auto (flow if trained) | flow | discrete
    # Latent actions (villa-X style): None | "expert" (jointly denoised by the action expert
    # before the robot actions, which attend to them) | "tokens" (codes predicted by the VLM's
    # language head from learnable query tokens, as reserved vocabulary ids).
    latent_action_mode: str | None = None
    latent_codebook_size: int = 0  # codes of the latent action model's VQ codebook
    latent_code_dim: int = 0  # width of a code vector (expert mode)
    latent_action_tokens: int = 0  # latent codes per sample (frame pairs x codes per pair)
    latent_loss_weight: float = 1.0  # 0: no latent targets (fine-tuning on robot actions only)
    # --- inputs ---
    num_images: int = 1
    max_text_tokens: int = 48
    # The part of each camera frame the model sees, as fractions [left, top, right, bottom] of
    # its width and height, cropped before the resize to image_size (None: the whole frame). A
    # small model zooms in on the table this way; the benchmark's camera stays as it is.
    image_crop: list[float] | None = None
    # Share of training samples whose proprio the model does not see (a learned stand-in takes
    # its place), so that it must find the cube and cards in the image instead of continuing the
    # motion the proprio reveals; 1.0: the model never sees proprio, at inference either.
    proprio_dropout: float = 0.0
    # --- runtime ---
    attn_implementation: str = "sdpa"  # "sdpa" or "eager" (explicit softmax); both take an explicit mask
    gradient_checkpointing: bool = False
    initializer_range: float = 0.02
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # Canonical JSON form (e.g. integer dict keys become strings) so that a config equals
        # itself after a save/load round trip.
        self.vlm = json.loads(json.dumps(self.vlm))
        self.validate()

    # ------------------------------------------------------------------ derived values
    def paligemma_config(self) -> PaliGemmaConfig:
        """The Hugging Face config of the backbone."""
        return PaliGemmaConfig.from_dict(dict(self.vlm))

    @property
    def text_config(self) -> dict[str, Any]:
        return self.vlm["text_config"]

    @property
    def vision_config(self) -> dict[str, Any]:
        return self.vlm["vision_config"]

    @property
    def image_size(self) -> int:
        return int(self.vision_config["image_size"])

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // int(self.vision_config["patch_size"])) ** 2

    @property
    def image_token_id(self) -> int:
        return int(self.vlm.get("image_token_index", self.vlm.get("image_token_id")))

    @property
    def prefix_length(self) -> int:
        """Length of the image+text prefix produced by the processor."""
        return self.num_images * self.tokens_per_image + self.max_text_tokens

    @property
    def model_action_dim(self) -> int:
        return self.max_action_dim or self.action_dim

    @property
    def model_proprio_dim(self) -> int:
        return self.max_proprio_dim or self.proprio_dim

    def _text_head_dim(self) -> int:
        t = self.text_config
        return int(t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"])

    def expert_gemma_config(self) -> GemmaConfig:
        """A ``GemmaConfig`` for the expert's decoder layers (attention geometry from the VLM)."""
        t = self.text_config
        return GemmaConfig(
            hidden_size=self.expert_hidden_size,
            intermediate_size=self.expert_intermediate_size,
            num_hidden_layers=int(t["num_hidden_layers"]),
            num_attention_heads=int(t["num_attention_heads"]),
            num_key_value_heads=int(t["num_key_value_heads"]),
            head_dim=self._text_head_dim(),
            hidden_act=self.expert_hidden_act,
            rms_norm_eps=self.expert_rms_norm_eps,
            rope_parameters=t.get("rope_parameters"),
            vocab_size=1,  # the expert has no token embedding; GemmaConfig needs a value
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
            initializer_range=self.initializer_range,
        )

    def validate(self) -> None:
        """Raise ``ValueError`` on an inconsistent configuration."""
        t = self.text_config
        shared = {
            "expert_num_layers": int(t["num_hidden_layers"]),
            "expert_num_heads": int(t["num_attention_heads"]),
            "expert_num_kv_heads": int(t["num_key_value_heads"]),
            "expert_head_dim": self._text_head_dim(),
        }
        for name, vlm_value in shared.items():
            value = getattr(self, name)
            if value is not None and value != vlm_value:
                raise ValueError(
                    f"{name}={value} but the VLM language model has {vlm_value}: the expert shares "
                    "attention with the VLM layer by layer, so these must be equal"
                )
        if self.expert_hidden_size % 2:
            raise ValueError("expert_hidden_size must be even (sinusoidal time embedding)")
        if self.model_action_dim < self.action_dim or self.model_proprio_dim < self.proprio_dim:
            raise ValueError("max_action_dim / max_proprio_dim must not be smaller than the real dims")
        if not 1 <= self.execution_horizon <= self.action_horizon:
            raise ValueError(f"execution_horizon must be in [1, action_horizon={self.action_horizon}]")
        if self.num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        if not 0.0 <= self.proprio_dropout <= 1.0:
            raise ValueError(f"proprio_dropout must be in [0, 1], got {self.proprio_dropout}")
        if self.image_crop is not None:
            crop = [float(v) for v in self.image_crop]
            if len(crop) != 4 or not (0.0 <= crop[0] < crop[2] <= 1.0 and 0.0 <= crop[1] < crop[3] <= 1.0):
                raise ValueError(f"image_crop must be [left, top, right, bottom] fractions with left < right and "
                                 f"top < bottom in [0, 1], got {self.image_crop!r}")
            self.image_crop = crop
        widths = stem_widths(self.vision_config)
        if widths is not None:
            check_stem(widths, int(self.vision_config["patch_size"]))
        self._validate_targets()
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', not {self.attn_implementation!r}")

    def _validate_targets(self) -> None:
        if self.discrete_actions not in (None, "parallel", "autoregressive"):
            raise ValueError(f"discrete_actions must be null, 'parallel' or 'autoregressive', not {self.discrete_actions!r}")
        if self.latent_action_mode not in (None, "expert", "tokens"):
            raise ValueError(f"latent_action_mode must be null, 'expert' or 'tokens', not {self.latent_action_mode!r}")
        if self.action_decoding not in ("auto", "flow", "discrete"):
            raise ValueError(f"action_decoding must be auto, flow or discrete, not {self.action_decoding!r}")
        if self.discrete_vocab not in ("full", "reserved"):
            raise ValueError(f"discrete_vocab must be 'full' or 'reserved', not {self.discrete_vocab!r}")
        if min(self.discrete_loss_weight, self.latent_loss_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if not self.flow_matching and self.discrete_actions is None:
            raise ValueError("with flow_matching off the model needs discrete_actions to predict actions")
        if not self.flow_matching and self.discrete_loss_weight == 0:
            raise ValueError("with flow_matching off and discrete_loss_weight 0 nothing would be trained")
        if self.action_decoding == "discrete" and self.discrete_actions is None:
            raise ValueError("action_decoding='discrete' needs discrete_actions")
        if self.action_decoding == "flow" and not self.flow_matching:
            raise ValueError("action_decoding='flow' needs flow_matching")
        if self.knowledge_insulation and not self.flow_matching:
            raise ValueError("knowledge_insulation applies to the flow-matching expert: it needs flow_matching")
        if self.latent_action_mode is not None:
            if self.latent_codebook_size < 2 or self.latent_action_tokens < 1:
                raise ValueError("latent actions need latent_codebook_size >= 2 and latent_action_tokens >= 1")
            if self.latent_action_mode == "expert" and (self.latent_code_dim < 1 or not self.flow_matching):
                raise ValueError("latent_action_mode='expert' needs latent_code_dim >= 1 and flow_matching")
        if self.discrete_actions is not None and self.num_action_bins < 2:
            raise ValueError("num_action_bins must be >= 2")
        reserved = self.reserved_vocab_size
        vocab = int(self.text_config["vocab_size"])
        if reserved and reserved > vocab - 64:  # the reserved ids overwrite the end; text needs the rest
            raise ValueError(f"a vocabulary of {vocab} cannot give {reserved} ids to action bins / latent codes")

    @property
    def reserved_vocab_size(self) -> int:
        """Vocabulary ids (at the end) that action bins and latent-code tokens overwrite."""
        bins = self.num_action_bins if self.discrete_actions is not None else 0
        codes = self.latent_codebook_size if self.latent_action_mode == "tokens" else 0
        return bins + codes

    @property
    def discrete_active(self) -> bool:
        """Discrete action targets are trained."""
        return self.discrete_actions is not None and self.discrete_loss_weight > 0

    @property
    def latent_active(self) -> bool:
        """Latent-action targets are trained (and, in expert mode, denoised at inference)."""
        return self.latent_action_mode is not None and self.latent_loss_weight > 0

    @property
    def decodes_discrete(self) -> bool:
        """``sample_actions`` decodes discrete tokens instead of integrating the flow."""
        if self.action_decoding == "auto":
            return not self.flow_matching
        return self.action_decoding == "discrete"

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown VLAConfig keys: {sorted(unknown)}")
        return cls(**data)

    def to_json_file(self, path: str | Path) -> None:
        """Write the configuration as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> VLAConfig:
        """Read a configuration written by ``to_json_file``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> VLAConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides: Any) -> VLAConfig:
        """A test-size model (~0.2 M parameters): SigLIP 2x32 on 32 px images with 8 px patches
        (16 image tokens), Gemma 2x64 with a 512-token vocabulary, expert 2x32."""
        vocab_size = overrides.pop("vocab_size", 512)
        image_size = overrides.pop("image_size", 32)
        patch_size = overrides.pop("patch_size", 8)
        image_token_id = overrides.pop("image_token_id", 4)
        vlm = make_paligemma_dict(
            text={
                "model_type": "gemma",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 32,
                "vocab_size": vocab_size,
            },
            vision={
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "patch_size": patch_size,
                "image_size": image_size,
                "vision_use_head": False,
            },
            image_token_id=image_token_id,
        )
        params: dict[str, Any] = {
            "vlm": vlm, "expert_hidden_size": 32, "expert_intermediate_size": 64, "max_text_tokens": 16
        }
        params.update(overrides)
        return cls(**params)

    @classmethod
    def paligemma_3b(cls, **overrides: Any) -> VLAConfig:
        """pi0's sizes: PaliGemma 3B (224 px) with a Gemma-300M-shaped action expert."""
        return cls(**overrides)
