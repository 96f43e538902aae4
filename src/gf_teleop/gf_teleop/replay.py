"""`gf-replay`: play bags on ROS topics, re-run their actions in the simulator, test a policy on them.

  gf-replay play BAG [--rate 2] [--loop] [--topics /camera/image_raw /gf/ee_state]
      publish the recorded messages (serialised, as recorded) with their original timing
      scaled by --rate, with the QoS their publishers offered: a rosbag2 player for machines
      without rosbag2. Topics whose recorded definition differs from today's (a bag older
      than a message's new fields) are decoded with the bag's definition and re-encoded as
      today's message, the new fields at their defaults.
  gf-replay sim BAG|DIR [...]
      reset the simulator to each episode's recorded trial spec, execute the recorded actions
      and report whether the outcome (end reason, steps, card, success) and the end-effector
      trajectory reproduce. Exit code 0 when every episode reproduces.
  gf-replay policy BAG --policy NAME [--backend-args YAML]
      open loop: give a policy backend the recorded observations and compare its actions with
      the recorded ones (error per action dimension, a plot and a JSON report).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.runtime import configure_environment
from gf_eval.action_space import EE_DELTA_POSE
from gf_teleop import episodes as ep


def resolve_episodes(paths: list[str]) -> list[tuple[Path, ep.EpisodeEntry]]:
    """Bags or demo directories -> (directory, entry) pairs."""
    out = []
    for p in map(Path, paths):
        if (p / ep.MANIFEST).exists():
            out += [(p, e) for e in ep.read_manifest(p)]
        elif (p / "metadata.yaml").exists():
            out.append(ep.entry_from_bag(p))
        else:
            raise FileNotFoundError(f"{p}: neither a bag (metadata.yaml) nor a demo directory (manifest.jsonl)")
    return out


# --- play -----------------------------------------------------------------------------------


def qos_from_metadata(profiles: list, topic: str):
    """The rclpy QoS to publish with: the first offered profile in the bag, else the topic's default."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from gf_teleop.recorder_node import subscription_qos

    if not profiles:
        return subscription_qos(topic)
    q = profiles[0]
    profile = QoSProfile(depth=max(10, int(q.depth or 10)))
    profile.reliability = ReliabilityPolicy.BEST_EFFORT if q.reliability.name == "BEST_EFFORT" else ReliabilityPolicy.RELIABLE
    profile.durability = DurabilityPolicy.TRANSIENT_LOCAL if q.durability.name == "TRANSIENT_LOCAL" else DurabilityPolicy.VOLATILE
    return profile


