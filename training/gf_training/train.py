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
        scene_probe.pt    the auxiliary head of `scene_probe` (training-only), when it is on
        name_probe.pt     the auxiliary head of `name_probe` (training-only), when it is on
        trainer_state.json step, scheme, model init (a resume with another scheme is refused)
    checkpoints/resume/   the same, every ``train.resume_every`` steps between them (kept until the next)

A run started again with the same ``output_dir`` resumes from its latest checkpoint (``train.resume``)
and continues exactly as if uninterrupted (with ``data.num_workers: 0``; with workers, the data order
still continues exactly): data order, augmentation and flow-matching noise are restored too.
Every run also saves its final step; checkpoints are written to a ``.partial`` directory and
renamed, so an interrupted save never leaves a checkpoint that looks complete.

This module holds the ``Trainer`` (set-up, optimiser steps, the loop) and the command; the rest
of a run lives beside it: ``runtime`` (processes, devices, random streams, DDP/FSDP wrapping),
``build`` (initial model, episodes, statistics, latent labels, tokenizer), ``trainer_data`` (the
datasets and loaders of a run), ``checkpoints``
(saving and resuming) and ``metrics`` (metrics.jsonl, TensorBoard, wandb). Names that moved
there are still importable from here.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gf_bringup.runtime import lock_directory
from gf_policy.vla import PI0StyleVLA
from gf_training.build import (  # noqa: F401 - expand_backbone_sizes, with_latent_sizes: re-exported
    build_model,
    expand_backbone_sizes,
    with_latent_sizes,
)
from gf_training.checkpoints import (  # noqa: F401 - the names but the mixin: re-exported
    CHECKPOINT_DIR,
    INFERENCE_WEIGHTS,
    RESUME_POINT,
    RUN_CONFIG,
    CheckpointingMixin,
    checkpoint_name,
    list_checkpoints,
)
from gf_training.config import TrainConfig, dump_config, load_config
from gf_training.episodes import DecodedEpisode
from gf_training.image_heads import ImageFeatureHead
from gf_training.metrics import METRICS_FILE, LossWindow, MetricsLoggingMixin  # noqa: F401 - METRICS_FILE: re-exported
from gf_training.name_probe import NameProbe
from gf_training.runtime import (
    NOISE_STREAM,
    init_distributed,
    resolve_device,
    seed_everything,
    stream_seed,
    wrap_model,
)
from gf_training.scene_probe import SceneProbe
from gf_training.schemes import apply_scheme, trainable_parameter_report
from gf_training.trainer_data import TrainingDataMixin


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


@dataclass
class TrainResult:
    """What a finished (or partial) run returns."""

    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # per optimiser step of this process, this session
    parts: dict[str, list[float]] = field(default_factory=dict)  # per-target losses (loss_flow, loss_lm, ...)
    checkpoints: list[Path] = field(default_factory=list)
    steps_per_second: float = float("nan")


