"""High-level inference: camera image + instruction + proprio -> unnormalised action chunk.

This is what the ROS policy node calls; it knows nothing about ROS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .modeling import PI0StyleVLA
from .normalization import NORM_STATS_NAME, NormStats
from .processing import ImageInput, VLAProcessor


class VLAInference:
    """A loaded checkpoint ready to predict actions in the benchmark's action space.

    Sampled (normalised) actions are clipped to [-1, 1] - the range training targets were
    clipped to - then unnormalised with the checkpoint's statistics and clipped to the configured
    action-space bounds (``ee_delta_pose``: every dimension in [-1, 1], gripper 1 open / -1 closed).
    """

    def __init__(self, model: PI0StyleVLA, processor: VLAProcessor, norm_stats: dict[str, NormStats]):
        for key, dim in (("proprio", model.config.proprio_dim), ("actions", model.config.action_dim)):
            if key not in norm_stats:
                raise ValueError(f"normalisation statistics for {key!r} are missing")
            if norm_stats[key].dim != dim:
                raise ValueError(f"{key} statistics have {norm_stats[key].dim} dims, the model {dim}")
        self.model = model.eval()
        self.processor = processor
        self.fitted_processor = processor.for_fitted_images()  # for predict_batch(fitted=True)
        self.norm_stats = norm_stats

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> VLAInference:
        """Load model, tokenizer and normalisation statistics from a checkpoint directory."""
        model = PI0StyleVLA.from_pretrained(directory, device=device, dtype=dtype)
        if model.norm_stats is None:
            raise FileNotFoundError(f"{Path(directory) / NORM_STATS_NAME} is missing: actions cannot be unnormalised")
        processor = VLAProcessor.from_pretrained(directory, model.config)
        return cls(model, processor, model.norm_stats)

    @property
    def action_horizon(self) -> int:
        return self.model.config.action_horizon

    @property
    def execution_horizon(self) -> int:
        """How many of the predicted steps the caller is meant to execute before re-planning."""
        return self.model.config.execution_horizon

    @property
    def action_space(self) -> str:
        return self.model.config.action_space

    def predict(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        instruction: str,
        proprio: np.ndarray,
        noise: torch.Tensor | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """One observation -> actions (action_horizon, action_dim) as float32.

        ``image``: uint8 H x W x 3 (or a list of ``num_images`` such images); ``proprio``: (proprio_dim,).
        ``noise`` (1, H, model_action_dim) or ``seed`` make the result reproducible.
        """
        images = [image] if isinstance(image, np.ndarray) else [list(image)]
        proprio = np.asarray(proprio, dtype=np.float32)
        if proprio.ndim != 1:
            raise ValueError(f"proprio must be a vector, got shape {proprio.shape}")
        return self.predict_batch(images, [instruction], proprio[None], noise=noise, seed=seed)[0]

    def predict_batch(
        self,
        images: ImageInput,
        instructions: Sequence[str],
        proprios: np.ndarray,
        noise: torch.Tensor | None = None,
        seed: int | None = None,
        fitted: bool = False,
    ) -> np.ndarray:
        """A batch of observations -> actions (B, action_horizon, action_dim) as float32.

        ``fitted``: the images are already cropped and resized (``fit_image``), not camera frames."""
        cfg = self.model.config
        proprios = np.asarray(proprios, dtype=np.float32)
        if proprios.ndim != 2 or proprios.shape[1] != cfg.proprio_dim:
            raise ValueError(f"proprio must be (B, {cfg.proprio_dim}), got {proprios.shape}")
        if not np.isfinite(proprios).all():
            raise ValueError("proprio contains NaN or infinite values")
        inputs = (self.fitted_processor if fitted else self.processor)(images, list(instructions))
        if inputs["input_ids"].shape[0] != proprios.shape[0]:
            raise ValueError(f"{inputs['input_ids'].shape[0]} observations but {proprios.shape[0]} proprio rows")
        device = self.model.device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        proprio_t = torch.from_numpy(self.norm_stats["proprio"].normalize(proprios)).to(device)
        generator = None
        if seed is not None and noise is None:
            generator = torch.Generator(device=device).manual_seed(seed)
        actions = self.model.sample_actions(
            inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], proprio_t,
            noise=None if noise is None else noise.to(device), generator=generator,
        )
        # Quantile-normalised training targets were clipped to [-1, 1], so anything outside is
        # extrapolation: clip before mapping back (actions stay within the data's [q01, q99]).
        normed = self.norm_stats["actions"].clip_normalized(actions.float()).cpu().numpy()
        out = self.norm_stats["actions"].unnormalize(normed)
        if cfg.action_low is not None or cfg.action_high is not None:
            out = np.clip(out, cfg.action_low, cfg.action_high)
        return out.astype(np.float32)
