"""`gf-train CONFIG [section.key=value ...]`: train a pi0-style VLA (pre-training or fine-tuning).

One process per device; several processes via an existing launcher, which sets RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT::

    gf-train finetune.yaml data.demo_dirs=[demos/train500]                        # one device
    torchrun --nproc-per-node 8 -m gf_training.train finetune.yaml ...           # DDP (or FSDP:
    accelerate launch --num_processes 8 -m gf_training.train finetune.yaml ...   #  distributed.strategy=fsdp)

Run directory (``output_dir``)::

    config.yaml           the resolved configuration
    norm_stats.json       proprio/action statistics, computed once from the data
    tokenizer/            the tokenizer every checkpoint ships
    tensorboard/          loss, learning rate, gradient norm, throughput
    metrics.jsonl         the same scalars, one JSON line per logging step
    checkpoints/step_005000/
        config.json model.safetensors norm_stats.json tokenizer files
                          -> inference-ready (LoRA merged): VLAInference / the `vla` backend load it
        adapters/         the LoRA adapters (LoRA schemes)
        train_model.safetensors   the weights in training form (runs with adapters)
        training_state.pt optimiser, scheduler, step; rng_rank{r}.pt: every rank's RNG states
        trainer_state.json step, scheme, model init (a resume with another scheme is refused)

A run started again with the same ``output_dir`` resumes from its latest checkpoint (``train.resume``)
and continues exactly as if uninterrupted (with ``data.num_workers: 0``; with workers, the data order
still continues exactly): data order, augmentation and flow-matching noise are restored too.
Every run also saves its final step; checkpoints are written to a ``.partial`` directory and
renamed, so an interrupted save never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import DataLoader
from transformers import AutoTokenizer
from transformers.initialization import no_init_weights

from gf_policy.vla import (
    NormStats,
    PI0StyleVLA,
    VLAConfig,
    VLAProcessor,
    train_tiny_tokenizer,
)
from gf_policy.vla.configuration import make_paligemma_dict
from gf_policy.vla.local_files import local_dir
from gf_policy.vla.normalization import load_norm_stats, save_norm_stats
from gf_training.config import TrainConfig, dump_config, load_config
from gf_training.data import (
    ChunkDataset,
    DecodedEpisode,
    ResumableSampler,
    VLACollator,
    compute_norm_stats,
    load_demo_episodes,
    synthetic_episodes,
)
from gf_training.schemes import (
    SchemeConfig,
    apply_scheme,
    merge_adapters,
    save_adapters,
    trainable_parameter_report,
)

CHECKPOINT_DIR = "checkpoints"
TRAIN_STATE = "training_state.pt"
TRAIN_WEIGHTS = "train_model.safetensors"
TRAINER_STATE = "trainer_state.json"
INFERENCE_WEIGHTS = "model.safetensors"
METRICS_FILE = "metrics.jsonl"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, (step, directory), in step order."""
    root = Path(run_dir) / CHECKPOINT_DIR
    out = []
    for d in root.glob("step_*") if root.is_dir() else []:
        if d.is_dir() and (d / TRAIN_STATE).exists() and d.name[5:].isdigit():
            out.append((int(d.name[5:]), d))
    return sorted(out)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warmup, then cosine to min_lr."""
    o = cfg.optim
    warmup = o.warmup_steps
    if step < warmup:
        return (step + 1) / (warmup + 1)
    decay = max((o.decay_steps or cfg.train.steps) - warmup, 1)
    progress = min(1.0, (step - warmup) / decay)
    lr = o.min_lr + (o.lr - o.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr / o.lr


# ---------------------------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(cfg: TrainConfig, device_type: str) -> DistInfo:
    """Join the process group described by the launcher's environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        backend = cfg.distributed.backend
        if backend == "auto":
            backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=cfg.distributed.init_method, rank=info.rank, world_size=world)
    return info


def _resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(want)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# The random streams of a run, each derived from ``cfg.seed`` per rank: the global stream (flow
# noise and time, augmentations) and the two loaders' worker seeds.
NOISE_STREAM, LOADER_STREAM, VL_LOADER_STREAM = 1, 0, 17


