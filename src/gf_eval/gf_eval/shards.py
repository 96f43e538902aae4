"""`gf-eval-shards`: one simulated evaluation split into shards, run one after another or on a Ray cluster.

    gf-eval-shards --output-dir outputs/vla --trials 100 --protocols ID,Train,Val --shard-trials 25 \\
        --ray 10.0.0.5:6379 policy:=remote backend_args:='{url: ws://gpu-host:8765}'

A shard is one protocol's range of trial indices, evaluated by one ``gf-launch sim_eval`` graph
(``first_index``/``trials``) into ``OUTPUT_DIR/shards/<protocol>-<first>-<count>/`` on a ROS domain
of its own: each shard claims a free domain with a lock file on its machine, so concurrent shards
never meet. Finished shards are merged into ``OUTPUT_DIR/results.jsonl`` in a fixed order
(protocol, trial index), one record per trial id, whatever order the shards finished in.

Lost workers: Ray re-runs a shard whose worker died. The shard's graph dies with its worker, and
the shard's lock (held by the graph's process too) makes the retry wait until it is gone; the
retry then resumes the shard's results file (crash-safe, one fsynced line per trial). Trials are
pure functions of their spec, so a trial that ran twice is kept once, and the merge refuses to
write a result set with a trial missing. Put ``OUTPUT_DIR`` on storage every worker sees for
retries to resume; otherwise a retried shard starts over, still merging to the same results.

A shard's graph runs composed (``gf-launch --composed``: sim bridge, policy and evaluator in one
process): Ray gives a shard one CPU, and a lock-step graph, whose nodes take turns, keeps about
one core busy either way; in one process it saves the hops between processes and two interpreter
start-ups (``gf-bench shards`` measures both). ``--processes`` runs the nodes as separate processes,
as ``gf-launch`` does by default.

Without ``--ray`` the shards run here, one after another. ``gf-sweep RUN_DIR --ray`` uses the same
shards for every checkpoint of a training run at once.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gf_bringup.domains import claim_domain
from gf_bringup.runtime import console_script
from gf_eval.results import RESULTS_FILE, RUN_FILE, ResultsFile, TrialRecord

SHARDS_DIR = "shards"
LOCK_FILE = ".shard.lock"
# Arguments the shard plan sets on every graph; users give them as options instead.
PLANNED_ARGS = ("protocols", "trials", "first_index", "output_dir")
PROGRESS_EVERY_S = 2.0
DEFAULT_RETRIES = 3  # re-runs of a shard whose worker died

Progress = Callable[[str], None]


class ShardError(RuntimeError):
    """A shard failed, or the merged results would be incomplete."""


@dataclass(frozen=True)
class Shard:
    """One ``gf-launch sim_eval`` graph: trials ``first_index`` .. ``first_index + trials - 1`` of ``protocol``."""

    output_dir: Path  # the evaluation's directory; the shard runs in a subdirectory of it
    protocol: str
    first_index: int
    trials: int
    launch_args: tuple[str, ...] = ()  # NAME:=VALUE for gf-launch sim_eval (policy, backend_args, ...)
    composed: bool = True  # the graph's nodes in one process (gf-launch --composed)

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.first_index:04d}-{self.trials}"

    @property
    def key(self) -> str:
        return f"{self.output_dir}/{self.name}"

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) / SHARDS_DIR / self.name

    def owns(self, record: dict) -> bool:
        return record["protocol"] == self.protocol and self.first_index <= record["index"] < self.first_index + self.trials

    def command(self, gf_launch: str) -> list[str]:
        return [gf_launch, "sim_eval", *(["--composed"] if self.composed else []), *self.launch_args,
                f"protocols:=[{self.protocol}]",
                f"first_index:={self.first_index}", f"trials:={self.trials}", f"output_dir:={self.directory}"]


def plan_shards(output_dir: str | Path, launch_args: Sequence[str], protocols: Sequence[str], trials: int,
                shard_trials: int, first_index: int = 0, composed: bool = True) -> list[Shard]:
    """Every protocol's ``trials`` trials from ``first_index`` on, in shards of ``shard_trials``."""
    if trials < 1 or shard_trials < 1:
        raise ValueError("trials and shard_trials must be positive")
    for arg in launch_args:
        if arg.partition(":=")[0] in PLANNED_ARGS:
            raise ValueError(f"{arg!r}: {', '.join(PLANNED_ARGS)} are set by the shard plan")
    return [Shard(Path(output_dir), p, start, min(shard_trials, first_index + trials - start), tuple(launch_args), composed)
            for p in protocols for start in range(first_index, first_index + trials, shard_trials)]


