"""An auxiliary scene target for training: regress where the cube starts from the image tokens.

Why: a policy trained on demos alone moves to the cube's *average* position. The cube's offset
decides only the first chunk or two of a demo, in 2 of the 7 action dimensions, so the flow loss
gives the vision tower little reason to locate it; the same tower, asked directly by a regression
head, locates it within millimetres. The probe asks it directly during training, so the image
tokens the VLM (and through it the action expert) reads carry the cube's position.

What it is: a small head, attention pooling (one learned query over the image tokens) and an MLP,
reading the image features the VLM's projector emits (``multi_modal_projector``, caught by a
forward hook, so the model runs once per batch) and predicting each sample's normalised trial
cube position ``(x, y)`` (from the trial recorded with every demo; no simulator state needed).
Its loss, ``weight x MSE`` over the steps before the grasp, is added to the model's. It is
training-only (``gf_training.image_heads``): the head's state is kept beside the checkpoints for
resuming (``scene_probe.pt``).

With co-training the VLM also embeds the vision-language batch; the probe reads the first image
features of a step, which belong to the action batch (``PI0StyleVLA.forward`` embeds it first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gf_policy.vla import PI0StyleVLA
from gf_training.data import GRIPPER_INDEX, SCENE_TARGET
from gf_training.episodes import EpisodeLike
from gf_training.image_heads import ImageFeatureHead

PROBE_STATE = "scene_probe.pt"


@dataclass
class SceneProbeSection:
    """``scene_probe``: the auxiliary cube-position target (``gf_training.scene_probe``)."""

    weight: float = 0.0  # weight of its MSE beside the model's loss (0: off)
    hidden: int = 128  # width of the head's MLP

    def __post_init__(self) -> None:
        if self.weight < 0 or self.hidden < 1:
            raise ValueError("need scene_probe.weight >= 0 and scene_probe.hidden >= 1")


@dataclass(frozen=True)
class SceneTargets:
    """Per-step targets of every episode, normalised by the mean and spread over the episodes.

    The trial gives where the cube *starts*; the image shows it there until the gripper closes on
    it, so the steps from the first close command (gripper action < 0) on have no target (NaN).
    """

    per_step: list[np.ndarray]  # one (T, 2) float32 array per episode; NaN rows: no target
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_episodes(cls, episodes: Sequence[EpisodeLike]) -> SceneTargets:
        """Each episode's trial ``cube_xy``; a demo without its trial is an error."""
        rows = []
        for i, ep in enumerate(episodes):
            trial = getattr(ep, "trial", None)
            if not trial or "cube_xy" not in trial:
                raise ValueError(f"episode {i} has no trial with cube_xy: the scene probe needs demos recorded "
                                 "with their trial (gf-demos generate, gf-teleop with a trial)")
            rows.append([float(v) for v in trial["cube_xy"]][:2])
        start = np.asarray(rows, dtype=np.float32)
        mean, std = start.mean(axis=0), np.maximum(start.std(axis=0), 1e-6)
        per_step = []
        for ep, xy in zip(episodes, (start - mean) / std):
            closes = np.flatnonzero(np.asarray(ep.actions)[:, GRIPPER_INDEX] < 0)
            until = int(closes[0]) if len(closes) else len(ep.actions)
            targets = np.full((len(ep.actions), 2), np.nan, dtype=np.float32)
            targets[:until] = xy
            per_step.append(targets)
        return cls(per_step, mean, std)


class SceneProbeHead(nn.Module):
    """Attention pooling over image tokens (one learned query), then an MLP to ``n_out`` values."""

    def __init__(self, width: int, hidden: int, n_out: int = 2):
        super().__init__()
        self.query = nn.Parameter(torch.randn(width) / width**0.5)
        self.key = nn.Linear(width, width, bias=False)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, n_out))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.key(tokens) @ self.query / tokens.shape[-1] ** 0.5, dim=1)  # (B, T)
        pooled = (weights[..., None] * tokens).sum(dim=1)
        return self.mlp(pooled)


class SceneProbe(ImageFeatureHead):
    """The head on the action batch's image features; ``mse(batch)`` after a forward."""

    state_file = PROBE_STATE

    def __init__(self, model: PI0StyleVLA, cfg: SceneProbeSection, targets: SceneTargets,
                 lr: float, lr_factor: Callable[[int], float], device: torch.device):
        self.cfg = cfg
        self.mean = torch.as_tensor(targets.mean, device=device)
        self.std = torch.as_tensor(targets.std, device=device)
        head = SceneProbeHead(self.feature_width(model), cfg.hidden, len(targets.mean))
        super().__init__(model, head, lr, lr_factor, device)

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.std + self.mean

    def predict(self) -> torch.Tensor:
        """Normalised predictions for the action batch of the last forward (its first image features)."""
        return self.head(self.features(0))

    def mse(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """MSE against ``batch[SCENE_TARGET]`` over the samples that have a target (0 if none do);
        clears the captured features."""
        try:
            prediction = self.predict()
            target = batch[SCENE_TARGET].to(prediction)
            valid = torch.isfinite(target).all(dim=-1)
            err = (prediction - target.nan_to_num()).pow(2).mean(dim=-1)
            return (err * valid).sum() / valid.sum().clamp_min(1)
        finally:
            self.clear()
