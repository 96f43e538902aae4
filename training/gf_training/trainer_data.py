"""The ``Trainer``'s data (``gf_training.train``): episodes, statistics, tokenizer and datasets,
and the loaders that continue where a resumed run stopped."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from gf_policy.vla import PI0StyleVLA
from gf_training.build import build_processor, latent_labels, load_episodes, run_norm_stats
from gf_training.data import ChunkDataset, MixtureSampler, ResumableSampler, VLACollator
from gf_training.runtime import LOADER_STREAM, VL_LOADER_STREAM, stream_seed
from gf_training.scene_probe import SceneTargets


class TrainingDataMixin:
    """Uses the ``Trainer``'s cfg, info, device, run_dir, step, accum and ``_episodes``."""

    def _setup_data(self, model: PI0StyleVLA) -> None:
        """Episodes, normalisation statistics, tokenizer/processor and the datasets.

        ``cotrain.ratio: 1`` trains on vision-language samples only (a VLM's pre-training, with
        the same model and loop): no episodes, statistics or action data then."""
        cfg, info, vla_cfg = self.cfg, self.info, model.config
        vl_only = cfg.cotrain.ratio >= 1.0
        if vl_only:
            _check_vl_only(cfg, vla_cfg)
            episodes = []
            self.norm_stats = model.norm_stats
        else:
            episodes = self._episodes if self._episodes is not None else load_episodes(cfg, vla_cfg.image_size, info, vla_cfg.image_crop)
            self.norm_stats = run_norm_stats(cfg, self.run_dir, episodes, info, model.norm_stats)
            model.norm_stats = self.norm_stats
        self.episodes = episodes
        latent_codes = latent_labels(cfg, self.run_dir, model, episodes, info) if vla_cfg.latent_active else None
        texts = [e.instruction for e in episodes]
        self.vl_dataset = None
        if cfg.cotrain.ratio > 0:
            from gf_training.vl_data import VLDataset

            self.vl_dataset = VLDataset(cfg.cotrain.vl_dirs, vla_cfg.image_size, vla_cfg.image_crop)
            texts += self.vl_dataset.texts()
        self.processor = build_processor(cfg, vla_cfg, texts, self.run_dir, info)
        # Episodes and VL samples hold their images as the model sees them (cropped and resized
        # once, when loaded): whatever reads them must not crop them again.
        self.fitted_processor = self.processor.for_fitted_images()
        self.scene_targets = SceneTargets.from_episodes(episodes) if cfg.scene_probe.weight > 0 else None
        self.dataset = None if vl_only else ChunkDataset(
            episodes, vla_cfg.action_horizon, self.norm_stats, latent_codes=latent_codes,
            hold_after_end=cfg.data.hold_after_end,
            scene_targets=None if self.scene_targets is None else self.scene_targets.per_step)
        # Co-training splits every micro-batch: round(ratio x micro) VL samples, the rest actions.
        self.vl_micro = round(cfg.train.micro_batch_size * cfg.cotrain.ratio) if self.vl_dataset is not None else 0
        self.vla_micro = cfg.train.micro_batch_size - self.vl_micro
        if self.vl_dataset is not None and not vl_only and not 1 <= self.vl_micro < cfg.train.micro_batch_size:
            raise ValueError(f"cotrain.ratio={cfg.cotrain.ratio} gives {self.vl_micro} VL samples per micro-batch of "
                             f"{cfg.train.micro_batch_size}: need at least one of each kind (or ratio 1: VL only)")

    def _setup_loaders(self) -> None:
        """The action-data loader and, when co-training, the vision-language one; both continue
        where a resumed run stopped."""
        cfg = self.cfg
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        if self.dataset is not None:
            self.loader = self._loader(self.dataset, self.vla_micro, cfg.seed, LOADER_STREAM,
                                       VLACollator(self.fitted_processor, cfg.data.augment))
            self._batches = iter(self.loader)
        self._vl_batches: Iterator[dict[str, torch.Tensor]] | None = None
        if self.vl_dataset is not None:
            from gf_training.vl_data import VLCollator

            self.vl_loader = self._loader(self.vl_dataset, self.vl_micro, cfg.seed + 1, VL_LOADER_STREAM,
                                          VLCollator(self.fitted_processor, cfg.cotrain.max_text_tokens),
                                          weights=cfg.cotrain.vl_weights)
            self._vl_batches = iter(self.vl_loader)

    def _loader(self, dataset: Any, micro: int, order_seed: int, stream: int, collate: Any,
                weights: Sequence[float] = ()) -> DataLoader:
        """An endless loader of this rank's share, continuing after the samples earlier steps used;
        with ``weights``, a mixture of the dataset's sources (``source_sizes()``) in those shares."""
        cfg, info = self.cfg, self.info
        start = self.step * self.accum * micro
        if weights:
            sampler = MixtureSampler(dataset.source_sizes(), weights, seed=order_seed, rank=info.rank,
                                     world_size=info.world_size, start=start)
        else:
            sampler = ResumableSampler(len(dataset), seed=order_seed, rank=info.rank, world_size=info.world_size,
                                       start=start)
        return DataLoader(
            dataset, batch_size=micro, sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=cfg.data.num_workers > 0,
            # Its own generator: creating the iterator draws a worker base seed, which must not
            # shift the global RNG stream a resumed run restores.
            generator=torch.Generator().manual_seed(stream_seed(cfg.seed, stream, info.rank, self.step)),
        )

    def _next_batch(self) -> dict[str, torch.Tensor] | None:
        if self._batches is None:  # vision-language only
            return None
        batch = next(self._batches)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _next_vl_batch(self) -> dict[str, torch.Tensor] | None:
        if self._vl_batches is None:
            return None
        batch = next(self._vl_batches)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def _check_vl_only(cfg: Any, vla_cfg: Any) -> None:
    """Vision-language-only training has no actions: nothing may ask for action targets."""
    asked = [what for what, on in (("scene_probe.weight > 0", cfg.scene_probe.weight > 0),
                                   ("latent-action targets", vla_cfg.latent_active),
                                   ("discrete action targets", bool(vla_cfg.discrete_actions))) if on]
    if asked:
        raise ValueError(f"cotrain.ratio=1 trains on vision-language samples only, but the config asks for {', '.join(asked)}")
