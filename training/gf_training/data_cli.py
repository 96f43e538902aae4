"""``gf-data``: robot data in and out of the workspace's demo format.

::

    gf-data export DEMO_DIR OUT --format lerobot [--codec libsvtav1|h264] [--include-failed]
    gf-data import DATASET_DIR OUT [--format auto|lerobot|rlds] [--mapping bridge_widowx|FILE] [--image-key KEY]
                                   [--split train]
    gf-data info DATASET_DIR

``export`` writes a LeRobotDataset v3.0 (``gf_training.lerobot_format``); ``import`` reads one
(v3.0 or v2.1), or an RLDS/TFDS dataset version directory with tfrecord shards (BridgeData v2,
Open X-Embodiment; ``gf_training.rlds_format``, no TensorFlow; detected by its features.json +
dataset_info.json), maps a foreign robot's state/actions onto ours (``gf_training.embodiments``)
and writes bags + manifest lines with ``gf_teleop``'s episode writer, so ``gf-demos stats``,
``gf-replay`` and ``gf-train data.demo_dirs=[OUT]`` use the result like recorded demos.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gf_training import lerobot_format as lr
from gf_training import rlds_format as rlds


def dataset_format(path: str, requested: str = "auto") -> str:
    """``lerobot`` or ``rlds``: the requested one, or what the directory holds."""
    if requested != "auto":
        return requested
    if rlds.is_rlds_dir(path):
        return "rlds"
    if (Path(path) / lr.INFO_PATH).is_file():
        return "lerobot"
    raise FileNotFoundError(f"{path}: neither a LeRobot dataset ({lr.INFO_PATH}) nor an RLDS/TFDS dataset version "
                            f"directory ({rlds.FEATURES_FILE} + {rlds.INFO_FILE}{rlds.version_hint(path)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="demo directory -> LeRobotDataset v3.0")
    e.add_argument("demo_dir")
    e.add_argument("out")
    e.add_argument("--format", choices=["lerobot"], default="lerobot")
    e.add_argument("--codec", choices=sorted(lr.CODECS), default=lr.DEFAULT_CODEC,
                   help="video encoder (libsvtav1: AV1 like LeRobot; h264 for players without AV1)")
    e.add_argument("--include-failed", action="store_true", help="export failed demos too")
    i = sub.add_parser("import", help="LeRobotDataset (v3.0 / v2.1) or RLDS/TFDS dataset -> bags + manifest")
    i.add_argument("dataset_dir")
    i.add_argument("out")
    i.add_argument("--format", choices=["auto", "lerobot", "rlds"], default="auto",
                   help="auto: rlds if the directory has features.json + dataset_info.json, else lerobot")
    i.add_argument("--split", default="train", help="RLDS split to import")
    i.add_argument("--mapping", default=None,
                   help="embodiment mapping: grinningface (default), bridge_widowx, or a YAML/JSON file")
    i.add_argument("--image-key", default=None, help="camera feature (default: the mapping's, else the first)")
    i.add_argument("--operator", default=None, help="manifest operator (default: the format's name)")
    n = sub.add_parser("info", help="print a LeRobot or RLDS dataset's version, size, features (and tasks)")
    n.add_argument("dataset_dir")
    for p in (e, i):
        p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            info = lr.export_demos(args.demo_dir, args.out, codec=args.codec, include_failed=args.include_failed,
                                   progress=not args.no_progress)
            print(f"exported {info['total_episodes']} episodes ({info['total_frames']} frames, "
                  f"{info['total_tasks']} tasks) to {args.out}")
        elif args.command == "import":
            fmt = dataset_format(args.dataset_dir, args.format)
            if fmt == "rlds":
                written = rlds.import_rlds(args.dataset_dir, args.out, args.mapping, image_key=args.image_key, split=args.split,
                                           operator=args.operator or "rlds", progress=not args.no_progress)
            else:
                written = lr.import_lerobot(args.dataset_dir, args.out, args.mapping, image_key=args.image_key,
                                            operator=args.operator or "lerobot", progress=not args.no_progress)
            print(f"imported {len(written)} episodes into {args.out}")
        elif rlds.is_rlds_dir(args.dataset_dir):
            print(json.dumps(rlds.describe(args.dataset_dir), indent=2))
        else:
            ds = lr.LeRobotDataset(args.dataset_dir)
            print(json.dumps({"codebase_version": ds.version, "fps": ds.fps, "episodes": len(ds.episodes),
                              "frames": sum(r.length for r in ds.episodes), "image_keys": ds.image_keys,
                              "features": {k: [f.get("dtype"), f.get("shape")] for k, f in ds.features.items()},
                              "tasks": len(ds.tasks)}, indent=2))
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"gf-data: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
