"""What ``gf-bench`` times on this CPU: the fp32 matmul reference, ``Trainer.train_step`` and
``VLABackend.act`` / ``sample_actions`` on the tiny config.

Separate from the FLOP model (``bench_flops``): these run real code and take seconds; the
commands in ``gf_training.bench`` put the two side by side.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gf_training.bench_flops import train_step_flops


def matmul_flops_per_s(size: int = 1024, seconds: float = 1.0) -> float:
    """This CPU's fp32 matmul throughput (the reference each figure is compared with)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - started)


def measure_train(steps: int, batch: int, threads: int) -> dict[str, Any]:
    """Steps/s of ``Trainer.train_step`` on the tiny config with generated data."""
    from gf_training.config import load_config
    from gf_training.train import Trainer

    with tempfile.TemporaryDirectory(prefix="gf-bench-train-") as tmp:
        cfg = load_config("tiny", [f"output_dir={tmp}", f"train.batch_size={batch}", f"train.micro_batch_size={batch}",
                                   f"train.num_threads={threads}", "logging.progress=false", "logging.tensorboard=false",
                                   f"train.steps={steps + 3}", "data.synthetic={num_episodes: 8, length: 16, seed: 0}"])
        trainer = Trainer(cfg).setup()
        for _ in range(3):  # warm-up (allocator, first-call paths)
            trainer.train_step()
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - started)
        vcfg = trainer.vla_config
    median = statistics.median(times)
    return {"config": vcfg, "batch": batch, "steps": steps, "step_s_median": median, "steps_per_s": 1.0 / median,
            "flops_per_step": train_step_flops(vcfg, batch)}


def _tiny_checkpoint(directory: Path) -> Path:
    import numpy as np

    from gf_policy.vla import (
        NormStats,
        PI0StyleVLA,
        VLAConfig,
        VLAProcessor,
        train_tiny_tokenizer,
    )
    from gf_training.data import SYNTHETIC_TARGETS

    cfg = VLAConfig.tiny()
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(cfg)
    rng = np.random.default_rng(0)
    model.norm_stats = {"proprio": NormStats.from_data(rng.normal(size=(100, 7))),
                        "actions": NormStats.from_data(rng.uniform(-1, 1, (100, 7)))}
    texts = [f"Pick the cube and place it on {t}" for t in SYNTHETIC_TARGETS]
    model.save_pretrained(directory, processor=VLAProcessor(train_tiny_tokenizer(texts, 200, directory / "tok"), cfg))
    return directory


def measure_infer(repeats: int, threads: int, image_hw: tuple[int, int] = (480, 640)) -> dict[str, Any]:
    """Latency of ``VLABackend.act`` (batch 1) on a tiny checkpoint, with and without the KV cache."""
    import numpy as np

    from gf_eval.trials import make_trial
    from gf_policy.backend import PolicyObservation
    from gf_policy.backends.vla import VLABackend

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="gf-bench-infer-") as tmp:
        backend = VLABackend(str(_tiny_checkpoint(Path(tmp))))
    trial = make_trial("Val", 0)
    backend.reset(trial)
    image = np.random.default_rng(0).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    obs = PolicyObservation(trial=trial, step=0, proprio=np.zeros(7, np.float32), image=image)
    model = backend.policy.model
    inputs = backend.policy.processor(image, trial.instruction)
    proprio = torch.zeros(1, 7)

    def timed(fn: Any) -> list[float]:
        for _ in range(3):
            fn()
        out = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
        return out

    act = timed(lambda: backend.act(obs))
    cached = timed(lambda: model.sample_actions(**inputs, proprio=proprio, use_cache=True))
    uncached = timed(lambda: model.sample_actions(**inputs, proprio=proprio, use_cache=False))
    return {"config": model.config, "image": image_hw, "act_ms": [1000 * t for t in act],
            "sample_cached_ms": statistics.median(cached) * 1000, "sample_uncached_ms": statistics.median(uncached) * 1000}