def play(bag: Path, rate: float = 1.0, loop: bool = False, topics: list[str] | None = None, delay_s: float = 1.0,
         progress: bool = True, max_loops: int | None = None, wait_subscribers: int = 0,
         wait_timeout_s: float = 60.0) -> dict[str, int]:
    """Publish a bag's messages with their recorded timing; returns messages published per topic.

    ``wait_subscribers``: first wait until every topic has that many subscribers (then
    ``delay_s`` more, for the subscribers' side of the match).
    """
    import rclpy
    from rosbags.rosbag2 import Reader
    from tqdm import tqdm

    from gf_teleop.bagtypes import BagTypes, message_class, to_ros_message

    if rate <= 0:
        raise ValueError("--rate must be > 0")
    from rclpy.signals import SignalHandlerOptions

    # No spin here, so rclpy's handlers would only shut the context down under a publish in
    # progress (a traceback); Ctrl-C and SIGTERM end the loop in main() instead.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("gf_replay_player")
    counts: dict[str, int] = {}
    try:
        with Reader(bag) as reader:
            conns = [c for c in reader.connections if not topics or c.topic in topics]
            if not conns:
                raise ValueError(f"{bag}: none of the topics {topics} is in the bag ({sorted({c.topic for c in reader.connections})})")
            types = BagTypes(reader.connections)
            # Connections recorded with another definition than today's cannot go out as raw bytes.
            convert = {c.id for c in conns if c.digest and _current_digest(c.msgtype) not in ("", c.digest)}
            pubs = {}
            for c in conns:
                if c.topic not in pubs:
                    pubs[c.topic] = node.create_publisher(message_class(c.msgtype), c.topic,
                                                          qos_from_metadata(c.ext.offered_qos_profiles, c.topic))
            total = sum(c.msgcount for c in conns)
            deadline = time.monotonic() + wait_timeout_s
            while any(p.get_subscription_count() < wait_subscribers for p in pubs.values()):
                if time.monotonic() > deadline:
                    missing = [t for t, p in pubs.items() if p.get_subscription_count() < wait_subscribers]
                    raise ValueError(f"no {wait_subscribers} subscriber(s) on {missing} after {wait_timeout_s:.0f} s")
                time.sleep(0.05)
            time.sleep(delay_s)  # let subscribers discover the publishers
            loops = 0
            while True:
                bar = tqdm(total=total, desc=f"play x{rate:g}", unit="msg", disable=not progress, file=sys.stderr)
                start_wall, first = time.monotonic(), None
                for conn, t, raw in reader.messages(connections=conns):
                    first = t if first is None else first
                    wait = start_wall + (t - first) / 1e9 / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    if conn.id in convert:
                        pubs[conn.topic].publish(to_ros_message(types.deserialize(raw, conn.msgtype), message_class(conn.msgtype)))
                    else:
                        pubs[conn.topic].publish(bytes(raw))
                    counts[conn.topic] = counts.get(conn.topic, 0) + 1
                    bar.update(1)
                bar.close()
                loops += 1
                if not loop or (max_loops is not None and loops >= max_loops):
                    break
            time.sleep(0.5)  # let the last messages leave before the participant goes away
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return counts


def _current_digest(msgtype: str) -> str:
    """RIHS01 hash of today's definition of a type ('' when it cannot be computed)."""
    from gf_teleop.bagtypes import typestore

    try:
        return typestore().hash_rihs01(msgtype)
    except Exception:  # noqa: BLE001 - a type today's store lacks: publish the recorded bytes as they are
        return ""


# --- sim ------------------------------------------------------------------------------------


@dataclass
class SimReplayResult:
    episode_id: str
    steps: int
    recorded: dict
    replayed: dict
    max_position_error_m: float
    max_proprio_error: float
    outcome_reproduced: bool
    trajectory_reproduced: bool

    @property
    def reproduced(self) -> bool:
        return self.outcome_reproduced and self.trajectory_reproduced


def detect_robot(bag: Path) -> str:
    """widowx or panda, from the joint names in /joint_states (default widowx)."""
    for _, _, msg in ep.read_messages(bag, (ep.JOINT_STATES,)):
        return "panda" if any(n.startswith("panda") for n in msg.name) else "widowx"
    return "widowx"


