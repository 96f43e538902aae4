"""`gf-demos`: generate, import, inspect and repair demonstration sets (bags + manifest).

  gf-demos generate --split train --episodes 500 --out DIR [--workers 2]
  gf-demos import-upstream SRC DIR [--split NAME|PATH|UPSTREAM_META_DIR]
  gf-demos stats DIR [--out STATS_DIR]
  gf-demos repair DIR      recover bags of crashed recordings (marked incomplete)
  gf-demos check DIR       rosbag2 metadata-v9 check of every bag + load every episode
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.runtime import configure_environment


def _generate(args) -> int:
    from gf_teleop.generate import GenerationConfig, generate

    config = GenerationConfig(
        out=args.out, episodes=args.episodes, workers=args.workers, split=args.split, base_seed=args.seed,
        first_index=args.first_index, block_size=args.block_size, policy=args.policy, backend_args=args.backend_args,
        image_size=args.image_size, robot=args.robot, split_file=args.split_file, max_attempts=args.max_attempts,
        policy_timeout_s=args.policy_timeout, ground_truth=args.ground_truth,
    )
    report = generate(config, progress=not args.no_progress, force=args.force)
    rate = report.success_rate
    print(f"{report.complete}/{report.planned} episodes complete, {report.successful} successful "
          f"({100 * rate:.1f}%), {report.ran_now} recorded in {report.wall_time_s:.0f} s "
          f"({report.seconds_per_episode():.2f} s/episode with {args.workers} worker(s))")
    if report.ran_now:
        print(f"extrapolated: 500 episodes in {500 * report.seconds_per_episode() / 60:.1f} min")
    if report.failed_indices:
        print(f"unsuccessful trial indices: {report.failed_indices[:20]}{' ...' if len(report.failed_indices) > 20 else ''}")
    if report.incomplete_indices:
        print(f"still without a complete recording: {report.incomplete_indices[:20]} (run the command again)")
    print(f"manifest: {Path(args.out) / 'manifest.jsonl'}")
    return 0 if not report.incomplete_indices else 1


def _splits_for_import(spec: str):
    from gf_eval.splits import import_upstream, load_splits

    if not spec:
        return load_splits()
    path = Path(spec)
    if path.is_dir():
        return import_upstream(path)
    return load_splits(spec)


def _import(args) -> int:
    from gf_teleop.importer import import_upstream

    entries = import_upstream(args.src, args.dir, splits=_splits_for_import(args.split), operator=args.operator,
                              assume_success=args.assume_success, progress=not args.no_progress)
    print(f"imported {len(entries)} episode(s) into {args.dir} "
          f"({sum(e.success for e in entries)} successful; {sum(e.trial['cards'][0]['emoji_id'] == 'unknown' for e in entries)} "
          "with emojis not found in the split)")
    return 0


def _stats(args) -> int:
    from gf_teleop.stats import run_stats

    run_stats(Path(args.dir), Path(args.out) if args.out else None, progress=not args.no_progress, images=not args.no_images)
    return 0


def _repair(args) -> int:
    from gf_teleop.recording import recover

    entries = recover(args.dir)
    for e in entries:
        print(f"recovered {e.bag}: {e.length} steps, complete={e.complete}, {e.extra.get('recovered_messages', '?')} messages")
    print(f"{len(entries)} bag(s) recovered")
    return 0


def _check(args) -> int:
    from tqdm import tqdm

    from gf_teleop import episodes as ep
    from gf_teleop.bagcheck import check_bag

    bad = 0
    entries = ep.recorded_entries(args.dir)
    for entry in tqdm(entries, desc="checking", unit="ep", file=sys.stderr, disable=args.no_progress):
        problems = check_bag(Path(args.dir) / entry.bag)
        if not problems:
            try:
                ep.load_episode(args.dir, entry, images=not args.no_images)
            except (ep.EpisodeError, ValueError) as exc:
                problems = [str(exc)] if entry.complete else []
        if problems:
            bad += 1
            print(f"{entry.episode_id}: " + "; ".join(problems))
    print(f"{len(entries) - bad}/{len(entries)} bags pass (rosbag2 metadata v9, readable episode)")
    return 0 if bad == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gf-demos", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="record scripted-expert demos in the simulator through the ROS graph (resumable)")
    g.add_argument("--out", required=True, help="demo directory (created; an existing one is resumed)")
    g.add_argument("--split", default="train", choices=["train"], help="emoji list of the demos (train: the Demo protocol)")
    g.add_argument("--episodes", type=int, default=500, help="number of episodes (trial indices first-index ..)")
    g.add_argument("--workers", type=int, default=2, help="worker graphs run at once (each on its own ROS domain)")
    g.add_argument("--seed", type=int, default=0, help="base seed of the trial specs")
    g.add_argument("--first-index", type=int, default=0, help="first trial index")
    g.add_argument("--block-size", type=int, default=50, help="trials per worker graph launch (at most)")
    g.add_argument("--policy", default="oracle", help="policy backend that produces the demos")
    g.add_argument("--backend-args", default="", help="YAML mapping of backend keyword arguments")
    g.add_argument("--image-size", type=int, default=224, help="camera resolution in pixels")
    g.add_argument("--robot", default="widowx", help="widowx or panda")
    g.add_argument("--split-file", default=DEFAULT_SPLIT, help="emoji split file (name or path)")
    g.add_argument("--max-attempts", type=int, default=3,
                   help="attempts per trial whose recording is incomplete or that did not end in the simulator")
    g.add_argument("--policy-timeout", type=float, default=60.0,
                   help="seconds without progress before a trial counts as stuck (its graph is restarted)")
    g.add_argument("--ground-truth", action="store_true",
                   help="also record /gf/sim_state (lets gf-replay policy run the oracle on the bags)")
    g.add_argument("--force", action="store_true", help="resume even if the directory was made with other settings")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate)

    i = sub.add_parser("import-upstream", help="convert upstream GrinningFace episode folders into bags + manifest")
    i.add_argument("src", help="upstream dataset directory (episode folders <n>/ with images/primary_image/, action.npy, ...)")
    i.add_argument("dir", help="demo directory to add the episodes to")
    i.add_argument("--split", default="", help="split to find card emojis in: a name, a split file, or upstream's meta directory")
    i.add_argument("--operator", default="upstream", help="recorded as the operator")
    i.add_argument("--assume-success", action="store_true", help="mark episodes successful when generation_records.csv is missing")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.set_defaults(func=_import)

    s = sub.add_parser("stats", help="episodes, success rate, lengths, emoji coverage, action ranges, plots")
    s.add_argument("dir", help="demo directory")
    s.add_argument("--out", default="", help="where to write stats.json and the PNGs (default DIR/stats)")
    s.add_argument("--no-images", action="store_true", help="skip the contact sheet (faster)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_stats)

    r = sub.add_parser("repair", help="recover bags of crashed recordings (readable, marked incomplete)")
    r.add_argument("dir", help="demo directory")
    r.set_defaults(func=_repair)

    c = sub.add_parser("check", help="check every bag: rosbag2 metadata v9 and a readable episode")
    c.add_argument("dir", help="demo directory")
    c.add_argument("--no-images", action="store_true", help="do not decode camera frames")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_environment()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"gf-demos {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
