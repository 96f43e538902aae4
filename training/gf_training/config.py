"""Training-run configuration: YAML files with inheritance, ``key=value`` overrides, typed sections.

A config file may start with ``inherit: base.yaml`` (or a list of files, applied left to right);
paths are relative to the file that names them, bare names are also looked up in the shipped
``gf_training/configs/``. The inheriting file is deep-merged over its parents: mappings merge key by
key, everything else (numbers, strings, lists) is replaced. Command-line overrides
``section.key=value`` are applied last, with ``value`` parsed as YAML (``train.save_steps=[10,20]``,
``model.path=null``). Unknown keys are errors, so a typo never passes silently.

Sections (see ``configs/base.yaml`` for every key with its default and meaning):
``model`` (initialisation and VLAConfig overrides, incl. the training targets: discrete and
latent actions, knowledge insulation), ``scheme`` (``gf_training.schemes``), ``data``,
``cotrain`` (vision-language co-training), ``latent`` (the latent action model that labels the
data), ``scene_probe`` (an auxiliary cube-position target, ``gf_training.scene_probe``),
``name_probe`` (an auxiliary emoji-naming target of VLM pre-training, ``gf_training.name_probe``),
``optim``, ``train``, ``distributed``, ``logging``; top level: ``name``, ``output_dir``, ``seed``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gf_policy.vla.normalization import NORMALIZATION_KINDS
from gf_training.data import AugmentConfig
from gf_training.name_probe import NameProbeSection
from gf_training.scene_probe import SceneProbeSection
from gf_training.schemes import SchemeConfig

# The shipped configs, installed with the package (gf_training/configs).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MODEL_INITS = ("tiny", "config", "paligemma", "pi0", "checkpoint")


@dataclass
class ModelSection:
    """Where the weights come from. ``init``:

    * ``tiny``: ``VLAConfig.tiny(**config)``, random weights (tests, smoke runs);
    * ``config``: ``VLAConfig(**config)``, random weights (pi0 sizes by default; the backbone may
      be given compactly as ``vlm: {text: {...}, vision: {...}, image_token_id: N}``, see
      ``gf_training.build.expand_backbone_sizes``);
    * ``paligemma``: a local Hugging Face PaliGemma directory (``path``) + a new action expert;
    * ``pi0``: a pi0 checkpoint (transformers or LeRobot layout) at ``path``;
    * ``checkpoint``: one of our checkpoints (e.g. a pre-training run's ``step_030000``).
    """

    init: str = "tiny"
    path: str | None = None
    tokenizer: str | None = None  # tokenizer directory; default: from ``path``, or trained offline (tiny)
    config: dict[str, Any] = field(default_factory=dict)  # VLAConfig field overrides
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.init not in MODEL_INITS:
            raise ValueError(f"model.init must be one of {MODEL_INITS}, not {self.init!r}")
        if self.init in ("paligemma", "pi0", "checkpoint") and not self.path:
            raise ValueError(f"model.init={self.init} needs model.path (a local directory)")


@dataclass
class DataSection:
    demo_dirs: list[str] = field(default_factory=list)
    # Generated episodes instead of demos, e.g. {num_episodes: 4, length: 12, seed: 0} (tests, benchmarks).
    synthetic: dict[str, Any] | None = None
    cache_dir: str | None = None  # decoded-episode cache; default ~/.cache/grinningface/episodes
    include_failed: bool = False
    include_incomplete: bool = False
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # LeRobotDataset directories (gf_training.lerobot_format), or RLDS/TFDS dataset version
    # directories (gf_training.rlds_format: features.json + dataset_info.json, train split), mapped
    # onto our embodiment by lerobot_mapping (gf_training.embodiments: a built-in name or a file).
    lerobot_dirs: list[str] = field(default_factory=list)
    lerobot_mapping: str | None = None
    normalization: str = "quantile"  # quantile | mean_std (computed from the data) | checkpoint (the model's)
    # Chunk steps past an episode's end: masked out of the loss (false), or trained as holding
    # still (true; gf_training.data.hold_action) - see ChunkDataset.
    hold_after_end: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.demo_dirs, str):
            self.demo_dirs = [self.demo_dirs]
        if isinstance(self.lerobot_dirs, str):
            self.lerobot_dirs = [self.lerobot_dirs]
        if self.normalization not in (*NORMALIZATION_KINDS, "checkpoint"):
            raise ValueError(f"data.normalization must be one of {(*NORMALIZATION_KINDS, 'checkpoint')}, "
                             f"not {self.normalization!r}")
        if isinstance(self.augment, dict):
            self.augment = _build(AugmentConfig, self.augment, "data.augment")


@dataclass
class CotrainSection:
    """Co-training: vision-language samples (``gf-vl-data`` directories) mixed into every
    micro-batch; their loss is next-token cross-entropy on the answer through the VLM's LM head."""

    vl_dirs: list[str] = field(default_factory=list)
    ratio: float = 0.0  # share of each micro-batch that is VL samples (0: off; 1: VL only, a VLM's pre-training)
    loss_weight: float = 1.0  # weight of a VL sample's loss relative to an action sample's
    max_text_tokens: int = 64  # question + answer tokens after the image tokens
    # Share of the VL samples drawn from each of vl_dirs (normalised; [] = in proportion to their
    # sizes). A mixture's small but hard part (a few thousand scenes beside 90 000 glyphs and
    # cards) is otherwise seen too rarely to be learnt.
    vl_weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.vl_dirs, str):
            self.vl_dirs = [self.vl_dirs]
        if self.vl_weights and (len(self.vl_weights) != len(self.vl_dirs) or min(self.vl_weights) < 0
                                or sum(self.vl_weights) <= 0):
            raise ValueError(f"cotrain.vl_weights needs one weight >= 0 per cotrain.vl_dirs entry "
                             f"({len(self.vl_dirs)}), not all zero; got {self.vl_weights} (set both, or "
                             f"cotrain.vl_weights=[] to draw in proportion to the directories' sizes)")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError("cotrain.ratio must be in [0, 1]")
        if self.ratio > 0 and not self.vl_dirs:
            raise ValueError("cotrain.ratio > 0 needs cotrain.vl_dirs (directories written by gf-vl-data)")
        if self.loss_weight < 0 or self.max_text_tokens < 4:
            raise ValueError("need cotrain.loss_weight >= 0 and cotrain.max_text_tokens >= 4")