# ---------------------------------------------------------------------------------------------
# running one shard (on whichever machine it lands)
# ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the shard runner dies, even by SIGKILL (Linux), so a
    lost worker's graph stops instead of racing its retry."""
    import ctypes
    import signal

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[int | None]:
    """An exclusive ``flock`` on ``path``: yields its fd, or None when not blocking and taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def shard_records(shard: Shard) -> list[dict]:
    """The shard's recorded trials, one per trial id."""
    seen: dict[str, dict] = {}
    for r in ResultsFile(shard.directory).read():
        d = r.to_dict()
        if shard.owns(d):
            seen.setdefault(d["trial_id"], d)
    return list(seen.values())


def run_shard(shard: Shard, gf_launch: str | None = None, report: Callable[[int], None] | None = None,
              timeout_s: float | None = None) -> list[dict]:
    """Evaluate the shard (resuming what it already holds); returns its records."""
    gf_launch = gf_launch or console_script("gf-launch")
    shard.directory.mkdir(parents=True, exist_ok=True)
    # The graph inherits both locks: they outlive this process while the graph still runs.
    with _locked(shard.directory / LOCK_FILE) as shard_lock:
        if len(shard_records(shard)) >= shard.trials:
            return shard_records(shard)
        domain, domain_lock = claim_domain()
        try:
            env = {**os.environ, "ROS_DOMAIN_ID": str(domain)}
            log_path = shard.directory / "launch.log"
            started = time.monotonic()
            with open(log_path, "ab") as log:
                log.write(("$ ROS_DOMAIN_ID=%d %s\n" % (domain, " ".join(shard.command(gf_launch)))).encode())
                log.flush()
                proc = subprocess.Popen(shard.command(gf_launch), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=_die_with_parent, pass_fds=(shard_lock, domain_lock))
                while True:
                    try:
                        code = proc.wait(timeout=PROGRESS_EVERY_S)
                        break
                    except subprocess.TimeoutExpired:
                        if report is not None:
                            report(len(shard_records(shard)))
                        if timeout_s is not None and time.monotonic() - started > timeout_s:
                            proc.terminate()
                            proc.wait()
                            raise ShardError(f"shard {shard.name} exceeded {timeout_s} s (log: {log_path})") from None
        finally:
            os.close(domain_lock)  # the graph holds its own copy while it runs
    records = shard_records(shard)
    if report is not None:
        report(len(records))
    if code != 0 or len(records) < shard.trials:
        raise ShardError(f"shard {shard.name}: gf-launch exited with {code} after {len(records)}/{shard.trials} "
                         f"trials (log: {log_path})")
    return records


# ---------------------------------------------------------------------------------------------
# merging
# ---------------------------------------------------------------------------------------------


def merge_results(output_dir: str | Path, shards: Sequence[Shard], records: dict[str, list[dict]],
                  protocols: Sequence[str] | None = None) -> list[dict]:
    """Write ``OUTPUT_DIR/results.jsonl`` from the shards' records: one record per trial id, ordered
    by protocol then trial index; refuses if any shard's trial is missing."""
    output_dir = Path(output_dir)
    order = {p: i for i, p in enumerate(protocols or dict.fromkeys(s.protocol for s in shards))}
    merged: dict[str, dict] = {}
    for shard in shards:
        got = {r["trial_id"]: r for r in records.get(shard.key, []) if shard.owns(r)}
        indices = {r["index"] for r in got.values()}
        missing = [i for i in range(shard.first_index, shard.first_index + shard.trials) if i not in indices]
        if missing:
            raise ShardError(f"shard {shard.name} lacks trial indices {missing}: not merging incomplete results")
        for trial_id, r in got.items():
            merged.setdefault(trial_id, r)
    ordered = sorted(merged.values(), key=lambda r: (order.get(r["protocol"], len(order)), r["protocol"], r["index"]))
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / (RESULTS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(TrialRecord.from_dict(r).to_dict(), ensure_ascii=False) + "\n" for r in ordered),
                   encoding="utf-8")
    os.replace(tmp, output_dir / RESULTS_FILE)
    first_run = next((s.directory / RUN_FILE for s in shards if (s.directory / RUN_FILE).exists()), None)
    if first_run is not None and not (output_dir / RUN_FILE).exists():
        shutil.copyfile(first_run, output_dir / RUN_FILE)  # identity (policy, split, seed) is the same in every shard
    return ordered


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


@dataclass
class ProgressBoard:
    """Trials done per shard, and a progress line with the rate and an ETA."""

    total: int
    done: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    initial: int | None = None  # trials already recorded when the run started (resumed shards)

    def update(self, key: str, count: int) -> None:
        self.done[key] = max(count, self.done.get(key, 0))

    def line(self, shards_done: int, shards: int) -> str:
        done = sum(self.done.values())
        if self.initial is None:
            self.initial = done
        elapsed = time.monotonic() - self.started
        new = done - self.initial
        rate = new / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - done) / rate / 60:.1f} min" if rate > 0 and done < self.total else ("0 min" if done >= self.total else "unknown")
        return (f"[shards] {shards_done}/{shards} shards, {done}/{self.total} trials, "
                f"{3600 * rate:.0f} trials/h, ETA {eta}")