def stream_seed(seed: int, stream: int, rank: int, step: int = 0) -> int:
    """The seed of one random ``stream`` of rank ``rank``; ``step`` > 0 restarts it mid-run."""
    return seed * 7919 + stream + rank + step


# ---------------------------------------------------------------------------------------------
# model, tokenizer, data
# ---------------------------------------------------------------------------------------------


def expand_backbone_sizes(config: dict[str, Any]) -> dict[str, Any]:
    """``model.config`` with a compact ``vlm: {text: {...}, vision: {...}, image_token_id: N}``
    expanded into the full PaliGemma dictionary ``VLAConfig`` stores; other forms pass unchanged.

    Small from-scratch backbones (the mini recipe) are easier to read and review as the handful
    of sizes that define them than as the ~200 keys of a complete PaliGemma config.
    """
    vlm = config.get("vlm")
    if not isinstance(vlm, dict) or not {"text", "vision"} <= set(vlm):
        return config
    unknown = set(vlm) - {"text", "vision", "image_token_id"}
    if unknown:
        raise ValueError(f"model.config.vlm: unknown keys {sorted(unknown)} (compact form: text, vision, image_token_id)")
    text = {"model_type": "gemma", **vlm["text"]}
    vision = {"model_type": "siglip_vision_model", "vision_use_head": False, **vlm["vision"]}
    full = make_paligemma_dict(text=text, vision=vision, image_token_id=int(vlm.get("image_token_id", 4)))
    return {**config, "vlm": full}


