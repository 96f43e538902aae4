"""Pick ROS domains nobody on this machine is using (for long multi-graph runs).

Every run of the project picks a random ROS_DOMAIN_ID out of about a hundred; over a long demo
generation with several worker graphs, another run on the same machine landing on a worker's
domain is likely enough to matter (its nodes then talk to the worker's nodes). Listening on a
candidate domain for a moment and taking it only when no other node shows up makes that rare.

Processes of this project also hold a lock file per domain they use (``claim_domain``): tests,
gf-launch and evaluation shards on one machine never pick the same domain, with no listening.

Run as a module so the caller needs no rclpy:
``python -m gf_bringup.domains --count 2 [--exclude 17 42]`` prints free domain ids.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gf_bringup.runtime import configure_environment

PROBE_NODE = "gf_domain_probe"
CANDIDATES = range(1, 102)  # the range gf_bringup.runtime.random_domain_id draws from
LOCK_DIR = Path(tempfile.gettempdir()) / f"gf-ros-domains-{os.getuid()}"


def probe(domains: list[int], listen_s: float = 2.0) -> dict[int, list[str]]:
    """Other nodes seen on each domain after listening ``listen_s`` seconds."""
    import rclpy
    from rclpy.context import Context

    configure_environment()
    probes = []
    for d in domains:
        context = Context()
        rclpy.init(context=context, domain_id=d)
        probes.append((d, context, rclpy.create_node(f"{PROBE_NODE}_{d}", context=context)))
    time.sleep(listen_s)
    seen = {}
    for d, context, node in probes:
        seen[d] = sorted(f"{ns.rstrip('/')}/{n}" for n, ns in node.get_node_names_and_namespaces()
                         if not n.startswith(PROBE_NODE))
        node.destroy_node()
        rclpy.shutdown(context=context)
    return seen


def free_domains(count: int, exclude: set[int] = frozenset(), listen_s: float = 2.0, rng: random.Random | None = None) -> list[int]:
    """``count`` domain ids without other nodes on them (random order, ``exclude`` left out)."""
    rng = rng or random.SystemRandom()
    candidates = [d for d in CANDIDATES if d not in exclude]
    rng.shuffle(candidates)
    found: list[int] = []
    while len(found) < count and candidates:
        batch, candidates = candidates[:count - len(found) + 2], candidates[count - len(found) + 2:]
        found += [d for d, nodes in probe(batch, listen_s).items() if not nodes]
    if len(found) < count:
        raise RuntimeError(f"found only {len(found)} free ROS domains")
    return found[:count]


def free_domains_subprocess(count: int, exclude: set[int] = frozenset(), timeout_s: float = 60.0) -> list[int]:
    """``free_domains`` in a child process (keeps rclpy and its signal handlers out of the caller)."""
    cmd = [sys.executable, "-m", "gf_bringup.domains", "--count", str(count)]
    if exclude:
        cmd += ["--exclude", *map(str, sorted(exclude))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ), check=True)
    return [int(v) for v in out.stdout.split()]


def lock_domain(domain: int) -> int | None:
    """Take ``domain``'s lock for this process: the lock's fd (closing it, or exiting, releases
    it; a child given the fd keeps it), or None when another process holds it."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_DIR / f"{domain}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_domain(probe: bool = True) -> tuple[int, int]:
    """A domain no other process of this project holds, and with ``probe`` on which no node
    shows up either (two seconds of listening): returns (domain id, its lock fd)."""
    while True:
        candidates = random.sample(list(CANDIDATES), min(3, len(CANDIDATES)))
        if probe:
            try:
                candidates = free_domains_subprocess(3)
            except (subprocess.SubprocessError, RuntimeError, ValueError, OSError):
                pass
        for domain in candidates:
            fd = lock_domain(domain)
            if fd is not None:
                return domain, fd
        time.sleep(random.uniform(0.2, 1.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gf_bringup.domains", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1, help="how many free domains to print")
    parser.add_argument("--exclude", type=int, nargs="*", default=[], help="domains not to use")
    parser.add_argument("--listen", type=float, default=2.0, help="seconds to listen on each candidate")
    args = parser.parse_args(argv)
    print(" ".join(map(str, free_domains(args.count, set(args.exclude), args.listen))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
