"""gf-bench eval: trials per hour through the ROS graph vs. the same policy in one Python loop.

1. Reference: the oracle backend drives a SimSession directly (no ROS), N Val trials.
2. The real graph: ``gf-launch sim_eval policy:=oracle`` with the same N trials; per-trial wall
   time from results.jsonl (start-up excluded, reported separately).
   1 and 2 alternate for several rounds, each round on its own trial indices, and the figures are
   medians: this host's speed drifts by +-25 % within minutes, enough to swing a single pair.
3. Image path: a policy-side node sends one-step chunks to a sim bridge rendering every
   observation and times chunk -> image-in-callback, next to step + render measured in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gf_bringup import names
from gf_bringup.runtime import console_script


def direct_loop(trials: int, protocol: str = "Val", first_index: int = 0) -> tuple[float, float]:
    """(seconds per trial, success rate) of the oracle driving a SimSession in one process."""
    from gf_eval.action_space import validate_chunk
    from gf_eval.trials import make_trial
    from gf_policy.backend import PolicyObservation
    from gf_policy.backends.scripted import OracleBackend
    from gf_sim_bridge.session import SimSession

    session, backend, successes = SimSession(), OracleBackend(), 0
    start = time.perf_counter()
    for i in range(first_index, first_index + trials):
        trial = make_trial(protocol, i)
        session.reset(trial)
        backend.reset(trial)
        while not session.status.done:
            obs = session.observe(render=False, privileged=True)
            plan = backend.act(PolicyObservation(trial=trial, step=obs.step, proprio=obs.proprio, privileged=obs.privileged))
            chunk = validate_chunk(trial_id=trial.trial_id, step_index=obs.step, horizon=len(plan.actions), execute_steps=0,
                                   action_dim=7, action_space=plan.action_space, data=plan.actions.reshape(-1),
                                   expected_trial_id=trial.trial_id, next_step=session.status.step)
            session.execute(chunk)
        successes += session.status.success
    elapsed = time.perf_counter() - start
    session.close()
    return elapsed / trials, successes / trials


def ros_graph(trials: int, protocol: str = "Val", first_index: int = 0) -> tuple[float, float, float]:
    """(seconds per trial, success rate, start-up seconds) through gf-launch sim_eval."""
    from gf_eval.results import ResultsFile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval"
        start = time.perf_counter()
        proc = subprocess.run(
            [console_script("gf-launch"), "sim_eval", "policy:=oracle", f"trials:={trials}",
             f"protocols:=[{protocol}]", f"first_index:={first_index}", f"output_dir:={out}"], capture_output=True, text=True,
        )
        total = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"gf-launch failed:\n{proc.stdout[-3000:]}")
        records = ResultsFile(out).read()
    per_trial = sum(r.wall_time for r in records) / len(records)
    return per_trial, sum(r.success for r in records) / len(records), total - per_trial * len(records)


def image_latency(samples: int, image_size: int) -> tuple[np.ndarray, float]:
    """(chunk -> image-in-callback latencies in ms, in-process step + render ms)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from gf_bringup.rosutil import reliable_qos, sensor_qos, status_qos
    from gf_eval.ros_msgs import trial_to_msg
    from gf_eval.trials import make_trial
    from gf_interfaces.msg import ActionChunk, EpisodeStatus
    from gf_interfaces.srv import ResetTrial
    from gf_sim_bridge.session import SimConfig, SimSession

    session = SimSession(SimConfig(image_size=image_size))
    trial = make_trial("Val", 0)
    session.reset(trial)
    from gf_eval.action_space import validate_chunk

    costs = []
    for step in range(20):
        chunk = validate_chunk(trial_id=trial.trial_id, step_index=step, horizon=1, execute_steps=0, action_dim=7,
                               action_space="ee_delta_pose", data=np.zeros(7), expected_trial_id=trial.trial_id, next_step=step)
        t0 = time.perf_counter()
        session.execute(chunk)
        session.observe(render=True)
        costs.append(time.perf_counter() - t0)
    session.close()
    in_process_ms = 1000 * float(np.median(costs))

    bridge = subprocess.Popen([console_script("gf-sim-bridge"), "--ros-args", "-p", "render:=always",
                               "-p", f"image_size:={image_size}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("latency_probe", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        state = {"sent": None, "latencies": [], "step": 0, "done": False}
        lock = threading.Lock()

        def on_image(msg):
            with lock:
                if state["sent"] is not None:
                    state["latencies"].append(time.perf_counter() - state["sent"])
                    state["sent"] = None

        def on_status(msg):
            with lock:
                state["step"], state["done"] = msg.step, msg.done

        node.create_subscription(Image, names.IMAGE, on_image, sensor_qos())
        node.create_subscription(EpisodeStatus, names.EPISODE_STATUS, on_status, status_qos())
        pub = node.create_publisher(ActionChunk, names.ACTION_CHUNK, reliable_qos())
        client = node.create_client(ResetTrial, names.RESET_TRIAL)
        if not client.wait_for_service(timeout_sec=120):
            raise RuntimeError("the sim bridge did not start")
        future = client.call_async(ResetTrial.Request(trial=trial_to_msg(trial)))
        executor.spin_until_future_complete(future, timeout_sec=60)
        while pub.get_subscription_count() == 0:
            executor.spin_once(timeout_sec=0.05)
        executor.spin_once(timeout_sec=0.5)
        while len(state["latencies"]) < samples:
            if state["done"]:
                future = client.call_async(ResetTrial.Request(trial=trial_to_msg(trial)))
                executor.spin_until_future_complete(future, timeout_sec=60)
                state["done"], state["step"] = False, 0
            with lock:
                state["sent"] = time.perf_counter()
            msg = ActionChunk(trial_id=trial.trial_id, step_index=state["step"], horizon=1, execute_steps=0, action_dim=7,
                              action_space="ee_delta_pose")
            msg.data = [0.0] * 7
            pub.publish(msg)
            deadline = time.perf_counter() + 5
            while state["sent"] is not None and time.perf_counter() < deadline:
                executor.spin_once(timeout_sec=0.01)
            executor.spin_once(timeout_sec=0.0)
        return 1000 * np.array(state["latencies"]), in_process_ms
    finally:
        rclpy.shutdown(context=context)
        bridge.terminate()
        bridge.wait()


def compare(trials: int, rounds: int) -> dict[str, list[float]]:
    """Alternating direct-loop and graph rounds on the same trials; per-round figures."""
    out: dict[str, list[float]] = {}
    for r in range(rounds):
        first = r * trials
        direct_s, direct_sr = direct_loop(trials, first_index=first)
        graph_s, graph_sr, startup = ros_graph(trials, first_index=first)
        figures = {"direct_s": direct_s, "graph_s": graph_s, "direct_sr": direct_sr, "graph_sr": graph_sr, "startup_s": startup}
        for key, value in figures.items():
            out.setdefault(key, []).append(value)
        print(f"  round {r + 1}/{rounds}: direct {direct_s:.3f} s/trial, graph {graph_s:.3f} s/trial "
              f"({100 * direct_s / graph_s:.0f}%)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-bench eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating direct/graph rounds")
    parser.add_argument("--samples", type=int, default=60, help="image latency samples")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of the table")
    args = parser.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(__import__("gf_bringup.runtime").runtime.random_domain_id()))
    from gf_sim_bridge.session import limit_torch_threads

    limit_torch_threads()  # the reference loop runs its env as the sim bridge does
    # With --json the progress lines go to stderr: stdout is the JSON object alone.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        print(f"oracle on Val trials: {args.rounds} rounds of {args.trials}, direct loop then ROS graph; "
              "then the image path ...", flush=True)
        rounds = compare(args.trials, args.rounds)
        latencies, in_process = image_latency(args.samples, args.image_size)
    direct_s, graph_s = float(np.median(rounds["direct_s"])), float(np.median(rounds["graph_s"]))
    ratios = [100 * d / g for d, g in zip(rounds["direct_s"], rounds["graph_s"])]
    ratio = float(np.median(ratios))
    p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
    if args.json:
        print(json.dumps({
            "trials_per_round": args.trials, "rounds": args.rounds,
            "graph": {"seconds_per_trial": graph_s, "trials_per_hour": 3600 / graph_s,
                      "success_rate": float(np.mean(rounds["graph_sr"])), "startup_s": float(np.median(rounds["startup_s"]))},
            "reference_direct_loop": {"seconds_per_trial": direct_s, "trials_per_hour": 3600 / direct_s,
                                      "success_rate": float(np.mean(rounds["direct_sr"]))},
            "graph_percent_of_direct": ratio, "round_percents": ratios,
            "target": {"graph_percent_of_direct": 85, "met": ratio >= 85},
            "image_path_ms": {"p50": p50, "p99": p99, "reference_in_process": in_process},
        }))
        return 0
    print(f"\n{'':36s}{'ROS graph':>12s}{'direct loop (ref)':>20s}   (medians of {args.rounds} alternating rounds)")
    print(f"{'trials per hour':36s}{3600 / graph_s:12.0f}{3600 / direct_s:20.0f}   "
          f"graph = {ratio:.0f}% of the direct loop (rounds {min(ratios):.0f}-{max(ratios):.0f}%; "
          f"target >= 85%: {'met' if ratio >= 85 else 'NOT met'})")
    print(f"{'seconds per trial':36s}{graph_s:12.2f}{direct_s:20.2f}")
    print(f"{'oracle success rate':36s}{100 * np.mean(rounds['graph_sr']):11.0f}%{100 * np.mean(rounds['direct_sr']):19.0f}%")
    print(f"graph start-up (processes, model/scene loading): {np.median(rounds['startup_s']):.1f} s")
    print(f"\nimage path ({args.image_size}px): chunk -> step -> render -> /camera/image_raw -> callback: "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; in-process step + render (ref): {in_process:.1f} ms; "
          f"ROS overhead p50 {p50 - in_process:.1f} ms")
    return 0
