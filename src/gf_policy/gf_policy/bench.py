"""gf-bench serve: gf-policy-server with dynamic batching vs. the same server with batching off.

Subject: the server with ``max_batch`` = number of clients; reference: the same server, same
model, ``max_batch 1`` (one inference at a time). Clients: ``--clients`` threads, each a ``remote``
backend sending one observation at a time and waiting for its answer (as sim workers do), over
loopback. Model: a tiny-config VLA with random weights (CPU). Figures: inferences per second
(all clients) and client-side latency p50/p99. Subject and reference alternate for several rounds
and the figures are medians: this host's speed drifts within minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def _observations(count: int, image_hw: tuple[int, int]) -> list[Any]:
    from gf_eval.trials import make_trial
    from gf_policy.backend import PolicyObservation

    rng = np.random.default_rng(0)
    return [PolicyObservation(trial=make_trial("Val", i), step=i, proprio=rng.normal(0, 0.2, 7).astype(np.float32),
                              image=rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)) for i in range(count)]


def measure_server(policy: Any, max_batch: int, max_wait_ms: float, clients: int, requests: int,
                   observations: list[Any]) -> dict[str, float]:
    """Inferences/s and client-side latency percentiles (ms) of one server configuration."""
    from gf_policy.backends.remote import RemoteBackend
    from gf_policy.server import BatchingConfig, PolicyServer, ServerThread

    batching = BatchingConfig(max_batch=max_batch, max_wait_ms=max_wait_ms)
    with ServerThread(PolicyServer(policy, "127.0.0.1", 0, batching=batching)) as thread:
        backends = [RemoteBackend(thread.server.url, timeout_s=120) for _ in range(clients)]
        for b in backends:  # warm-up: connections open, first-call allocations done
            b.act(observations[0])

        def client(index: int) -> list[float]:
            latencies = []
            for k in range(requests):
                obs = observations[(index * requests + k) % len(observations)]
                t0 = time.perf_counter()
                backends[index].act(obs)
                latencies.append(1000 * (time.perf_counter() - t0))
            return latencies

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = [lat for per in pool.map(client, range(clients)) for lat in per]
        elapsed = time.perf_counter() - start
        mean_batch = thread.server.metrics_snapshot()["mean_batch_size"]
        for b in backends:
            b.close()
    return {"inferences_per_s": clients * requests / elapsed, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "mean_batch": float(mean_batch)}


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=40, help="requests per client per round (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of subject and reference (default 3)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the batching server's max_wait_ms (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of the table")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from gf_eval.trials import make_trial
    from gf_policy.vla import VLAInference
    from gf_policy.vla.testing import save_tiny_checkpoint

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_tiny_checkpoint(Path(tmp), [make_trial("Val", i).instruction for i in range(20)])
        policy = VLAInference.from_pretrained(ckpt)
    size = policy.model.config.image_size
    observations = _observations(64, (size, size))
    runs: dict[str, list[dict[str, float]]] = {"batching": [], "off": []}
    for _ in range(args.rounds):
        runs["batching"].append(measure_server(policy, args.clients, args.max_wait_ms, args.clients, args.requests, observations))
        runs["off"].append(measure_server(policy, 1, 0.0, args.clients, args.requests, observations))

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def span(name: str, key: str) -> str:
        values = [r[key] for r in runs[name]]
        return f"{min(values):.1f}-{max(values):.1f}"

    speedup = med("batching", "inferences_per_s") / med("off", "inferences_per_s")
    if args.json:
        print(json.dumps({
            "clients": args.clients, "requests": args.requests, "rounds": args.rounds, "threads": args.threads,
            "batching": {k: med("batching", k) for k in runs["batching"][0]},
            "reference_batching_off": {k: med("off", k) for k in runs["off"][0]},
            "speedup": speedup, "target": {"speedup": 2.0, "met": speedup >= 2.0}, "runs": runs,
        }))
        return 0
    print(f"gf-bench serve: tiny VLA ({sum(p.numel() for p in policy.model.parameters()):,} params, {size} px), "
          f"{args.clients} clients x {args.requests} requests, {args.rounds} rounds, torch threads {args.threads}, "
          f"CPU ({os.cpu_count()} cores)")
    for name, label in (("batching", f"batching (max_batch {args.clients}, max_wait {args.max_wait_ms:g} ms)"),
                        ("off", "batching off (max_batch 1)   [reference]")):
        print(f"  {label:48s} {med(name, 'inferences_per_s'):7.1f} inferences/s (range {span(name, 'inferences_per_s')}), "
              f"latency p50 {med(name, 'p50_ms'):.1f} ms, p99 {med(name, 'p99_ms'):.1f} ms, "
              f"mean batch {med(name, 'mean_batch'):.2f}")
    print(f"  speed-up: {speedup:.2f}x inferences/s "
          f"(medians; the issue asks >= 2x)")
    return 0
