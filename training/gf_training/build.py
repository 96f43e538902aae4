"""What a training run is built from (``gf_training.train``): the initial model, the episodes,
their normalisation statistics and latent-action labels, and the tokenizer/processor.

Statistics, labels and tokenizer are computed once per run by rank 0 and kept in the run
directory, so every rank and every resumed session reads the same ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from gf_policy.vla import NormStats, PI0StyleVLA, VLAConfig, VLAProcessor, train_tiny_tokenizer
from gf_policy.vla.configuration import make_paligemma_dict
from gf_policy.vla.local_files import local_dir
from gf_policy.vla.normalization import load_norm_stats, save_norm_stats
from gf_training.config import TrainConfig
from gf_training.data import compute_norm_stats, synthetic_episodes
from gf_training.episodes import DecodedEpisode, load_demo_episodes
from gf_training.runtime import DistInfo


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


def check_vlm_sizes(named: dict[str, Any], pg: Any, source: str) -> None:
    """A config that starts from a trained VLM (a PaliGemma directory or one of our checkpoints)
    may still name the VLM's sizes in compact form (the mini rows share one file with their
    from-scratch control): they must be the ones of ``pg`` (its ``PaliGemmaConfig``, read from
    ``source``), or the comparison would quietly be between two architectures."""
    if not isinstance(named, dict) or not {"text", "vision"} <= set(named):
        raise ValueError(f"model.init takes the VLM from {source}; model.config.vlm may only name its sizes in "
                         "compact form (text, vision, image_token_id)")
    found = {"text": pg.text_config.to_dict(), "vision": pg.vision_config.to_dict(), "image_token_id": pg.image_token_id}
    wrong = [f"{part}.{key}={value} (the model there has {found[part].get(key)})"
             for part in ("text", "vision") for key, value in named[part].items() if found[part].get(key) != value]
    if "image_token_id" in named and named["image_token_id"] != found["image_token_id"]:
        wrong.append(f"image_token_id={named['image_token_id']} (the model there has {found['image_token_id']})")
    if wrong:
        raise ValueError(f"model.config.vlm disagrees with {source}: " + ", ".join(wrong))


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
    overrides = dict(m.config)
    named = overrides.pop("vlm", None)
    if m.init == "paligemma":
        if named is not None:
            from transformers import PaliGemmaConfig

            pg = PaliGemmaConfig.from_pretrained(str(local_dir(m.path, "PaliGemma model")))
            check_vlm_sizes(named, pg, f"the PaliGemma directory {m.path}")
        return PI0StyleVLA.from_paligemma(m.path, cfg_overrides=overrides)
    if m.init == "pi0":
        return PI0StyleVLA.import_pi0(m.path, **m.config)
    model = PI0StyleVLA.from_pretrained(m.path)
    if named is not None:
        check_vlm_sizes(named, model.config.paligemma_config(), f"the checkpoint {m.path}")
    if overrides:  # only fields that do not change parameter shapes may differ from the checkpoint's
        model.config = model.config.replace(**overrides)
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


def run_norm_stats(cfg: TrainConfig, run_dir: Path, episodes: list[DecodedEpisode], info: DistInfo,
                   initial: dict[str, NormStats] | None) -> dict[str, NormStats]:
    """Computed once per run (or the initial model's, ``data.normalization: checkpoint``) and
    kept in the run directory (a resumed run reuses them)."""
    path = run_dir / "norm_stats.json"
    if info.is_main and not path.exists():
        kind = cfg.data.normalization
        if kind == "checkpoint" and not initial:
            raise ValueError("data.normalization=checkpoint: the initial model carries no statistics")
        save_norm_stats(initial if kind == "checkpoint" else compute_norm_stats(episodes, kind), path)
    info.barrier()  # unconditional: every rank must take part in the same barriers
    return load_norm_stats(path)


def latent_labels(cfg: TrainConfig, run_dir: Path, model: PI0StyleVLA, episodes: list[DecodedEpisode],
                  info: DistInfo) -> list[np.ndarray]:
    """Latent-action codes of every episode step, from ``latent.lam`` (computed once per run
    and kept in ``run_dir/latent_codes.npz``); in expert mode the model gets the codebook."""
    from gf_training.latent import LatentActionModel, label_episodes, pairs_for

    vcfg = model.config
    if not cfg.latent.lam:
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
    path = run_dir / "latent_codes.npz"
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