def run_shards(shards: Sequence[Shard], ray_address: str | None = None, gf_launch: str | None = None,
               progress: Progress | None = None, retries: int = DEFAULT_RETRIES,
               timeout_s: float | None = None) -> dict[str, list[dict]]:
    """Run every shard, here one after another (``ray_address`` None) or as Ray tasks
    (``ray_address`` '' = a Ray already initialised in this process, else a local loopback Ray;
    'auto' or HOST:PORT = that cluster). Returns each shard's records by ``Shard.key``."""
    say = progress or (lambda line: None)
    board = ProgressBoard(sum(s.trials for s in shards))
    results: dict[str, list[dict]] = {}
    if ray_address is None:
        for shard in shards:
            def report(count: int, key: str = shard.key) -> None:
                board.update(key, count)
            results[shard.key] = run_shard(shard, gf_launch, report, timeout_s)
            say(board.line(len(results), len(shards)))
        return results
    return _run_on_ray(shards, ray_address, gf_launch, say, board, retries, timeout_s)


def network_interfaces_beyond_loopback() -> list[str]:
    """Network interfaces of this network namespace other than loopback that have an address."""
    import psutil

    return sorted(name for name, addrs in psutil.net_if_addrs().items()
                  if name != "lo" and any(a.family.name in ("AF_INET", "AF_INET6") for a in addrs))