def with_latent_sizes(config: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """``model.config`` with the latent sizes a new latent-action model takes from its LAM
    (``latent.lam``) filled in; sizes given explicitly must agree with the LAM."""
    if not config.get("latent_action_mode"):
        return config
    if not cfg.latent.lam:
        if not all(config.get(k) for k in ("latent_codebook_size", "latent_action_tokens")):
            raise ValueError("model.config asks for latent actions: set latent.lam to a latent action model "
                             "directory (gf-lam train); its sizes become the model's")
        return config
    from gf_training.latent import load_lam_config, vla_latent_sizes

    sizes = vla_latent_sizes(load_lam_config(cfg.latent.lam), cfg.latent.frame_pairs)
    wrong = {k: (config[k], v) for k, v in sizes.items() if config.get(k) not in (None, 0, v)}
    if wrong:
        raise ValueError("model.config disagrees with the LAM in latent.lam: " + ", ".join(
            f"{k}={given} (the LAM gives {v})" for k, (given, v) in wrong.items()) + "; leave them out to use the LAM's")
    return {**config, **sizes}


def build_model(cfg: TrainConfig) -> PI0StyleVLA:
    """The initial model of a run (see ``ModelSection``). A model with new latent-action heads
    takes their sizes from the LAM (``with_latent_sizes``)."""
    m = cfg.model
    if m.init != "checkpoint":
        m = dataclasses.replace(m, config=with_latent_sizes(dict(m.config), cfg))
    if m.init == "tiny":
        return PI0StyleVLA.from_config(VLAConfig.tiny(**m.config))
    if m.init == "config":
        return PI0StyleVLA.from_config(VLAConfig(**expand_backbone_sizes(m.config)))
    if m.init == "paligemma":
        return PI0StyleVLA.from_paligemma(m.path, cfg_overrides=m.config)
    if m.init == "pi0":
        return PI0StyleVLA.import_pi0(m.path, **m.config)
    model = PI0StyleVLA.from_pretrained(m.path)
    if m.config:  # only fields that do not change parameter shapes may differ from the checkpoint's
        model.config = model.config.replace(**m.config)
    return model


def _tokenizer_source(cfg: TrainConfig) -> str | None:
    if cfg.model.tokenizer:
        return cfg.model.tokenizer
    if cfg.model.init in ("paligemma", "checkpoint"):
        return cfg.model.path
    if cfg.model.init == "pi0":
        raise ValueError("pi0 checkpoints carry no tokenizer: set model.tokenizer to a PaliGemma tokenizer directory")
    return None  # tiny/config: trained offline on the data's instructions


def build_processor(cfg: TrainConfig, config: VLAConfig, instructions: list[str], run_dir: Path,
                    info: DistInfo) -> VLAProcessor:
    """The run's tokenizer (kept in ``run_dir/tokenizer`` so resumes and checkpoints agree)."""
    tok_dir = run_dir / "tokenizer"
    if info.is_main and not (tok_dir / "tokenizer_config.json").exists():
        source = _tokenizer_source(cfg)
        if source is None:
            # Stay below the ids that action bins / latent codes overwrite at the vocabulary's end.
            size = int(config.text_config["vocab_size"]) - config.reserved_vocab_size
            train_tiny_tokenizer(sorted(set(instructions)), size, tok_dir)
        else:
            AutoTokenizer.from_pretrained(str(local_dir(source, "model.tokenizer / model.path"))).save_pretrained(str(tok_dir))
    info.barrier()
    processor = VLAProcessor.from_pretrained(tok_dir, config)
    vocab = int(config.text_config["vocab_size"])
    if len(processor.tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(processor.tokenizer)} tokens, the model's vocabulary {vocab}")
    return processor


def load_episodes(cfg: TrainConfig, image_size: int, info: DistInfo,
                  image_crop: Sequence[float] | None = None) -> list[DecodedEpisode]:
    """Generated or demo episodes, their images as the model sees them (``image_crop``, then
    ``image_size``); rank 0 fills the decode cache before the others read it."""
    d = cfg.data
    if d.synthetic is not None:
        return synthetic_episodes(image_size=image_size, **d.synthetic)
    if not d.demo_dirs and not d.lerobot_dirs:
        raise ValueError("no training data: set data.demo_dirs or data.lerobot_dirs (or data.synthetic)")
    kwargs = {"cache_dir": d.cache_dir, "include_failed": d.include_failed, "include_incomplete": d.include_incomplete,
              "image_crop": image_crop}
    episodes: list[DecodedEpisode] = []
    if d.demo_dirs:
        if info.is_main:
            episodes, report = load_demo_episodes(d.demo_dirs, image_size, progress=cfg.logging.progress, **kwargs)
            print(f"[gf-train] data: {report}", file=sys.stderr)
        info.barrier()
        if not info.is_main:
            episodes, _ = load_demo_episodes(d.demo_dirs, image_size, **kwargs)
    if d.lerobot_dirs:
        from gf_training.lerobot_format import load_lerobot_episodes

        episodes = episodes + load_lerobot_episodes(d.lerobot_dirs, d.lerobot_mapping, image_size, image_crop=image_crop,
                                                    progress=cfg.logging.progress and info.is_main)
    return episodes


def export_inference_checkpoint(
    state: dict[str, torch.Tensor], config: VLAConfig, scheme: SchemeConfig, norm_stats: dict[str, NormStats],
    processor: VLAProcessor, directory: Path,
) -> None:
    """Write an inference-ready checkpoint from a full training state dict (LoRA merged); runs
    with adapters also get ``train_model.safetensors`` (training form) and ``adapters/``."""
    with no_init_weights():  # every weight comes from ``state``
        model = PI0StyleVLA(config.replace(gradient_checkpointing=False))
    model.vlm.tie_weights()  # skipped under no_init_weights, as in PI0StyleVLA.from_pretrained
    adapters = scheme.name == "lora" or scheme.expert_lora
    if adapters:
        apply_scheme(model, scheme)  # same module structure as in training, so the names match
    model.load_state_dict(state, strict=True)
    if adapters:
        # Training form (adapters separate) for resuming, and the adapters alone for peft users.
        save_model(model, str(directory / TRAIN_WEIGHTS))
        save_adapters(model, directory / "adapters")
    merge_adapters(model)
    model.norm_stats = norm_stats
    model.save_pretrained(directory, processor=processor)


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a finished (or partial) run returns."""

    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # per optimiser step of this process, this session
    parts: dict[str, list[float]] = field(default_factory=dict)  # per-target losses (loss_flow, loss_lm, ...)
    checkpoints: list[Path] = field(default_factory=list)
    steps_per_second: float = float("nan")


class Trainer:
    """Builds everything from a ``TrainConfig`` and runs optimiser steps.

    ``episodes`` bypasses the data section (tests, benchmarks). ``setup()`` is separate from
    ``__init__`` so callers can time the steps alone (``gf-bench train``).
    """

    def __init__(self, cfg: TrainConfig, episodes: list[DecodedEpisode] | None = None):
        self.cfg = cfg
        self._episodes = episodes
        self.step = 0
        self.run_dir = Path(cfg.output_dir)
        self._writer: Any = None
        self._wandb: Any = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> Trainer:
        """Everything a run needs before its first step, in order: devices and processes, the
        initial model, data and tokenizer, the trained model with its optimiser (restored when
        resuming), the loaders."""
        cfg = self.cfg
        self._setup_runtime()
        # The same seed on every rank for the model's initial weights.
        seed_everything(cfg.seed)
        model = build_model(cfg)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self._setup_data(model)
        self._setup_model(model)
        self._setup_loaders()
        self.attention_probe = None
        # Rank 0 measures on its own copy of the weights: not possible when FSDP shards them.
        info = self.info
        if cfg.logging.attention_every > 0 and info.is_main and not (info.enabled and cfg.distributed.strategy == "fsdp"):
            from gf_training.attention import AttentionMassProbe

            self.attention_probe = AttentionMassProbe.from_episodes(self.episodes, self.processor,
                                                                     cfg.logging.attention_samples)
        return self

    def _setup_runtime(self) -> None:
        """Threads, device, precision, processes and gradient accumulation; the run directory."""
        cfg = self.cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        device_type = "cuda" if cfg.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self.info = info = init_distributed(cfg, device_type)
        self.device = _resolve_device(cfg, info)
        on_cuda = self.device.type == "cuda"
        precision = cfg.train.precision if cfg.train.precision != "auto" else ("bf16" if on_cuda else "fp32")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        compile_flag = str(cfg.train.compile).lower()
        self.use_compile = on_cuda if compile_flag == "auto" else compile_flag == "true"

        per_step = cfg.train.micro_batch_size * info.world_size
        if cfg.train.batch_size % per_step:
            raise ValueError(
                f"train.batch_size={cfg.train.batch_size} is not a multiple of micro_batch_size x processes = {per_step}"
            )
        self.accum = cfg.train.batch_size // per_step

        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        info.barrier()

    def _setup_data(self, model: PI0StyleVLA) -> None:
        """Episodes, normalisation statistics, tokenizer/processor and the datasets."""
        cfg, info, vla_cfg = self.cfg, self.info, model.config
        episodes = self._episodes if self._episodes is not None else load_episodes(cfg, vla_cfg.image_size, info, vla_cfg.image_crop)
        self.episodes = episodes
        self.norm_stats = self._norm_stats(episodes, info, model.norm_stats)
        model.norm_stats = self.norm_stats
        latent_codes = self._latent_labels(model, episodes, info) if vla_cfg.latent_active else None
        texts = [e.instruction for e in episodes]
        self.vl_dataset = None
        if cfg.cotrain.ratio > 0:
            from gf_training.vl_data import VLDataset

            self.vl_dataset = VLDataset(cfg.cotrain.vl_dirs, vla_cfg.image_size, vla_cfg.image_crop)
            texts += self.vl_dataset.texts()
        self.processor = build_processor(cfg, vla_cfg, texts, self.run_dir, info)
        self.dataset = ChunkDataset(episodes, vla_cfg.action_horizon, self.norm_stats, latent_codes=latent_codes,
                                    hold_after_end=cfg.data.hold_after_end)
        # Co-training splits every micro-batch: round(ratio x micro) VL samples, the rest actions.
        self.vl_micro = round(cfg.train.micro_batch_size * cfg.cotrain.ratio) if self.vl_dataset is not None else 0
        self.vla_micro = cfg.train.micro_batch_size - self.vl_micro
        if self.vl_dataset is not None and not 1 <= self.vl_micro < cfg.train.micro_batch_size:
            raise ValueError(f"cotrain.ratio={cfg.cotrain.ratio} gives {self.vl_micro} VL samples per micro-batch of "
                             f"{cfg.train.micro_batch_size}: need at least one of each kind")

    def _setup_model(self, model: PI0StyleVLA) -> None:
        """The fine-tuning scheme, resumed weights, the wrapped model, optimiser and scheduler."""
        cfg, info, vla_cfg = self.cfg, self.info, model.config
        apply_scheme(model, cfg.scheme)
        self.vla_config = vla_cfg
        resume_from = self._resume_checkpoint()
        if resume_from is not None:  # weights go in before wrapping (DDP/FSDP then hold them)
            self._load_weights(model, resume_from)
        self.model = model.to(self.device)
        if info.is_main:
            print(f"[gf-train] {cfg.name}: scheme {cfg.scheme.name}, {len(self.dataset)} samples from "
                  f"{len(self.episodes)} episodes, {info.world_size} process(es) x {cfg.train.micro_batch_size} "
                  f"x {self.accum} accumulation = batch {cfg.train.batch_size}\n{trainable_parameter_report(model)}",
                  file=sys.stderr)
        self.wrapped = self._wrap(self.model)
        # After wrapping: FSDP2 replaces parameters by sharded DTensors.
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        if resume_from is not None:
            self._load_training_state(resume_from)
        else:
            # Different noise/time draws and augmentations on each rank from here on.
            seed_everything(stream_seed(cfg.seed, NOISE_STREAM, info.rank))
        self.forward = torch.compile(self.wrapped) if self.use_compile else self.wrapped

    def _setup_loaders(self) -> None:
        """The action-data loader and, when co-training, the vision-language one; both continue
        where a resumed run stopped."""
        cfg, info = self.cfg, self.info
        on_cuda = self.device.type == "cuda"
        consumed = self.step * self.accum * self.vla_micro
        sampler = ResumableSampler(len(self.dataset), seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                                   start=consumed)
        self.loader = DataLoader(
            self.dataset, batch_size=self.vla_micro, sampler=sampler,
            collate_fn=VLACollator(self.processor, cfg.data.augment), num_workers=cfg.data.num_workers,
            pin_memory=on_cuda, persistent_workers=cfg.data.num_workers > 0,
            # Its own generator: creating the iterator draws a worker base seed, which must not
            # shift the global RNG stream a resumed run restores.
            generator=torch.Generator().manual_seed(stream_seed(cfg.seed, LOADER_STREAM, info.rank, self.step)),
        )
        self._batches: Iterator[dict[str, torch.Tensor]] = iter(self.loader)
        self._vl_batches: Iterator[dict[str, torch.Tensor]] | None = None
        if self.vl_dataset is not None:
            from gf_training.vl_data import VLCollator

            vl_sampler = ResumableSampler(len(self.vl_dataset), seed=cfg.seed + 1, rank=info.rank,
                                          world_size=info.world_size, start=self.step * self.accum * self.vl_micro)
            self.vl_loader = DataLoader(
                self.vl_dataset, batch_size=self.vl_micro, sampler=vl_sampler,
                collate_fn=VLCollator(self.processor, cfg.cotrain.max_text_tokens), num_workers=cfg.data.num_workers,
                pin_memory=on_cuda, persistent_workers=cfg.data.num_workers > 0,
                generator=torch.Generator().manual_seed(stream_seed(cfg.seed, VL_LOADER_STREAM, info.rank, self.step)),
            )
            self._vl_batches = iter(self.vl_loader)

    def _latent_labels(self, model: PI0StyleVLA, episodes: list[DecodedEpisode], info: DistInfo) -> list[np.ndarray]:
        """Latent-action codes of every episode step, from ``latent.lam`` (computed once per run
        and kept in ``run_dir/latent_codes.npz``); in expert mode the model gets the codebook."""
        from gf_training.latent import LatentActionModel, label_episodes, pairs_for

        cfg, vcfg = self.cfg, model.config
        if not self.cfg.latent.lam:
            raise ValueError("model.config asks for latent-action targets: set latent.lam to a latent action model "
                             "directory (gf-lam train)")
        device = cfg.latent.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        lam = LatentActionModel.from_pretrained(cfg.latent.lam, device=device)
        lc = lam.config
        if lc.codebook_size != vcfg.latent_codebook_size or (
                vcfg.latent_action_mode == "expert" and lc.code_dim != vcfg.latent_code_dim):
            raise ValueError(f"the LAM has {lc.codebook_size} codes of width {lc.code_dim}; the model expects "
                             f"{vcfg.latent_codebook_size} of width {vcfg.latent_code_dim}")
        pairs = pairs_for(vcfg.latent_action_tokens, lc.codes_per_pair)
        path = self.run_dir / "latent_codes.npz"
        if info.is_main and not path.exists():
            codes = label_episodes(lam, episodes, pairs, progress=cfg.logging.progress)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, *codes)
            os.replace(tmp, path)
        info.barrier()
        with np.load(path) as data:
            codes = [data[f"arr_{i}"] for i in range(len(data.files))]
        if vcfg.latent_action_mode == "expert":
            model.set_latent_codebook(lam.code_vectors().cpu())
        return codes

    def _norm_stats(self, episodes: list[DecodedEpisode], info: DistInfo,
                    initial: dict[str, NormStats] | None) -> dict[str, NormStats]:
        """Computed once per run (or the initial model's, ``data.normalization: checkpoint``) and
        kept in the run directory (a resumed run reuses them)."""
        path = self.run_dir / "norm_stats.json"
        if info.is_main and not path.exists():
            kind = self.cfg.data.normalization
            if kind == "checkpoint" and not initial:
                raise ValueError("data.normalization=checkpoint: the initial model carries no statistics")
            save_norm_stats(initial if kind == "checkpoint" else compute_norm_stats(episodes, kind), path)
        info.barrier()  # unconditional: every rank must take part in the same barriers
        return load_norm_stats(path)

    def _wrap(self, model: PI0StyleVLA) -> nn.Module:
        info, dcfg = self.info, self.cfg.distributed
        if not info.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        if dcfg.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(model, device_ids=device_ids, find_unused_parameters=dcfg.find_unused_parameters)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

        # FSDP2 (per-parameter sharding: frozen and trainable parameters may mix, as LoRA and the
        # frozen-VLM schemes need). Only modules whose forward() runs can be FSDP units: SigLIP
        # layers shard individually; the joint Gemma layers are driven piecewise by
        # PI0StyleVLA._layer, so they live in the root unit (gathered once per forward).
        mesh = init_device_mesh(self.device.type, (info.world_size,))
        for module in model.modules():
            if isinstance(module, SiglipEncoderLayer):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    # ------------------------------------------------------------------ steps
    def _next_batch(self) -> dict[str, torch.Tensor]:
        batch = next(self._batches)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _next_vl_batch(self) -> dict[str, torch.Tensor] | None:
        if self._vl_batches is None:
            return None
        batch = next(self._vl_batches)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self) -> dict[str, float]:
        """One optimiser step (``accum`` micro-batches); returns loss, lr and gradient norm, and
        the per-target losses (``loss_flow``, ``loss_discrete``, ``loss_latent``, ``loss_lm``)."""
        self.wrapped.train()
        total = 0.0
        parts: dict[str, float] = {}
        for micro in range(self.accum):
            batch = self._next_batch()
            vl_batch = self._next_vl_batch()
            last = micro == self.accum - 1
            # Gradients are reduced across ranks on the last micro-batch only.
            sync: Any = contextlib.nullcontext()
            if hasattr(self.wrapped, "set_requires_gradient_sync"):  # FSDP2
                self.wrapped.set_requires_gradient_sync(last)
            elif not last and hasattr(self.wrapped, "no_sync"):  # DDP
                sync = self.wrapped.no_sync()
            autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                        if self.autocast_dtype is not None else contextlib.nullcontext())
            with sync:
                with autocast:
                    if vl_batch is None:
                        loss = self.forward(batch) / self.accum
                    else:
                        fraction = self.vl_micro / (self.vl_micro + self.vla_micro)
                        loss = self.forward(batch, vl_batch, fraction, self.cfg.cotrain.loss_weight) / self.accum
                loss.backward()
            total += float(loss.detach())
            for name, value in self.model.last_losses.items():
                parts[f"loss_{name}"] = parts.get(f"loss_{name}", 0.0) + float(value) / self.accum
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip is not None else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": total, "lr": lr, "grad_norm": float(grad_norm), **parts}

    def run(self) -> TrainResult:
        """Train to ``train.steps``, logging and saving checkpoints on the way."""
        cfg, info = self.cfg, self.info
        result = TrainResult(self.run_dir, self.step)
        if self.step >= cfg.train.steps:
            if info.is_main:
                print(f"[gf-train] {self.run_dir} is already at step {self.step}", file=sys.stderr)
            return result
        self._open_loggers()
        bar = None
        if info.is_main and cfg.logging.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.step, desc=cfg.name, unit="step", file=sys.stderr,
                       dynamic_ncols=True)
        started, start_step = time.perf_counter(), self.step
        window_loss, window_n = 0.0, 0
        window_parts: dict[str, float] = {}
        try:
            while self.step < cfg.train.steps:
                stats = self.train_step()
                result.losses.append(stats["loss"])
                window_loss, window_n = window_loss + stats["loss"], window_n + 1
                for key, value in stats.items():
                    if key.startswith("loss_"):
                        window_parts[key] = window_parts.get(key, 0.0) + value
                        result.parts.setdefault(key, []).append(value)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    mean = self._mean_over_ranks(window_loss / window_n)
                    elapsed = time.perf_counter() - started
                    values = {"train/loss": mean, "train/lr": stats["lr"], "train/grad_norm": stats["grad_norm"],
                              "train/steps_per_s": (self.step - start_step) / max(elapsed, 1e-9)}
                    if len(window_parts) > 1 or "loss_flow" not in window_parts:  # more than plain pi0
                        values.update({f"train/{k}": v / window_n for k, v in window_parts.items()})
                    self._log(values)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{stats['lr']:.2e}")
                    window_loss, window_n, window_parts = 0.0, 0, {}
                if self.attention_probe is not None and self.step % cfg.logging.attention_every == 0:
                    mass = self.attention_probe.measure(self.model)
                    self._log({f"attention/{k}": v for k, v in mass.items()})
                if bar is not None:
                    bar.update(1)
                if self.step in cfg.train.save_steps or self.step == cfg.train.steps:
                    result.checkpoints.append(self.save_checkpoint())
        finally:
            if bar is not None:
                bar.close()
            self._close_loggers()
        result.step = self.step
        result.steps_per_second = (self.step - start_step) / max(time.perf_counter() - started, 1e-9)
        return result

    def _mean_over_ranks(self, value: float) -> float:
        if not self.info.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.info.world_size

    # ------------------------------------------------------------------ logging
    def _open_loggers(self) -> None:
        if not self.info.is_main:
            return
        lcfg = self.cfg.logging
        if lcfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        if lcfg.wandb:
            try:
                import wandb
            except ImportError:
                print("[gf-train] logging.wandb is set but wandb is not installed: logging to TensorBoard only",
                      file=sys.stderr)
            else:
                self._wandb = wandb.init(project=lcfg.wandb_project, name=self.cfg.name, dir=str(self.run_dir),
                                         config=self.cfg.to_dict(), resume="allow")

    def _log(self, values: dict[str, float]) -> None:
        if self.info.is_main:
            # Plain-text twin of the TensorBoard scalars: reports (gf-mini's loss curve) read it
            # without TensorBoard's reader. A resumed run appends; readers keep a step's last line.
            with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step, **{k: float(v) for k, v in values.items()}}) + "\n")
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, self.step)
        if self._wandb is not None:
            self._wandb.log(values, step=self.step)

    def _close_loggers(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` (collective: every rank must call it). Returns the directory."""
        info = self.info
        final = self.run_dir / CHECKPOINT_DIR / checkpoint_name(self.step)
        partial = final.with_name(f".{final.name}.partial")
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.wrapped, options=options)
        optim_state = get_optimizer_state_dict(self.wrapped, self.optimizer, options=options)
        if info.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        info.barrier()
        torch.save(_rng_state(), partial / f"rng_rank{info.rank}.pt")
        if info.is_main:
            # fork_rng: building the export model (LoRA init) must not shift this rank's RNG stream.
            with torch.random.fork_rng(devices=[]):
                export_inference_checkpoint(model_state, self.vla_config, self.cfg.scheme, self.norm_stats,
                                            self.processor, partial)
            torch.save({"step": self.step, "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                        "world_size": info.world_size, "config": self.cfg.to_dict()}, partial / TRAIN_STATE)
            (partial / TRAINER_STATE).write_text(json.dumps({
                "step": self.step, "run": self.cfg.name, "scheme": dataclasses.asdict(self.cfg.scheme),
                "model": self.cfg.model.init, "world_size": info.world_size}, indent=2) + "\n")
        info.barrier()
        if info.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
        info.barrier()
        return final

    def _resume_checkpoint(self) -> Path | None:
        resume = self.cfg.train.resume
        if resume in (False, "false", "False", None):
            return None
        if resume not in (True, "auto", "true", "True"):
            path = Path(str(resume))
            if not (path / TRAIN_STATE).exists():
                raise FileNotFoundError(f"train.resume={resume}: no {TRAIN_STATE} there")
            return path
        found = list_checkpoints(self.run_dir)
        path = found[-1][1] if found else None
        if path is not None and (path / TRAINER_STATE).exists():
            saved = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
            if saved.get("scheme") != dataclasses.asdict(self.cfg.scheme):
                raise ValueError(
                    f"{path} was trained with scheme {saved.get('scheme')}, this config asks for "
                    f"{dataclasses.asdict(self.cfg.scheme)}: use another output_dir, or train.resume=false to start over"
                )
        return path

    def _load_weights(self, model: PI0StyleVLA, path: Path) -> None:
        """The training-form weights of a checkpoint into the (scheme-applied, unwrapped) model."""
        weights_file = path / (TRAIN_WEIGHTS if (path / TRAIN_WEIGHTS).exists() else INFERENCE_WEIGHTS)
        # safetensors' load_model knows which tied name (LM head / embeddings) save_model dropped.
        missing, unexpected = load_model(model, str(weights_file), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_file} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _load_training_state(self, path: Path) -> None:
        # mmap: every rank reads the (full) optimiser state without holding a private copy of it.
        state = torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=False, mmap=True)
        # strict=False: parameters that never received a gradient (the last VLM layer's MLP, off
        # the action path) have no AdamW state to restore.
        set_optimizer_state_dict(self.wrapped, self.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        rng_file = path / f"rng_rank{self.info.rank}.pt"
        if rng_file.exists() and state.get("world_size") == self.info.world_size:
            _set_rng_state(torch.load(rng_file, weights_only=False))
        else:  # a different number of processes: the data order continues, the noise stream restarts
            seed_everything(stream_seed(self.cfg.seed, NOISE_STREAM, self.info.rank, self.step))
        if self.info.is_main:
            print(f"[gf-train] resumed from {path} at step {self.step}", file=sys.stderr)

    def close(self) -> None:
        """Leave the process group (if this trainer joined one)."""
        self._close_loggers()
        if self.info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig, episodes: list[DecodedEpisode] | None = None) -> tuple[TrainResult, Trainer]:
    """Run a whole training job in this process; returns the result and the trainer (its model)."""
    trainer = Trainer(cfg, episodes).setup()
    return trainer.run(), trainer


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-train``."""
    parser = argparse.ArgumentParser(
        prog="gf-train", description=__doc__.split("\n\n")[0],
        epilog="Shipped configs: " + ", ".join(sorted(p.stem for p in _config_dir().glob("*.yaml"))),
    )
    parser.add_argument("config", help="YAML config (a path, or the name of a shipped config)")
    parser.add_argument("overrides", nargs="*", help="section.key=value (YAML value), e.g. train.steps=1000")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    args = parser.parse_intermixed_args(argv)  # flags may come after the overrides
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    result, trainer = train(cfg)
    try:
        if trainer.info.is_main:
            last = result.checkpoints[-1] if result.checkpoints else None
            print(f"[gf-train] done: step {result.step}, {result.steps_per_second:.2f} steps/s"
                  + (f", last checkpoint {last}" if last else ""))
    finally:
        trainer.close()
    return 0


def _config_dir() -> Path:
    from gf_training.config import CONFIG_DIR

    return CONFIG_DIR


if __name__ == "__main__":
    sys.exit(main())
