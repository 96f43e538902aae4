"""Where a training run's scalars go (``gf_training.train``): ``metrics.jsonl`` in the run
directory (always, on rank 0), TensorBoard and Weights & Biases (``logging`` section)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

METRICS_FILE = "metrics.jsonl"


@dataclass
class LossWindow:
    """The losses of the optimiser steps since the last logging step."""

    loss: float = 0.0
    steps: int = 0
    parts: dict[str, float] = field(default_factory=dict)  # loss_flow, loss_lm, loss_scene, ...

    def add(self, stats: dict[str, float]) -> None:
        self.loss, self.steps = self.loss + stats["loss"], self.steps + 1
        for key, value in stats.items():
            if key.startswith("loss_"):
                self.parts[key] = self.parts.get(key, 0.0) + value

    def part_means(self) -> dict[str, float]:
        """``train/<part>`` means, when the loss has more parts than plain pi0's flow loss."""
        if len(self.parts) <= 1 and "loss_flow" in self.parts:
            return {}
        return {f"train/{k}": v / self.steps for k, v in self.parts.items()}


class MetricsLoggingMixin:
    """The ``Trainer``'s logging (uses its cfg, info, device, run_dir and step; ``_writer`` and
    ``_wandb`` are its open loggers, ``None`` when closed)."""

    def _mean_over_ranks(self, value: float) -> float:
        if not self.info.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.info.world_size

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
