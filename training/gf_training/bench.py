"""VLA training and inference speed: the tiny config measured on this CPU next to the real-size model's FLOPs.

``gf-bench train``: optimiser steps/s of the real training loop (``Trainer.train_step``: data,
collation, forward, backward, AdamW) for the tiny config; ``gf-bench infer``: latency of one
``VLABackend.act`` (preprocessing, prefix KV cache, N Euler steps) for the tiny config, and the
same with the cache off. Both print the analytic FLOPs of the real-size model (PaliGemma-3B +
Gemma-300M-shaped expert, pi0's sizes) per training step and per inference, cross-checked by
torch's FLOP counter on a meta-device copy of that model (no memory, no compute), and compare
them with a reference measured in the same run: this CPU's fp32 matmul throughput. Estimates
for GPUs assume a stated model-FLOPs utilisation.

FLOPs count matrix multiplications (2 per multiply-add), as torch's FLOP counter does:
projections, MLPs, attention scores and values (dense: the block mask is applied to a full
score matrix), patch embedding, the SigLIP->Gemma projector and the action head. Norms,
activations, RoPE and softmax are left out (a few percent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
GPU_PEAKS = {"A100": 312e12, "H100": 989e12}
ASSUMED_MFU = 0.4
TRAIN_BACKWARD_FACTOR = 2.0  # backward ~ 2x forward for matmuls (input and weight gradients)


# ---------------------------------------------------------------------------------------------
# analytic FLOPs
# ---------------------------------------------------------------------------------------------


@dataclass
class FlopBreakdown:
    """Matmul FLOPs of one sample, by part."""

    vision: float  # SigLIP incl. patch embedding, and the projector into the VLM width
    prefix: float  # VLM layers over the image+text prefix (projections + MLPs)
    suffix: float  # expert layers over proprio+action tokens, and the action/proprio/time heads
    attention: float  # scores and weighted values, all layers

    @property
    def total(self) -> float:
        return self.vision + self.prefix + self.suffix + self.attention


def _text_dims(cfg: Any) -> tuple[int, int, int, int, int, int]:
    t = cfg.text_config
    heads, kv = int(t["num_attention_heads"]), int(t["num_key_value_heads"])
    head_dim = int(t.get("head_dim") or t["hidden_size"] // heads)
    return int(t["hidden_size"]), int(t["intermediate_size"]), int(t["num_hidden_layers"]), heads, kv, head_dim


def _layer_proj_flops(tokens: int, width: int, mlp: int, heads: int, kv: int, head_dim: int,
                      with_out: bool = True) -> float:
    qkv = 2 * tokens * width * (heads + 2 * kv) * head_dim
    out = 2 * tokens * heads * head_dim * width + 3 * 2 * tokens * width * mlp if with_out else 0
    return float(qkv + out)


def vision_flops(cfg: Any) -> float:
    """SigLIP tower + projector for one sample (all its camera images)."""
    v = cfg.vision_config
    d, f, layers, patch = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["num_hidden_layers"]), int(v["patch_size"])
    p = cfg.tokens_per_image
    per_layer = 4 * 2 * p * d * d + 2 * 2 * p * d * f + 2 * 2 * p * p * d
    embed = 2 * p * 3 * patch * patch * d
    projector = 2 * p * d * int(cfg.text_config["hidden_size"])
    return float(cfg.num_images * (layers * per_layer + embed + projector))


def _suffix_heads_flops(cfg: Any) -> float:
    w, h = cfg.expert_hidden_size, cfg.action_horizon
    a, s = cfg.model_action_dim, cfg.model_proprio_dim
    return float(2 * s * w + 2 * h * a * w + 2 * h * 2 * w * w + 2 * h * w * w + 2 * h * w * a)


def forward_flops(cfg: Any) -> FlopBreakdown:
    """One training forward (``compute_loss``) for one sample: the full joint pass, no cache."""
    width, mlp, layers, heads, kv, hd = _text_dims(cfg)
    lp, ls = cfg.prefix_length, 1 + cfg.action_horizon
    # the last layer skips the prefix's output projection and MLP (nothing reads them)
    prefix = (layers - 1) * _layer_proj_flops(lp, width, mlp, heads, kv, hd) + _layer_proj_flops(
        lp, width, mlp, heads, kv, hd, with_out=False)
    suffix = layers * _layer_proj_flops(ls, cfg.expert_hidden_size, cfg.expert_intermediate_size, heads, kv, hd)
    attention = layers * 2 * 2 * (lp + ls) ** 2 * heads * hd
    return FlopBreakdown(vision_flops(cfg), prefix, suffix + _suffix_heads_flops(cfg), float(attention))


def inference_flops(cfg: Any, num_steps: int | None = None, use_cache: bool = True) -> FlopBreakdown:
    """One ``sample_actions`` call for one sample: prefix once (KV cache) + N suffix passes;
    without the cache every step is a full joint pass."""
    steps = num_steps or cfg.num_inference_steps
    if not use_cache:
        f = forward_flops(cfg)
        return FlopBreakdown(f.vision, steps * f.prefix, steps * f.suffix, steps * f.attention)
    width, mlp, layers, heads, kv, hd = _text_dims(cfg)
    lp, ls = cfg.prefix_length, 1 + cfg.action_horizon
    prefix = (layers - 1) * _layer_proj_flops(lp, width, mlp, heads, kv, hd) + _layer_proj_flops(
        lp, width, mlp, heads, kv, hd, with_out=False)
    suffix = steps * (layers * _layer_proj_flops(ls, cfg.expert_hidden_size, cfg.expert_intermediate_size,
                                                 heads, kv, hd) + _suffix_heads_flops(cfg))
    attention = layers * (2 * 2 * lp * lp * heads * hd + steps * 2 * 2 * ls * (lp + ls) * heads * hd)
    return FlopBreakdown(vision_flops(cfg), prefix, suffix, float(attention))


def train_step_flops(cfg: Any, batch_size: int) -> float:
    """FLOPs of one full-fine-tuning optimiser step (forward + backward ~ 3x forward)."""
    return (1 + TRAIN_BACKWARD_FACTOR) * forward_flops(cfg).total * batch_size


def count_parameters(cfg: Any) -> dict[str, int]:
    """Parameter counts of the model ``cfg`` describes, from a meta-device instance (no memory)."""
    from gf_policy.vla import PI0StyleVLA

    with torch.device("meta"):
        model = PI0StyleVLA(cfg)
    vlm = model.vlm
    return {
        "vision": sum(p.numel() for p in vlm.model.vision_tower.parameters())
        + sum(p.numel() for p in vlm.model.multi_modal_projector.parameters()),
        "language": sum(p.numel() for p in vlm.model.language_model.parameters()),
        "expert": sum(p.numel() for p in model.expert.parameters()),
        "total": sum(p.numel() for p in model.parameters()),
    }


def counted_forward_flops(cfg: Any) -> float:
    """torch's FLOP counter over the training forward of one sample on a meta-device model.

    Runs the vision tower and ``predict_velocity`` (what ``compute_loss`` runs, minus its
    data-dependent checks, which a meta tensor cannot answer).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from gf_policy.vla import PI0StyleVLA

    width = int(cfg.text_config["hidden_size"])
    with torch.device("meta"):
        model = PI0StyleVLA(cfg)
        pixels = torch.zeros(cfg.num_images, 3, cfg.image_size, cfg.image_size)
        prefix = torch.zeros(1, cfg.prefix_length, width)
        pad = torch.ones(1, cfg.prefix_length, dtype=torch.bool)
        proprio = torch.zeros(1, cfg.model_proprio_dim)
        noisy = torch.zeros(1, cfg.action_horizon, cfg.model_action_dim)
        time_ = torch.zeros(1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.vlm.model.get_image_features(pixels)
        model.predict_velocity(prefix, pad, proprio, noisy, time_)
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


def matmul_flops_per_s(size: int = 1024, seconds: float = 1.0) -> float:
    """This CPU's fp32 matmul throughput (the reference each figure is compared with)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - started)


def _fmt(flops: float) -> str:
    for unit, scale in (("ZFLOP", 1e21), ("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60), ("s", 1), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e6:.3g} us"


def _real_config(action_horizon: int) -> Any:
    from gf_policy.vla import VLAConfig

    return VLAConfig(action_horizon=action_horizon, execution_horizon=min(4, action_horizon))


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


def _pcts(values: list[float]) -> tuple[float, float]:
    s = sorted(values)
    return statistics.median(s), s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()),
                        help="torch CPU threads (default: torch's, = the cores)")
    parser.add_argument("--real-horizon", type=int, default=50, help="action horizon of the real-size model (pi0: 50)")
    parser.add_argument("--no-counter", action="store_true", help="skip the meta-device FLOP-counter cross-check")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _real_rows(real: Any, counted: float | None) -> list[str]:
    params = count_parameters(real)
    f = forward_flops(real)
    rows = [
        (f"real-size model: PaliGemma-3B + expert {real.expert_hidden_size}w, {params['total'] / 1e9:.2f} B params "
         f"(vision {params['vision'] / 1e6:.0f} M, language {params['language'] / 1e9:.2f} B, expert "
         f"{params['expert'] / 1e6:.0f} M); prefix {real.prefix_length} tokens, action horizon {real.action_horizon}"),
        (f"  forward / sample  {_fmt(f.total):>12}  (vision {_fmt(f.vision)}, VLM prefix {_fmt(f.prefix)}, "
         f"expert {_fmt(f.suffix)}, attention {_fmt(f.attention)})"),
    ]
    if counted is not None:
        rows.append(f"  torch FLOP counter on the meta-device model: {_fmt(counted)} "
                    f"({100 * (f.total / counted - 1):+.2f} % analytic vs counted)")
    return rows


def train_main(argv: list[str] | None = None) -> int:
    """``gf-bench train``."""
    parser = argparse.ArgumentParser(prog="gf-bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps (default 30)")
    parser.add_argument("--batch", type=int, default=8, help="tiny-config batch size (default 8)")
    parser.add_argument("--real-batch", type=int, default=1024, help="real-size global batch (default 1024)")
    parser.add_argument("--real-steps", type=int, default=30_000, help="real-size run length (default 30k)")
    _common_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = matmul_flops_per_s()
    m = measure_train(args.steps, args.batch, args.threads)
    real = _real_config(args.real_horizon)
    counted = None if args.no_counter else counted_forward_flops(real)
    real_step = train_step_flops(real, args.real_batch)
    tiny_rate = m["flops_per_step"] * m["steps_per_s"]
    out = {
        "cpu_matmul_flops_per_s": cpu, "threads": args.threads,
        "tiny": {"batch": m["batch"], "steps_per_s": m["steps_per_s"], "flops_per_step": m["flops_per_step"],
                 "achieved_flops_per_s": tiny_rate, "cpu_utilisation": tiny_rate / cpu},
        "real": {"params": count_parameters(real)["total"], "forward_flops_per_sample": forward_flops(real).total,
                 "counted_forward_flops_per_sample": counted, "batch": args.real_batch,
                 "flops_per_step": real_step, "flops_per_run": real_step * args.real_steps,
                 "step_s_this_cpu": real_step / cpu,
                 **{f"step_s_{g}_{int(ASSUMED_MFU * 100)}mfu": real_step / (peak * ASSUMED_MFU) for g, peak in GPU_PEAKS.items()}},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"gf-bench train  ({args.threads} thread(s); reference: this CPU's fp32 matmul = {_fmt(cpu)}/s)")
    print(f"tiny config ({count_parameters(m['config'])['total']:,} params), "
          f"batch {m['batch']}: {m['steps_per_s']:.1f} steps/s ({1000 * m['step_s_median']:.1f} ms/step, "
          f"{m['steps_per_s'] * m['batch']:.0f} samples/s)")
    print(f"  {_fmt(m['flops_per_step'])}/step -> {_fmt(tiny_rate)}/s achieved = {100 * tiny_rate / cpu:.1f} % of the "
          "matmul reference (tiny matrices: overhead-bound)")
    for row in _real_rows(real, counted):
        print(row)
    print(f"  training step at batch {args.real_batch} (forward + backward ~ 3x forward): {_fmt(real_step)}; "
          f"{args.real_steps:,} steps: {_fmt(real_step * args.real_steps)}")
    print(f"  = {real_step / m['flops_per_step']:.3g}x the tiny step's FLOPs")
    print(f"  one step on this CPU at the matmul reference rate: {_fmt_time(real_step / cpu)}; "
          f"the run: {_fmt_time(real_step * args.real_steps / cpu)}")
    for gpu, peak in GPU_PEAKS.items():
        t = real_step / (peak * ASSUMED_MFU)
        print(f"  on one {gpu} at {int(ASSUMED_MFU * 100)} % MFU (bf16): {_fmt_time(t)}/step, run {_fmt_time(t * args.real_steps)}"
              f"; on 8: {_fmt_time(t * args.real_steps / 8)}")
    return 0


def infer_main(argv: list[str] | None = None) -> int:
    """``gf-bench infer``."""
    parser = argparse.ArgumentParser(prog="gf-bench infer", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls (default 30)")
    _common_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = matmul_flops_per_s()
    m = measure_infer(args.repeats, args.threads)
    tiny = m["config"]
    real = _real_config(args.real_horizon)
    counted = None if args.no_counter else counted_forward_flops(real)
    p50, p90 = _pcts(m["act_ms"])
    t_cached, t_uncached = inference_flops(tiny).total, inference_flops(tiny, use_cache=False).total
    r_cached, r_uncached = inference_flops(real).total, inference_flops(real, use_cache=False).total
    out = {
        "cpu_matmul_flops_per_s": cpu, "threads": args.threads,
        "tiny": {"act_ms_p50": p50, "act_ms_p90": p90, "sample_cached_ms": m["sample_cached_ms"],
                 "sample_uncached_ms": m["sample_uncached_ms"], "flops_cached": t_cached, "flops_uncached": t_uncached},
        "real": {"flops_cached": r_cached, "flops_uncached": r_uncached, "counted_forward_flops_per_sample": counted,
                 "latency_s_this_cpu": r_cached / cpu,
                 **{f"latency_s_{g}_{int(ASSUMED_MFU * 100)}mfu": r_cached / (peak * ASSUMED_MFU) for g, peak in GPU_PEAKS.items()}},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    steps = tiny.num_inference_steps
    print(f"gf-bench infer  ({args.threads} thread(s); reference: this CPU's fp32 matmul = {_fmt(cpu)}/s)")
    print(f"tiny config, batch 1, {m['image'][1]}x{m['image'][0]} camera image, {steps} Euler steps, horizon "
          f"{tiny.action_horizon}:")
    print(f"  VLABackend.act: p50 {p50:.1f} ms, p90 {p90:.1f} ms  ({1000 / p50:.0f} decisions/s; the sim runs 20 Hz)")
    print(f"  sample_actions with prefix KV cache {m['sample_cached_ms']:.1f} ms, without {m['sample_uncached_ms']:.1f} ms "
          f"(measured x{m['sample_uncached_ms'] / m['sample_cached_ms']:.2f}; FLOPs {_fmt(t_cached)} vs "
          f"{_fmt(t_uncached)}, x{t_uncached / t_cached:.2f})")
    for row in _real_rows(real, counted):
        print(row)
    print(f"  one inference ({real.num_inference_steps} steps, horizon {real.action_horizon}): {_fmt(r_cached)} with the "
          f"KV cache, {_fmt(r_uncached)} without (x{r_uncached / r_cached:.2f}); = {r_cached / t_cached:.3g}x the tiny one")
    print(f"  latency on this CPU at the matmul reference rate: {_fmt_time(r_cached / cpu)}")
    for gpu, peak in GPU_PEAKS.items():
        t = r_cached / (peak * ASSUMED_MFU)
        print(f"  on one {gpu} at {int(ASSUMED_MFU * 100)} % MFU (bf16): {_fmt_time(t)} "
              f"({'within' if t < 0.05 else 'over'} the 50 ms control period)")
    return 0
