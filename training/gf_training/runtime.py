"""The processes, devices and random streams of a training run (``gf_training.train``).

One process per device, joined into a process group from the launcher's environment (RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT); the model is wrapped for DDP or FSDP2.
Each rank's random streams derive from the run's seed (``stream_seed``) and are saved with every
checkpoint (``rng_state``), so a resumed run continues exactly.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gf_training.config import DistributedSection, TrainConfig


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


def resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(want)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
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


def wrap_model(model: nn.Module, info: DistInfo, dcfg: DistributedSection, device: torch.device) -> nn.Module:
    """``model`` as this process trains it: itself (one process), in DDP, or sharded by FSDP2."""
    if not info.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    if dcfg.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=device_ids, find_unused_parameters=dcfg.find_unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    # FSDP2 (per-parameter sharding: frozen and trainable parameters may mix, as LoRA and the
    # frozen-VLM schemes need). Only modules whose forward() runs can be FSDP units: SigLIP
    # layers shard individually; the joint Gemma layers are driven piecewise by
    # PI0StyleVLA._layer (gf_policy.vla.joint), so they live in the root unit (gathered once per forward).
    mesh = init_device_mesh(device.type, (info.world_size,))
    for module in model.modules():
        if isinstance(module, SiglipEncoderLayer):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