class SimReplayer:
    """Re-runs recorded actions in a SimSession (one session per robot, reused across episodes)."""

    def __init__(self, image_size: int = 224):
        self.sessions: dict[str, object] = {}
        self.image_size = image_size

    def session(self, robot: str, split: str):
        from gf_sim_bridge.session import SimConfig, SimSession

        key = f"{robot}/{split}"
        if key not in self.sessions:
            self.sessions[key] = SimSession(SimConfig(robot=robot, image_size=self.image_size, split=split))
        return self.sessions[key]

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()

    def replay(self, directory: Path, entry: ep.EpisodeEntry, robot: str = "auto", tolerance_m: float = 1e-4) -> SimReplayResult:
        from gf_eval.action_space import validate_chunk
        from gf_eval.splits import load_splits

        episode = ep.load_episode(directory, entry, images=False)
        if episode.trial is None:
            raise ValueError(f"{entry.episode_id}: the bag has no trial spec to rebuild the scene from")
        bag = Path(directory) / entry.bag
        robot = detect_robot(bag) if robot == "auto" else robot
        try:
            load_splits(episode.trial.split_name)
            split = episode.trial.split_name
        except FileNotFoundError:
            split = DEFAULT_SPLIT  # the spec carries the cards; the split only names defaults
        session = self.session(robot, split)
        session.reset(episode.trial)
        proprio = []
        for t, action in enumerate(episode.actions):
            if session.status.done:
                break
            proprio.append(session.observe(render=False).proprio.astype(np.float32))
            chunk = validate_chunk(
                trial_id=episode.trial.trial_id, step_index=t, horizon=1, execute_steps=0, action_dim=EE_DELTA_POSE.dim,
                action_space=EE_DELTA_POSE.name, data=action, expected_trial_id=session.status.trial_id,
                next_step=session.status.step,
            )
            session.execute(chunk)
        replayed_proprio = np.stack(proprio) if proprio else np.zeros((0, 7), np.float32)
        n = min(len(replayed_proprio), len(episode.proprio))
        diff = np.abs(replayed_proprio[:n] - episode.proprio[:n]) if n else np.zeros((1, 7))
        s = session.status
        replayed = {"reason": s.reason if s.done else "running", "steps": s.step, "placed_card": s.placed_card,
                    "success": s.success}
        o = entry.outcome
        recorded = {"reason": o.get("reason"), "steps": o.get("steps", entry.length),
                    "placed_card": o.get("placed_card"), "success": entry.success}
        same = all(recorded[k] == replayed[k] for k in recorded if recorded[k] is not None)
        return SimReplayResult(
            episode_id=entry.episode_id, steps=len(episode.actions), recorded=recorded, replayed=replayed,
            max_position_error_m=float(diff[:, :3].max()), max_proprio_error=float(diff.max()),
            outcome_reproduced=same,
            trajectory_reproduced=bool(n == len(episode.proprio) and diff[:, :3].max() <= tolerance_m),
        )


# --- policy ---------------------------------------------------------------------------------


@dataclass
class PolicyReplayResult:
    episode_id: str
    policy: str
    steps: int
    mae: list[float]
    rmse: list[float]
    max_error: list[float]
    chunk_mae: float | None = None
    names: tuple[str, ...] = EE_DELTA_POSE.names
    files: list[str] = field(default_factory=list)


def summarize_policy_replays(results: list[PolicyReplayResult]) -> dict:
    """The open-loop errors over several episodes, weighted by their steps: MAE and RMSE per
    dimension, the largest error, and the whole-chunk MAE where the policy predicts chunks."""
    steps = np.array([r.steps for r in results], dtype=np.float64)
    weights = steps / steps.sum()
    chunked = [(r.chunk_mae, r.steps) for r in results if r.chunk_mae is not None]
    return {
        "policy": results[0].policy, "episodes": len(results), "steps": int(steps.sum()),
        "names": list(results[0].names),
        "mae": (weights @ np.array([r.mae for r in results])).tolist(),
        "rmse": np.sqrt(weights @ np.square(np.array([r.rmse for r in results]))).tolist(),
        "max_error": np.max([r.max_error for r in results], axis=0).tolist(),
        "chunk_mae": (sum(m * n for m, n in chunked) / sum(n for _, n in chunked)) if chunked else None,
        "worst_episode": max(results, key=lambda r: float(np.mean(r.mae))).episode_id,
    }


def _print_errors(names, rows) -> None:
    print("  " + "  ".join(f"{n:>8s}" for n in names))
    for label, values in rows:
        print(f"  {label:<5s}" + "  ".join(f"{v:8.4f}" for v in values))


def _privileged_by_stamp(bag: Path) -> dict[int, dict]:
    from gf_policy.policy_node import sim_state_to_dict

    return {ep.stamp_ns(m.header.stamp): sim_state_to_dict(m) for _, _, m in ep.read_messages(bag, (ep.SIM_STATE,))}


def _step_stamps(bag: Path, trial_id: str) -> dict[int, int]:
    stamps: dict[int, int] = {}
    for _, _, m in ep.read_messages(bag, (ep.EPISODE_STATUS,)):
        if m.trial_id == trial_id:
            stamps.setdefault(int(m.step), ep.stamp_ns(m.header.stamp))
    return stamps