class Trainer(TrainingDataMixin, CheckpointingMixin, MetricsLoggingMixin):
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
        self._lock: Any = None  # the run directory's, held by the main process while it trains
        self._wandb: Any = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> Trainer:
        """Everything a run needs before its first step, in order: devices and processes, the
        initial model, data and tokenizer, the trained model with its optimiser (restored when
        resuming), the loaders."""
        cfg = self.cfg
        try:
            self._setup_runtime()
            # The same seed on every rank for the model's initial weights.
            seed_everything(cfg.seed)
            model = build_model(cfg)
            if cfg.model.gradient_checkpointing:
                model.gradient_checkpointing_enable()
            self._setup_data(model)
            self._setup_model(model)
            self._setup_loaders()
        except BaseException:  # a refused resume, bad data: the run directory is free again
            self._release_run_dir()
            raise
        self.attention_probe = None
        # Rank 0 measures on its own copy of the weights: not possible when FSDP shards them.
        info = self.info
        if (cfg.logging.attention_every > 0 and info.is_main and self.episodes
                and not (info.enabled and cfg.distributed.strategy == "fsdp")):
            from gf_training.attention import AttentionMassProbe

            self.attention_probe = AttentionMassProbe.from_episodes(self.episodes, self.fitted_processor,
                                                                     cfg.logging.attention_samples)
        return self

    def _setup_runtime(self) -> None:
        """Threads, device, precision, processes and gradient accumulation; the run directory."""
        cfg = self.cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        device_type = "cuda" if cfg.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self.info = info = init_distributed(cfg, device_type)
        self.device = resolve_device(cfg, info)
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

        if info.is_main:  # before anything in the run directory is read or replaced
            self._lock = lock_directory(self.run_dir, "training")
        self._resume_from = self._resume_checkpoint()  # before the run's config file is replaced
        if info.is_main:
            (self.run_dir / RUN_CONFIG).write_text(dump_config(cfg), encoding="utf-8")
        info.barrier()

    def _setup_model(self, model: PI0StyleVLA) -> None:
        """The fine-tuning scheme, resumed weights, the wrapped model, optimiser and scheduler."""
        cfg, info, vla_cfg = self.cfg, self.info, model.config
        apply_scheme(model, cfg.scheme)
        self.vla_config = vla_cfg
        resume_from = self._resume_from
        if resume_from is not None:  # weights go in before wrapping (DDP/FSDP then hold them)
            self._load_weights(model, resume_from)
        self.model = model.to(self.device)
        if info.is_main:
            data = (f"{len(self.vl_dataset)} vision-language samples only" if self.dataset is None
                    else f"{len(self.dataset)} samples from {len(self.episodes)} episodes")
            print(f"[gf-train] {cfg.name}: scheme {cfg.scheme.name}, {data}, {info.world_size} process(es) x {cfg.train.micro_batch_size} "
                  f"x {self.accum} accumulation = batch {cfg.train.batch_size}\n{trainable_parameter_report(model)}",
                  file=sys.stderr)
        self.wrapped = wrap_model(self.model, info, cfg.distributed, self.device)
        # After wrapping: FSDP2 replaces parameters by sharded DTensors.
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.scene_probe = None
        if self.scene_targets is not None:
            self.scene_probe = SceneProbe(self.model, cfg.scene_probe, self.scene_targets, cfg.optim.lr,
                                          lambda s: lr_factor(s, cfg), self.device)
        self.name_probe = None
        if cfg.name_probe.weight > 0:
            if self.vl_dataset is None:
                raise ValueError("name_probe.weight > 0 needs vision-language data (cotrain.ratio > 0, cotrain.vl_dirs)")
            self.name_probe = NameProbe(self.model, len(self.vl_dataset.named_emojis), cfg.optim.lr,
                                        lambda s: lr_factor(s, cfg), self.device)
        if resume_from is not None:
            self._load_training_state(resume_from)
        else:
            # Different noise/time draws and augmentations on each rank from here on.
            seed_everything(stream_seed(cfg.seed, NOISE_STREAM, info.rank))
        self.forward = torch.compile(self.wrapped) if self.use_compile else self.wrapped

    def image_heads(self) -> list[ImageFeatureHead]:
        """The training-only heads that are on (``scene_probe``, ``name_probe``)."""
        return [h for h in (self.scene_probe, self.name_probe) if h is not None]

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
            for head in self.image_heads():
                head.clear()
            with sync:
                with autocast:
                    if vl_batch is None:
                        loss = self.forward(batch)
                    else:
                        fraction = self.vl_micro / (self.vl_micro + self.vla_micro)  # 1: VL only (batch None)
                        loss = self.forward(batch, vl_batch, fraction, self.cfg.cotrain.loss_weight)
                losses = dict(self.model.last_losses)
                if self.scene_probe is not None:
                    scene = self.scene_probe.mse(batch)
                    loss = loss + self.cfg.scene_probe.weight * scene
                    losses["scene"] = scene.detach()
                if self.name_probe is not None:
                    names = self.name_probe.cross_entropy(vl_batch)
                    loss = loss + self.cfg.name_probe.weight * names
                    losses["names"] = names.detach()
                loss = loss / self.accum
                loss.backward()
            total += float(loss.detach())
            for name, value in losses.items():
                parts[f"loss_{name}"] = parts.get(f"loss_{name}", 0.0) + float(value) / self.accum
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip is not None else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for head in self.image_heads():
            head.step()
        self.step += 1
        return {"loss": total, "lr": lr, "grad_norm": float(grad_norm), **parts}

    def run(self) -> TrainResult:
        """Train to ``train.steps``, logging and saving checkpoints on the way."""
        cfg, info = self.cfg, self.info
        result = TrainResult(self.run_dir, self.step)
        if self.step >= cfg.train.steps:
            if info.is_main:
                print(f"[gf-train] {self.run_dir} is already at step {self.step}", file=sys.stderr)
            self._release_run_dir()
            return result
        self._open_loggers()
        bar = None
        if info.is_main and cfg.logging.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.step, desc=cfg.name, unit="step", file=sys.stderr,
                       dynamic_ncols=True)
        started, start_step = time.perf_counter(), self.step
        window = LossWindow()
        try:
            while self.step < cfg.train.steps:
                stats = self.train_step()
                result.losses.append(stats["loss"])
                for key, value in stats.items():
                    if key.startswith("loss_"):
                        result.parts.setdefault(key, []).append(value)
                window.add(stats)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    mean = self._mean_over_ranks(window.loss / window.steps)
                    elapsed = time.perf_counter() - started
                    self._log({"train/loss": mean, "train/lr": stats["lr"], "train/grad_norm": stats["grad_norm"],
                               "train/steps_per_s": (self.step - start_step) / max(elapsed, 1e-9),
                               **window.part_means()})
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{stats['lr']:.2e}")
                    window = LossWindow()
                if self.attention_probe is not None and self.step % cfg.logging.attention_every == 0:
                    mass = self.attention_probe.measure(self.model)
                    self._log({f"attention/{k}": v for k, v in mass.items()})
                if bar is not None:
                    bar.update(1)
                if self.step in cfg.train.save_steps or self.step == cfg.train.steps:
                    result.checkpoints.append(self.save_checkpoint())
                elif cfg.train.resume_every and self.step % cfg.train.resume_every == 0:
                    self.save_checkpoint(RESUME_POINT)
        finally:
            if bar is not None:
                bar.close()
            self._close_loggers()
            self._release_run_dir()
        result.step = self.step
        result.steps_per_second = (self.step - start_step) / max(time.perf_counter() - started, 1e-9)
        return result

    def _release_run_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        """Leave the process group (if this trainer joined one) and the run directory."""
        self._close_loggers()
        self._release_run_dir()
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