@dataclass
class LatentSection:
    """Latent-action targets: the latent action model (``gf-lam train``) that labels the episodes
    when ``model.config`` asks for latent actions (``latent_action_mode``)."""

    lam: str | None = None  # LAM directory
    device: str = "auto"  # where the labelling runs: auto | cpu | cuda
    # Frame pairs per sample; with the LAM's codebook, code width and codes per pair they set the
    # model's latent sizes (gf_training.build.with_latent_sizes), unless model.config gives them.
    frame_pairs: int = 2


@dataclass
class OptimSection:
    """AdamW with linear warmup then cosine decay to ``min_lr`` (openpi's pi0 fine-tuning values)."""

    lr: float = 2.5e-5
    min_lr: float = 2.5e-6
    warmup_steps: int = 1000
    decay_steps: int | None = None  # cosine length incl. warmup; default: train.steps
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-10
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError("need 0 <= optim.min_lr <= optim.lr and optim.lr > 0")


@dataclass
class TrainSection:
    steps: int = 30_000
    batch_size: int = 1024  # global samples per optimiser step (all ranks, all accumulation steps)
    micro_batch_size: int = 32  # samples per rank per forward/backward
    save_steps: list[int] = field(default_factory=lambda: [5_000, 10_000, 20_000, 30_000])
    log_every: int = 10
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16
    compile: str | bool = "auto"  # auto (on CUDA) | true | false
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch CPU threads per process (None: torch's default)
    resume: str | bool = "auto"  # auto (latest checkpoint in output_dir, if any) | false | a checkpoint dir
    # Also keep a resume point every N steps (0: none): checkpoints/resume/, replaced each time and
    # removed at the next step_N checkpoint, so a killed run (a preempted job, a machine that goes
    # away) loses at most N steps without adding checkpoints for sweeps to evaluate.
    resume_every: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.micro_batch_size < 1 or self.batch_size < 1:
            raise ValueError("train.steps, train.batch_size and train.micro_batch_size must be >= 1")
        if self.resume_every < 0:
            raise ValueError("train.resume_every must be >= 0 (0: no resume points)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be auto, fp32 or bf16, not {self.precision!r}")
        if str(self.compile).lower() not in ("auto", "true", "false"):
            raise ValueError(f"train.compile must be auto, true or false, not {self.compile!r}")
        self.save_steps = sorted({int(s) for s in self.save_steps})


@dataclass
class DistributedSection:
    """Multi-process training; ranks come from the launcher's environment (``torchrun`` or
    ``accelerate launch``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""

    strategy: str = "ddp"  # ddp | fsdp
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    init_method: str = "env://"
    find_unused_parameters: bool = True  # the last VLM layer's MLP is unused on the action path

    def __post_init__(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"distributed.strategy must be ddp or fsdp, not {self.strategy!r}")


@dataclass
class LoggingSection:
    tensorboard: bool = True
    wandb: bool = False  # needs the optional wandb package
    wandb_project: str = "grinningface"
    progress: bool = True
    # Attention mass on the target card (gf_training.attention) every N optimiser steps, on the
    # first frames of up to ``attention_samples`` training episodes with a trial (0: off).
    attention_every: int = 0
    attention_samples: int = 8


@dataclass
class TrainConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    data: DataSection = field(default_factory=DataSection)
    cotrain: CotrainSection = field(default_factory=CotrainSection)
    latent: LatentSection = field(default_factory=LatentSection)
    scene_probe: SceneProbeSection = field(default_factory=SceneProbeSection)
    name_probe: NameProbeSection = field(default_factory=NameProbeSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable)."""
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build and validate from a nested dict (unknown keys are errors)."""
        return _build(cls, data, "")


def _build(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    data = dict(data or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = _SECTIONS.get((cls, name))
        kwargs[name] = _build(sub, value, f"{where}.{name}".strip(".")) if sub and isinstance(value, dict) else value
    return cls(**kwargs)


_SECTIONS = {
    (TrainConfig, "model"): ModelSection,
    (TrainConfig, "scheme"): SchemeConfig,
    (TrainConfig, "data"): DataSection,
    (TrainConfig, "cotrain"): CotrainSection,
    (TrainConfig, "latent"): LatentSection,
    (TrainConfig, "scene_probe"): SceneProbeSection,
    (TrainConfig, "name_probe"): NameProbeSection,
    (TrainConfig, "optim"): OptimSection,
    (TrainConfig, "train"): TrainSection,
    (TrainConfig, "distributed"): DistributedSection,
    (TrainConfig, "logging"): LoggingSection,
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge recursively, other values are replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file: as given, relative to the including file, or in the shipped configs."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else [
        *([relative_to / path] if relative_to else []), path, CONFIG_DIR / path,
        *([CONFIG_DIR / f"{path}.yaml"] if path.suffix == "" else []),
    ]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"config {name} not found (looked in: {', '.join(str(c) for c in candidates)})")


@functools.lru_cache(maxsize=256)
def _parsed_yaml(path: Path, mtime_ns: int, size: int) -> Any:
    """A file's YAML, parsed once per version of the file: ``gf-mini`` resolves the same recipe
    configs hundreds of times to tell which stages are finished."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def read_yaml(path: Path) -> Any:
    """The parsed YAML of ``path`` (a private copy: callers may change it)."""
    stat = path.stat()
    return copy.deepcopy(_parsed_yaml(path, stat.st_mtime_ns, stat.st_size))


def load_yaml_with_inheritance(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged mapping of a config file and everything it inherits."""
    path = resolve_config_path(path) if not _chain else Path(path)
    if path in _chain:
        raise ValueError(f"config inheritance cycle: {' -> '.join(map(str, (*_chain, path)))}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping")
    parents = data.pop("inherit", None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = resolve_config_path(parent, relative_to=path.parent)
        merged = deep_merge(merged, load_yaml_with_inheritance(parent_path, (*_chain, path)))
    return deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested mapping."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a config file (with inheritance), apply overrides, validate."""
    return TrainConfig.from_dict(apply_overrides(load_yaml_with_inheritance(path), list(overrides or [])))


def dump_config(cfg: TrainConfig) -> str:
    """The resolved configuration as YAML (written to every run directory)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