def connect_ray(address: str) -> None:
    """Use the Ray of this process, or connect to ``address``, or start a local Ray -- only in a
    network namespace with nothing but loopback: Ray's servers listen on every interface (it
    resolves 127.0.0.1 to the machine's address and binds gRPC to ``::``), so ``_node_ip_address``
    cannot keep a local Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
        return
    beyond = network_interfaces_beyond_loopback()
    if beyond:
        raise ShardError(f"a local Ray would listen on {', '.join(beyond)} too; run it in a loopback-only network "
                         "namespace (unshare -rn sh -c 'ip link set lo up; exec gf-eval-shards ... --ray') "
                         "or give the ADDRESS of a Ray cluster")
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")


def _run_on_ray(shards: Sequence[Shard], address: str, gf_launch: str | None, say: Progress, board: ProgressBoard,
                retries: int, timeout_s: float | None) -> dict[str, list[dict]]:
    import ray

    connect_ray(address)

    @ray.remote(num_cpus=0)
    class Board:
        """Trial counts reported by the shards, read by the driver (a cluster-wide view)."""

        def __init__(self) -> None:
            self.counts: dict[str, int] = {}

        def update(self, key: str, count: int) -> None:
            self.counts[key] = max(count, self.counts.get(key, 0))

        def snapshot(self) -> dict[str, int]:
            return dict(self.counts)

    @ray.remote(num_cpus=1, max_retries=retries)
    def shard_task(shard: Shard, gf_launch: str | None, board: Any, timeout_s: float | None) -> list[dict]:
        return run_shard(shard, gf_launch, lambda count: board.update.remote(shard.key, count), timeout_s)

    counts = Board.remote()
    pending = {shard_task.remote(s, gf_launch, counts, timeout_s): s for s in shards}
    results: dict[str, list[dict]] = {}
    last = ""
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY_S)
            for ref in ready:
                shard = pending.pop(ref)
                try:
                    results[shard.key] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise ShardError(f"shard {shard.name} failed: {exc}") from exc
                board.update(shard.key, len(results[shard.key]))
            for key, count in ray.get(counts.snapshot.remote()).items():
                board.update(key, count)
            line = board.line(len(results), len(shards))
            if line != last:
                say(line)
                last = line
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.kill(counts)
    return results


def evaluate_sharded(output_dir: str | Path, launch_args: Sequence[str], protocols: Sequence[str], trials: int,
                     shard_trials: int, first_index: int = 0, ray_address: str | None = None,
                     gf_launch: str | None = None, progress: Progress | None = None,
                     timeout_s: float | None = None, composed: bool = True) -> list[dict]:
    """Plan, run and merge one evaluation; returns the merged records."""
    shards = plan_shards(output_dir, launch_args, protocols, trials, shard_trials, first_index, composed)
    records = run_shards(shards, ray_address, gf_launch, progress, timeout_s=timeout_s)
    return merge_results(output_dir, shards, records, protocols)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and ``--processes``, shared by gf-eval-shards and gf-sweep."""
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="run the shards as Ray tasks: on the cluster at ADDRESS ('auto': the one this machine "
                             "belongs to), or without ADDRESS on a Ray started here (only inside a loopback-only "
                             "network namespace: a local Ray listens on every interface)")
    parser.add_argument("--processes", action="store_true",
                        help="run each shard's nodes as separate processes (default: composed in one process, "
                             "gf-launch --composed)")


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-eval-shards``."""
    parser = argparse.ArgumentParser(prog="gf-eval-shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("launch_args", nargs="*", metavar="NAME:=VALUE",
                        help="gf-launch sim_eval arguments for every shard (policy:=..., backend_args:=..., seed:=...)")
    parser.add_argument("--output-dir", type=Path, required=True, help="the evaluation's results directory")
    parser.add_argument("--protocols", default="ID,Train,Val", help="comma-separated (default ID,Train,Val)")
    parser.add_argument("--trials", type=int, default=100, help="trials per protocol (default 100)")
    parser.add_argument("--first-index", type=int, default=0, help="index of the first trial of each protocol")
    parser.add_argument("--shard-trials", type=int, default=25, help="trials per shard (default 25)")
    parser.add_argument("--gf-launch", help="the gf-launch executable (default: this environment's)")
    parser.add_argument("--timeout", type=float, help="seconds allowed per shard")
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    try:
        records = evaluate_sharded(args.output_dir, args.launch_args, protocols, args.trials, args.shard_trials,
                                   args.first_index, args.ray, args.gf_launch,
                                   lambda line: print(line, file=sys.stderr, flush=True), args.timeout,
                                   composed=not args.processes)
    except (ShardError, ValueError) as exc:
        print(f"gf-eval-shards: {exc}", file=sys.stderr)
        return 1
    from gf_eval.scoring import summarize

    for protocol, summary in summarize(records).items():
        print(f"{protocol}: {summary.trials} trials, overall SR {summary.overall.value:.3f}")
    print(f"results: {Path(args.output_dir) / RESULTS_FILE}")
    return 0


# ---------------------------------------------------------------------------------------------
# gf-bench shards
# ---------------------------------------------------------------------------------------------


def bench_main(argv: list[str] | None = None) -> int:
    """gf-bench shards: oracle trials/hour with 2 shards vs. 1 shard on a local Ray (2 CPUs).

    Both run the same Val trials through gf-launch graphs as Ray tasks, graph start-up included
    (that is what a shard costs), with the shards' graphs composed (the default) and as separate
    processes; the local Ray runs in a loopback-only network namespace.
    """
    parser = argparse.ArgumentParser(prog="gf-bench shards", description=bench_main.__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="Val trials per run (default 100)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of 2 shards and 1 shard (default 1)")
    parser.add_argument("--modes", default="composed,processes", help="graph modes to measure (default composed,processes)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"composed", "processes"}:
        parser.error("--modes: composed and/or processes")
    if network_interfaces_beyond_loopback():
        if shutil.which("unshare") is None:
            print("gf-bench shards: needs unshare (util-linux) for a loopback-only network namespace", file=sys.stderr)
            return 1
        code = "import sys; from gf_eval.shards import bench_main; sys.exit(bench_main(sys.argv[1:]))"
        return subprocess.call(["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable,
                                "-c", code, *(argv if argv is not None else sys.argv[2:])])
    import statistics

    import ray

    os.environ["RAY_ADDRESS"] = ""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    rates: dict[tuple[str, int], list[float]] = {(m, n): [] for m in modes for n in (2, 1)}
    try:
        for _ in range(args.rounds):
            for mode, shards in rates:
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    evaluate_sharded(tmp, ["policy:=oracle"], ["Val"], args.trials, -(-args.trials // shards), ray_address="",
                                     composed=mode == "composed")
                    rates[mode, shards].append(3600 * args.trials / (time.perf_counter() - start))
    finally:
        ray.shutdown()
    print(f"gf-bench shards: oracle, {args.trials} Val trials per run, {args.rounds} round(s), local Ray with 2 CPUs "
          f"({os.cpu_count()} cores), graph start-up included")
    for mode in modes:
        two, one = statistics.median(rates[mode, 2]), statistics.median(rates[mode, 1])
        print(f"  {mode:<10} 2 shards               {two:7.0f} trials/h  (runs: {', '.join(f'{r:.0f}' for r in rates[mode, 2])})")
        print(f"  {mode:<10} 1 shard  [reference]   {one:7.0f} trials/h  (runs: {', '.join(f'{r:.0f}' for r in rates[mode, 1])})")
        print(f"  {mode:<10} speed-up: {two / one:.2f}x (the issue asks >= 1.6x)")
    return 0
