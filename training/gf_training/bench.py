"""VLA training and inference speed: the tiny config measured on this CPU next to the real-size model's FLOPs.

``gf-bench train``: optimiser steps/s of the real training loop (``Trainer.train_step``: data,
collation, forward, backward, AdamW) for the tiny config; ``gf-bench infer``: latency of one
``VLABackend.act`` (preprocessing, prefix KV cache, N Euler steps) for the tiny config, and the
same with the cache off. Both print the analytic FLOPs of the real-size model (PaliGemma-3B +
Gemma-300M-shaped expert, pi0's sizes) per training step and per inference, cross-checked by
torch's FLOP counter on a meta-device copy of that model (no memory, no compute), and compare
them with a reference measured in the same run: this CPU's fp32 matmul throughput. Estimates
for GPUs assume a stated model-FLOPs utilisation.

The parts: ``bench_flops`` (the analytic FLOP model, what it counts, and its cross-check) and
``bench_measure`` (the timings); this module holds the two commands and re-exports the others'
names, so ``gf_training.bench`` still reaches everything.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch

from gf_training.bench_flops import (
    TRAIN_BACKWARD_FACTOR,
    FlopBreakdown,
    count_parameters,
    counted_forward_flops,
    forward_flops,
    inference_flops,
    train_step_flops,
    vision_flops,
)
from gf_training.bench_measure import matmul_flops_per_s, measure_infer, measure_train

__all__ = [
    "ASSUMED_MFU", "GPU_PEAKS", "TRAIN_BACKWARD_FACTOR", "FlopBreakdown", "count_parameters", "counted_forward_flops",
    "forward_flops", "inference_flops", "infer_main", "matmul_flops_per_s", "measure_infer", "measure_train",
    "train_main", "train_step_flops", "vision_flops",
]

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
GPU_PEAKS = {"A100": 312e12, "H100": 989e12}
ASSUMED_MFU = 0.4


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
