"""`gf-bench NAME`: speed and memory benchmarks, each next to its reference measured in the same run.

Benchmarks are registered by the packages under the ``gf.bench`` entry-point group; each is a
``main(argv) -> int`` that prints its figures and the reference they compare with.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

from gf_bringup.runtime import configure_environment


def registered() -> dict[str, object]:
    return {e.name: e for e in sorted(entry_points(group="gf.bench"), key=lambda e: e.name)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    benches = registered()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in benches:
        print("usage: gf-bench NAME [ARGS]   (gf-bench NAME --help for its options)\n\nbenchmarks:")
        for name, ep in benches.items():
            doc = (sys.modules.get(ep.module) or __import__(ep.module, fromlist=["_"])).__doc__ or ""
            print(f"  {name:8s} {doc.strip().splitlines()[0] if doc.strip() else ''}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    configure_environment()
    return int(benches[argv[0]].load()(argv[1:]) or 0)
