"""`gf-openloop CHECKPOINT ... --demos DIR`: does a policy's motion follow the scene? An open-loop check.

For each demo episode and each asked step ``t``, the checkpoint predicts one chunk from the demo's
own observation at ``t`` (camera frame, proprio, instruction; through ``VLAInference``, the path the
``vla`` backend takes) and the first ``--horizon`` predicted translations are summed per axis; so
are the demo's own actions from ``t``. Reported per step and axis: the correlation between predicted
and demonstrated motion, and each one's standard deviation over the episodes. A policy that reads
where the cube is from the image has a correlation near 1 at ``t = 0``, where only the image tells
the episodes apart; a policy that moves to the average position has a correlation near 0 and a
predicted spread far below the demos'. Without a simulator or ROS, in about a second per prediction
on a CPU, so it can run on a checkpoint while its training goes on.

The sampling noise is the same for every prediction (``--seed``): differences between episodes
come from the observations alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

AXES = ("x", "y", "z")


@dataclass
class AxisAgreement:
    """Predicted vs. demonstrated motion along one axis over the episodes at one step."""

    step: int
    axis: str
    episodes: int
    correlation: float  # NaN when either side does not vary
    predicted_std: float
    demo_std: float


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def agreement(predicted: np.ndarray, demo: np.ndarray, step: int) -> list[AxisAgreement]:
    """``predicted`` / ``demo`` (episodes, 3) summed translations -> one row per axis."""
    return [AxisAgreement(step, axis, int(predicted.shape[0]), correlation(predicted[:, i], demo[:, i]),
                          float(predicted[:, i].std()), float(demo[:, i].std()))
            for i, axis in enumerate(AXES)]


def check(policy, episodes: Sequence, steps: Sequence[int], horizon: int, seed: int = 0) -> list[AxisAgreement]:
    """``policy``: anything with ``predict(image, instruction, proprio, seed=...)`` returning
    (H, action_dim) actions; ``episodes``: decoded episodes (images, proprio, actions, instruction).
    Episodes shorter than ``t + horizon`` are left out of step ``t``."""
    rows = []
    for t in steps:
        predicted, demo = [], []
        for ep in episodes:
            if len(ep.actions) < t + horizon:
                continue
            chunk = policy.predict(ep.images[t], ep.instruction, ep.proprio[t], seed=seed)
            if chunk.shape[0] < horizon:
                raise ValueError(f"the policy predicts {chunk.shape[0]} steps, fewer than --horizon {horizon}")
            predicted.append(chunk[:horizon, :3].sum(axis=0))
            demo.append(np.asarray(ep.actions[t:t + horizon, :3]).sum(axis=0))
        if len(predicted) < 2:
            raise ValueError(f"step {t}: fewer than 2 episodes are at least {t + horizon} steps long")
        rows += agreement(np.stack(predicted), np.stack(demo), t)
    return rows


def format_table(checkpoint: str, rows: Sequence[AxisAgreement]) -> str:
    lines = [f"{checkpoint}", f"{'step':>5} {'axis':>4} {'episodes':>8} {'corr':>6} {'std pred':>9} {'std demo':>9}"]
    for r in rows:
        lines.append(f"{r.step:>5} {r.axis:>4} {r.episodes:>8} {r.correlation:>6.2f} {r.predicted_std:>9.4f} "
                     f"{r.demo_std:>9.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-openloop``."""
    parser = argparse.ArgumentParser(prog="gf-openloop", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint directories (gf-train's step_NNNNNN)")
    parser.add_argument("--demos", type=Path, action="append", required=True,
                        help="demo directory (manifest + bags; repeatable)")
    parser.add_argument("--episodes", type=int, default=60, help="first N usable episodes (default 60)")
    parser.add_argument("--steps", default="0,5,10", help="comma-separated episode steps (default 0,5,10)")
    parser.add_argument("--horizon", type=int, default=10, help="actions summed per prediction (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="sampling noise seed, the same for every prediction")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    if not steps or min(steps) < 0 or args.horizon < 1 or args.episodes < 2:
        parser.error("need steps >= 0, --horizon >= 1 and --episodes >= 2")

    import torch

    from gf_policy.vla.inference import VLAInference
    from gf_training.episodes import load_demo_episodes

    torch.set_num_threads(args.threads)
    # Full camera frames: the checkpoint's own processor crops and resizes them, as in the backend.
    episodes, _ = load_demo_episodes(args.demos, None, progress=True, max_episodes=args.episodes)
    results = {}
    for ckpt in args.checkpoints:
        try:
            rows = check(VLAInference.from_pretrained(ckpt), episodes, steps, args.horizon, args.seed)
        except (FileNotFoundError, ValueError) as exc:
            print(f"gf-openloop: {ckpt}: {exc}", file=sys.stderr)
            return 2
        results[str(ckpt)] = rows
        if not args.json:
            print(format_table(str(ckpt), rows), flush=True)
    if args.json:
        print(json.dumps({k: [asdict(r) for r in v] for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
