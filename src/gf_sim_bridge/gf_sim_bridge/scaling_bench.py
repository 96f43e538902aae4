"""gf-bench sim-scaling: what two simulator processes gain over one on this machine, no ROS, no Ray.

The scripted expert plays the same Val trials the oracle graph plays (physics only, no camera),
once in one process and once split over two processes that start together; the figure is trials/s
of the pair over the single process. A lock-step evaluation graph cannot scale better than its
simulator does, so this is the ceiling for ``gf-bench shards`` (2 shards vs. 1) on this machine.
The reference in the same run is a pure-Python loop in one process vs. two: the machine's own
scaling for work that touches no memory to speak of.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

SPIN_ITERATIONS = 10_000_000  # per unit of work


def _spin(barrier, results, _first: int, count: int) -> None:
    barrier.wait()
    start, x = time.perf_counter(), 0
    for i in range(count * SPIN_ITERATIONS):
        x += i * i
    results.put(time.perf_counter() - start)


def _expert_trials(barrier, results, first: int, count: int) -> None:
    """Val trials ``first`` .. ``first + count - 1`` by the scripted expert; puts the seconds they took
    (environment start-up excluded: both sides of the comparison pay it once per process)."""
    import gymnasium as gym

    import gf_sim_bridge.env  # noqa: F401 - registers GrinningFace-v1
    from gf_bringup.constants import EPISODE_STEPS
    from gf_eval.trials import make_trial
    from gf_sim_bridge.expert import ScriptedExpert
    from gf_sim_bridge.session import limit_torch_threads

    limit_torch_threads()
    env = gym.make("GrinningFace-v1", obs_mode="none")
    task, expert = env.unwrapped, ScriptedExpert()
    barrier.wait()
    start = time.perf_counter()
    for index in range(first, first + count):
        trial = make_trial("Val", index)
        env.reset(seed=trial.seed, options={"trial": trial})
        expert.reset(seed=trial.seed)
        for _ in range(EPISODE_STEPS):
            _, _, _, _, info = env.step(expert.act(task.privileged_state()))
            if bool(info["success"][0]):
                break
    results.put(time.perf_counter() - start)
    env.close()


def _rate(work, processes: int, units: int) -> float:
    """Units per second of ``work`` split over ``processes`` processes started together."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    share = units // processes
    procs = [ctx.Process(target=work, args=(barrier, results, i * share, share)) for i in range(processes)]
    for p in procs:
        p.start()
    seconds = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return share * processes / max(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-bench sim-scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="Val trials per measurement (default 40, even)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of 2 processes and 1 (default 3)")
    args = parser.parse_args(argv)
    trials = args.trials + args.trials % 2
    rows = {"expert trials": (_expert_trials, trials), "pure-Python loop [reference]": (_spin, 2)}
    gains: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (work, units) in rows.items():
            gains[name].append(_rate(work, 2, units) / _rate(work, 1, units))
    print(f"gf-bench sim-scaling: 2 processes vs. 1, {trials} Val trials (scripted expert, physics only), "
          f"{args.rounds} round(s), {multiprocessing.cpu_count()} cores")
    for name, values in gains.items():
        print(f"  {name:<30} {statistics.median(values):.2f}x  (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    return 0