def replay_policy(directory: Path, entry: ep.EpisodeEntry, policy: str, backend_args: dict | None = None,
                  out: Path | None = None, progress: bool = True) -> PolicyReplayResult:
    """Feed the recorded observations to a backend; compare its actions with the recorded ones."""
    from tqdm import tqdm

    from gf_policy.backend import PolicyObservation, backend_class, load_backend

    cls = backend_class(policy)
    episode = ep.load_episode(directory, entry, images=cls.needs_image)
    if episode.trial is None:
        raise ValueError(f"{entry.episode_id}: the bag has no trial spec (the policy needs the instruction)")
    bag = Path(directory) / entry.bag
    privileged, stamps = {}, {}
    if cls.needs_privileged:
        privileged = _privileged_by_stamp(bag)
        stamps = _step_stamps(bag, episode.trial.trial_id)
        if not privileged:
            raise ValueError(f"backend {policy!r} needs the simulator's ground truth, but {bag} has no {ep.SIM_STATE} "
                             "(record it with the recorder's topics parameter)")
    backend = load_backend(policy, **(backend_args or {}))
    backend.reset(episode.trial)
    T = episode.length
    predicted = np.zeros((T, EE_DELTA_POSE.dim), np.float32)
    chunk_errors = []
    for t in tqdm(range(T), desc=f"{policy} open loop", unit="step", disable=not progress, file=sys.stderr):
        obs = PolicyObservation(
            trial=episode.trial, step=t, proprio=episode.proprio[t],
            image=episode.images[t] if cls.needs_image else None,
            privileged=privileged.get(stamps.get(t)) if cls.needs_privileged else None,
        )
        actions = np.asarray(backend.act(obs).actions, dtype=np.float32)
        predicted[t] = actions[0]
        h = min(len(actions), T - t)
        chunk_errors.append(np.abs(actions[:h] - episode.actions[t:t + h]).mean())
    backend.close()
    err = predicted - episode.actions
    result = PolicyReplayResult(
        episode_id=entry.episode_id, policy=policy, steps=T,
        mae=[round(float(v), 6) for v in np.abs(err).mean(0)], rmse=[round(float(v), 6) for v in np.sqrt((err ** 2).mean(0))],
        max_error=[round(float(v), 6) for v in np.abs(err).max(0)], chunk_mae=round(float(np.mean(chunk_errors)), 6),
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{entry.episode_id}-{policy}"
        _plot_policy(episode.actions, predicted, result, stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
        result.files = [str(stem.with_suffix(".png")), str(stem.with_suffix(".json"))]
    return result


def _plot_policy(recorded: np.ndarray, predicted: np.ndarray, result: PolicyReplayResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = EE_DELTA_POSE.names
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    steps = np.arange(len(recorded))
    for i, name in enumerate(names):
        ax = axes.flat[i]
        ax.plot(steps, recorded[:, i], label="recorded", lw=1.5)
        ax.plot(steps, predicted[:, i], label=result.policy, lw=1.0, ls="--")
        ax.set_title(f"{name}  (MAE {result.mae[i]:.3g})")
        ax.set_xlabel("step")
    axes.flat[0].legend()
    bar = axes.flat[7]
    bar.bar(names, result.mae)
    bar.set_title("mean absolute error per dimension")
    bar.tick_params(axis="x", rotation=45)
    fig.suptitle(f"{result.episode_id}: {result.policy} open loop vs recorded actions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- CLI ------------------------------------------------------------------------------------


def _cmd_play(args) -> int:
    counts = play(Path(args.bag), rate=args.rate, loop=args.loop, topics=args.topics or None, delay_s=args.delay,
                  progress=not args.no_progress, wait_subscribers=args.wait_subscribers)
    print("published: " + ", ".join(f"{t}: {n}" for t, n in sorted(counts.items())))
    return 0


def _cmd_sim(args) -> int:
    pairs = resolve_episodes(args.bags)
    replayer = SimReplayer(image_size=args.image_size)
    failures = 0
    try:
        for directory, entry in pairs:
            r = replayer.replay(directory, entry, robot=args.robot, tolerance_m=args.tolerance)
            failures += not r.reproduced
            verdict = "REPRODUCED" if r.reproduced else "DIFFERS"
            print(f"{r.episode_id}: {verdict}  recorded {r.recorded}  replayed {r.replayed}  "
                  f"max EE position error {r.max_position_error_m * 1000:.3f} mm over {r.steps} steps")
    finally:
        replayer.close()
    print(f"{len(pairs) - failures}/{len(pairs)} episodes reproduce (outcome and trajectory within {args.tolerance * 1000:g} mm)")
    return 0 if failures == 0 else 1


def _cmd_policy(args) -> int:
    import yaml

    kwargs = yaml.safe_load(args.backend_args) if args.backend_args.strip() else {}
    if not isinstance(kwargs, dict):
        raise ValueError("--backend-args must be a YAML mapping")
    results = []
    for directory, entry in resolve_episodes(args.bags):
        r = replay_policy(directory, entry, args.policy, kwargs, out=Path(args.out), progress=not args.no_progress)
        results.append(r)
        print(f"{r.episode_id}: {r.policy} over {r.steps} steps (open loop)")
        _print_errors(r.names, (("MAE", r.mae), ("RMSE", r.rmse), ("max", r.max_error)))
        chunk = f"whole-chunk MAE {r.chunk_mae:.4f}; " if r.chunk_mae is not None else ""
        print(f"  {chunk}plot and report: {', '.join(r.files)}")
    if len(results) > 1:
        summary = summarize_policy_replays(results)
        path = Path(args.out) / f"summary_{args.policy}.json"
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"\nsummary over {summary['episodes']} episodes, {summary['steps']} steps (weighted by steps)")
        _print_errors(summary["names"], (("MAE", summary["mae"]), ("RMSE", summary["rmse"]), ("max", summary["max_error"])))
        chunk = f"whole-chunk MAE {summary['chunk_mae']:.4f}; " if summary["chunk_mae"] is not None else ""
        print(f"  {chunk}largest mean error: {summary['worst_episode']}; {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gf-replay", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("play", help="publish a bag's topics with the original timing")
    p.add_argument("bag", help="bag directory (metadata.yaml + .mcap)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (2 = twice as fast)")
    p.add_argument("--loop", action="store_true", help="play again and again until Ctrl-C")
    p.add_argument("--topics", nargs="*", default=[], help="only these topics")
    p.add_argument("--delay", type=float, default=1.0, help="seconds to wait for subscribers before the first message")
    p.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                   help="first wait until every played topic has N subscribers")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_play)
    s = sub.add_parser("sim", help="re-run recorded actions in the simulator and compare outcome and trajectory")
    s.add_argument("bags", nargs="+", help="bags and/or demo directories")
    s.add_argument("--robot", default="auto", help="auto (from the recorded joint names), widowx or panda")
    s.add_argument("--tolerance", type=float, default=1e-4, help="largest EE position difference (m) that still counts as reproduced")
    s.add_argument("--image-size", type=int, default=224, help="camera size of the simulator (not rendered)")
    s.set_defaults(func=_cmd_sim)
    q = sub.add_parser("policy", help="open-loop action error of a policy backend on recorded observations")
    q.add_argument("bags", nargs="+", help="bags and/or demo directories")
    q.add_argument("--policy", required=True, help="policy backend (gf.policy_backends entry point)")
    q.add_argument("--backend-args", default="", help="YAML mapping of backend keyword arguments")
    q.add_argument("--out", default="replay_policy", help="directory for the plots and JSON reports")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_policy)
    return parser


def _terminate(signum, frame) -> None:  # noqa: ARG001
    raise SystemExit(128 + signum)  # unwinds through play()'s clean-up, quietly


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_environment()
    signal.signal(signal.SIGTERM, _terminate)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` shows where a hung play waits
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ep.EpisodeError) as exc:
        print(f"gf-replay {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
