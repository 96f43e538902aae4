"""Fine-tuning schemes as configuration: which parts of a ``PI0StyleVLA`` train, and how.

=============  =============================================================================
``full``       every parameter trains.
``lora``       LoRA adapters (peft) on the VLM's language model, whose own weights stay frozen;
               the SigLIP tower and its projector train fully, as in openpi's pi0 LoRA recipe
               (its freeze filter holds the language model only; ``lora_train_vision: false``
               freezes them too, ``lora_include_vision`` puts adapters there instead); the action
               expert and the action/proprio/time projections train fully (optionally LoRA on
               the expert too, ``expert_lora``).
``action_expert``  the VLM is frozen; the action expert and the projections train.
``frozen_vlm``     the VLM is untouched; the projections train, the expert either fully or, with
               ``expert_lora``, through LoRA adapters only.
=============  =============================================================================

LoRA parts are wrapped in place with ``peft.get_peft_model`` (``model.paligemma`` /
``model.expert`` become ``PeftModel``\\s; ``PI0StyleVLA`` unwraps them where it needs the plain
modules). Adapters are saved with peft's ``save_pretrained`` (``save_adapters``), loaded back with
``load_adapters``, and folded into the weights with ``merge_adapters`` (``merge_and_unload``)
before ``PI0StyleVLA.save_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from gf_policy.vla.modeling import PI0StyleVLA

SCHEMES = ("full", "lora", "action_expert", "frozen_vlm")
VLM_ADAPTER_DIR = "vlm_lora"
EXPERT_ADAPTER_DIR = "expert_lora"
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SchemeConfig:
    """How to fine-tune (see the module docstring for the schemes)."""

    name: str = "full"
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # Module names (suffixes) that get adapters.
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    # False: adapters only in the VLM's language model; True: also in the SigLIP vision tower
    # (whose attention shares the q/k/v_proj names).
    lora_include_vision: bool = False
    # ``lora`` without adapters in the vision tower: the tower and its projector train fully
    # (openpi's pi0 LoRA recipe), or stay frozen with the rest of the VLM (False).
    lora_train_vision: bool = True
    # LoRA on the action expert instead of training it fully (``lora`` and ``frozen_vlm``).
    expert_lora: bool = False

    def __post_init__(self) -> None:
        if self.name not in SCHEMES:
            raise ValueError(f"unknown fine-tuning scheme {self.name!r} (known: {', '.join(SCHEMES)})")
        if self.expert_lora and self.name not in ("lora", "frozen_vlm"):
            raise ValueError("expert_lora applies to the 'lora' and 'frozen_vlm' schemes only")
        if self.lora_rank < 1:
            raise ValueError("lora_rank must be >= 1")
        if self.lora_include_vision and self.lora_train_vision:
            raise ValueError("lora_include_vision puts adapters in the vision tower and freezes its weights: "
                             "set lora_train_vision: false with it")


# The VLM's vision side, trained fully under ``lora`` unless ``lora_train_vision`` is off. As peft
# ``modules_to_save``, so the adapters peft saves carry them (a peft user needs both).
VISION_MODULES = ["vision_tower", "multi_modal_projector"]


def _lora_config(scheme: SchemeConfig, targets: list[str] | str, modules_to_save: list[str] | None = None) -> LoraConfig:
    return LoraConfig(
        r=scheme.lora_rank,
        lora_alpha=scheme.lora_alpha,
        lora_dropout=scheme.lora_dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        bias="none",
    )


def _vlm_targets(scheme: SchemeConfig) -> list[str] | str:
    if scheme.lora_include_vision:
        return list(scheme.lora_target_modules)
    # A string is a full-match regex in peft: restrict to the language model's layers.
    names = "|".join(scheme.lora_target_modules)
    return rf".*language_model\.layers\.\d+\..*\.({names})"


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _projections(model: PI0StyleVLA) -> list[nn.Module]:
    return [model.state_proj, model.action_in_proj, model.action_time_mlp_in, model.action_time_mlp_out,
            model.action_out_proj]


def apply_scheme(model: PI0StyleVLA, scheme: SchemeConfig) -> PI0StyleVLA:
    """Configure ``model`` in place for ``scheme`` (freezing, LoRA wrapping) and return it.

    Apply it once, to a model without adapters, before building the optimiser (pass it only the
    parameters with ``requires_grad``).
    """
    wrapped = [name for name in ("paligemma", "expert") if isinstance(getattr(model, name), PeftModel)]
    if wrapped:
        raise ValueError(f"the model already holds adapters ({', '.join(wrapped)}); apply a scheme to a plain model")
    _set_trainable(model, True)
    if scheme.name == "full":
        return model
    if scheme.name == "lora":
        # get_peft_model freezes the wrapped VLM except for its adapters.
        vision = VISION_MODULES if scheme.lora_train_vision else None
        model.paligemma = get_peft_model(model.paligemma, _lora_config(scheme, _vlm_targets(scheme), vision))
    else:  # action_expert, frozen_vlm
        _set_trainable(model.paligemma, False)
    if scheme.expert_lora:
        model.expert = get_peft_model(model.expert, _lora_config(scheme, list(scheme.lora_target_modules)))
    for module in _projections(model):
        _set_trainable(module, True)
    return model


@dataclass
class ParameterReport:
    """Trainable / total parameter counts per part of the model."""

    parts: dict[str, tuple[int, int]]

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.parts.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts.values())

    def __str__(self) -> str:
        lines = [f"{'part':<12} {'trainable':>14} {'total':>14}"]
        for name, (t, n) in self.parts.items():
            lines.append(f"{name:<12} {t:>14,} {n:>14,}")
        pct = 100.0 * self.trainable / max(self.total, 1)
        lines.append(f"{'all':<12} {self.trainable:>14,} {self.total:>14,}  ({pct:.2f}% trainable)")
        return "\n".join(lines)


def trainable_parameter_report(model: PI0StyleVLA) -> ParameterReport:
    """Count trainable and total parameters of the VLM (vision / language), expert, projections."""
    vlm = model.vlm
    groups = {
        "vision": [vlm.model.vision_tower, vlm.model.multi_modal_projector],
        "language": [vlm.model.language_model, vlm.lm_head],
        "expert": [model.expert],
        "projections": _projections(model),
    }
    parts: dict[str, tuple[int, int]] = {}
    seen: set[int] = set()  # tied weights (LM head = embedding) are counted once
    for name, modules in groups.items():
        trainable = total = 0
        for module in modules:
            for param_name, p in module.named_parameters():
                # peft's modules_to_save keep the frozen original beside the trained copy: count the copy
                if id(p) in seen or param_name.startswith("original_module.") or ".original_module." in param_name:
                    continue
                seen.add(id(p))
                total += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        parts[name] = (trainable, total)
    return ParameterReport(parts)


def save_adapters(model: PI0StyleVLA, directory: str | Path) -> list[Path]:
    """Save the LoRA adapters of every wrapped part (peft ``save_pretrained``); returns the dirs."""
    directory = Path(directory)
    written = []
    for attr, sub in (("paligemma", VLM_ADAPTER_DIR), ("expert", EXPERT_ADAPTER_DIR)):
        part = getattr(model, attr)
        if isinstance(part, PeftModel):
            part.save_pretrained(str(directory / sub))
            written.append(directory / sub)
    if not written:
        raise ValueError("the model holds no adapters")
    return written


def load_adapters(model: PI0StyleVLA, directory: str | Path, is_trainable: bool = False) -> PI0StyleVLA:
    """Attach adapters written by ``save_adapters`` to a plain model with the same base weights."""
    directory = Path(directory)
    for attr, sub in (("paligemma", VLM_ADAPTER_DIR), ("expert", EXPERT_ADAPTER_DIR)):
        if (directory / sub).is_dir():
            setattr(model, attr, PeftModel.from_pretrained(getattr(model, attr), str(directory / sub),
                                                           is_trainable=is_trainable))
    return model


def merge_adapters(model: PI0StyleVLA) -> PI0StyleVLA:
    """Fold LoRA adapters into the weights (``merge_and_unload``) so the model saves plainly."""
    for attr in ("paligemma", "expert"):
        part = getattr(model, attr)
        if isinstance(part, PeftModel):
            setattr(model, attr, part.merge_and_unload())
    return model
