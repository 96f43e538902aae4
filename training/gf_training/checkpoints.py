"""Checkpoints of a training run (``gf_training.train``).

``checkpoints/step_N/`` holds an inference-ready checkpoint (``PI0StyleVLA.save_pretrained``,
LoRA merged) and what a resume needs: the training-form weights of runs with adapters, the
optimiser and scheduler state, every rank's RNG states and the trainer state (step, scheme).
It is written to a ``.partial`` directory and renamed, so an interrupted save never leaves a
checkpoint that looks complete. ``checkpoints/resume/`` (``train.resume_every``) is the same
content at a step between them, kept only until the next one: a run resumes from whichever is
later, and sweeps, which look for ``step_N``, never see it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from transformers.initialization import no_init_weights

from gf_policy.vla import NormStats, PI0StyleVLA, VLAConfig, VLAProcessor
from gf_training.runtime import NOISE_STREAM, rng_state, seed_everything, set_rng_state, stream_seed
from gf_training.schemes import SchemeConfig, apply_scheme, merge_adapters, save_adapters

CHECKPOINT_DIR = "checkpoints"
TRAIN_STATE = "training_state.pt"
TRAIN_WEIGHTS = "train_model.safetensors"
TRAINER_STATE = "trainer_state.json"
INFERENCE_WEIGHTS = "model.safetensors"


RUN_CONFIG = "config.yaml"
# What a run's checkpoints learnt from: a resume under other values of these would continue a
# different experiment. Steps, checkpoints, logging, optimiser and processes may change.
LEARNT_FROM = ("seed", "model", "scheme", "data", "cotrain", "latent", "scene_probe", "name_probe")


def config_changes(run_dir: str | Path, config: dict) -> list[str]:
    """The dotted keys of ``LEARNT_FROM`` in which ``config`` (a resolved config as a dict)
    differs from the one the run in ``run_dir`` was started with ([] when there is none)."""
    from gf_training.config import load_config

    path = Path(run_dir) / RUN_CONFIG
    if not path.exists():
        return []
    saved = load_config(str(path)).to_dict()  # resolved again: fields added since take their defaults

    def diff(a, b, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [k for key in sorted(set(a) | set(b), key=str) for k in diff(a.get(key), b.get(key), f"{prefix}.{key}")]
        return [] if a == b else [prefix]

    return [k for section in LEARNT_FROM for k in diff(saved.get(section), config.get(section), section)]


RESUME_POINT = "resume"


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def resume_point(run_dir: str | Path) -> tuple[int, Path] | None:
    """The run's complete resume point (``train.resume_every``), (step, directory), if it has one."""
    path = Path(run_dir) / CHECKPOINT_DIR / RESUME_POINT
    if not (path / TRAIN_STATE).exists() or not (path / TRAINER_STATE).exists():
        return None
    return int(json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))["step"]), path


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, (step, directory), in step order."""
    root = Path(run_dir) / CHECKPOINT_DIR
    out = []
    for d in root.glob("step_*") if root.is_dir() else []:
        if d.is_dir() and (d / TRAIN_STATE).exists() and d.name[5:].isdigit():
            out.append((int(d.name[5:]), d))
    return sorted(out)


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


class CheckpointingMixin:
    """The ``Trainer``'s saving and resuming (uses its cfg, info, run_dir, step, wrapped model,
    optimiser, scheduler, scheme-applied config, norm stats, processor and scene probe)."""

    def save_checkpoint(self, name: str | None = None) -> Path:
        """Write ``checkpoints/step_N``, or ``checkpoints/<name>`` (the resume point), collective:
        every rank must call it. A ``step_N`` checkpoint replaces the older resume point. Returns
        the directory."""
        info = self.info
        final = self.run_dir / CHECKPOINT_DIR / (name or checkpoint_name(self.step))
        partial = final.with_name(f".{final.name}.partial")
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.wrapped, options=options)
        optim_state = get_optimizer_state_dict(self.wrapped, self.optimizer, options=options)
        if info.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        info.barrier()
        torch.save(rng_state(), partial / f"rng_rank{info.rank}.pt")
        if info.is_main:
            # fork_rng: building the export model (LoRA init) must not shift this rank's RNG stream.
            with torch.random.fork_rng(devices=[]):
                export_inference_checkpoint(model_state, self.vla_config, self.cfg.scheme, self.norm_stats,
                                            self.processor, partial)
            torch.save({"step": self.step, "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                        "world_size": info.world_size, "config": self.cfg.to_dict()}, partial / TRAIN_STATE)
            for head in self.image_heads():  # training-only (gf_training.image_heads)
                head.save(partial)
            (partial / TRAINER_STATE).write_text(json.dumps({
                "step": self.step, "run": self.cfg.name, "scheme": dataclasses.asdict(self.cfg.scheme),
                "model": self.cfg.model.init, "world_size": info.world_size}, indent=2) + "\n")
        info.barrier()
        if info.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            if name is None:
                shutil.rmtree(final.with_name(RESUME_POINT), ignore_errors=True)
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
        point = resume_point(self.run_dir)
        if point is not None and (not found or point[0] > found[-1][0]):
            found.append(point)
        path = found[-1][1] if found else None
        changed = config_changes(self.run_dir, self.cfg.to_dict()) if path is not None else []
        if changed:
            raise ValueError(
                f"{self.run_dir} holds a run started with other {', '.join(changed)} ({self.run_dir / RUN_CONFIG}): "
                f"use another output_dir, move that run away, or train.resume=false to start over")
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
        for head in self.image_heads():
            head.load(path)
        self.step = int(state["step"])
        rng_file = path / f"rng_rank{self.info.rank}.pt"
        if rng_file.exists() and state.get("world_size") == self.info.world_size:
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:  # a different number of processes: the data order continues, the noise stream restarts
            seed_everything(stream_seed(self.cfg.seed, NOISE_STREAM, self.info.rank, self.step))
        if self.info.is_main:
            print(f"[gf-train] resumed from {path} at step {self.step}", file=sys.stderr)
