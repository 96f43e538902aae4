"""Demo generation: the scripted expert in the simulator, through the real ROS graph, recorded.

``generate`` runs K worker graphs at once (``gf-launch demos``: sim bridge + policy + eval node
+ recorder), each on a ROS domain nobody else on the machine uses (checked before every launch),
over disjoint blocks of ``Demo`` trial indices. Every episode's outcome is kept (failures too).
An episode is recorded again, up to ``max_attempts`` times, when its recording is incomplete (a
crash, a lost camera frame) or when it did not end in the simulator (a policy timeout says
nothing about the expert: the graph was stuck). A block whose graph produces a policy timeout
is stopped at once and its remaining trials go to a fresh graph, instead of waiting out one
timeout per trial. Re-running the same command resumes: trials with a complete episode that
ended in the simulator are not run again. SIGINT and SIGTERM stop the workers cleanly.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.domains import claim_domain
from gf_bringup.runtime import console_script
from gf_eval.scoring import SIM_END_REASONS
from gf_eval.trials import make_trial
from gf_teleop import episodes as ep
from gf_teleop.recording import recover

CONFIG_FILE = "generation.json"
WORK_DIR = ".work"
IDENTITY = ("protocol", "base_seed", "split_file", "image_size", "robot", "policy", "backend_args", "ground_truth")
SPLIT_PROTOCOLS = {"train": "Demo"}  # --split train: the fine-tuning set on Train emojis


@dataclass
class GenerationConfig:
    out: str
    episodes: int = 500
    workers: int = 2
    split: str = "train"
    base_seed: int = 0
    first_index: int = 0
    block_size: int = 50
    policy: str = "oracle"
    backend_args: str = ""
    image_size: int = 224
    robot: str = "widowx"
    split_file: str = DEFAULT_SPLIT
    max_attempts: int = 3
    operator: str = "scripted-expert"
    policy_timeout_s: float = 60.0
    ground_truth: bool = False  # also record /gf/sim_state in every bag

    @property
    def protocol(self) -> str:
        return SPLIT_PROTOCOLS[self.split]


@dataclass
class GenerationReport:
    planned: int = 0
    complete: int = 0
    successful: int = 0
    ran_now: int = 0
    wall_time_s: float = 0.0
    failed_indices: list[int] = field(default_factory=list)
    incomplete_indices: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successful / self.complete if self.complete else float("nan")

    def seconds_per_episode(self) -> float:
        return self.wall_time_s / self.ran_now if self.ran_now else float("nan")


def trial_ids(config: GenerationConfig) -> dict[int, str]:
    """Trial index -> trial id of the planned episodes."""
    from gf_eval.splits import load_splits

    splits = load_splits(config.split_file)
    return {i: make_trial(config.protocol, i, config.base_seed, splits).trial_id
            for i in range(config.first_index, config.first_index + config.episodes)}


def finished(entry: ep.EpisodeEntry) -> bool:
    """A recording that counts: complete, and the episode ended in the simulator."""
    return entry.complete and entry.outcome.get("reason") in SIM_END_REASONS  # anything else is re-run


def status_of(out: Path, ids: dict[int, str]) -> dict[int, ep.EpisodeEntry]:
    """Planned index -> its finished manifest entry (indices without one are pending)."""
    by_trial: dict[str, ep.EpisodeEntry] = {}
    for entry in ep.read_manifest(out) if out.is_dir() else []:
        spec = entry.trial_spec if finished(entry) else None
        if spec is not None:
            by_trial[spec.trial_id] = entry
    return {i: by_trial[t] for i, t in ids.items() if t in by_trial}


def stuck_in(out: Path, ids: dict[int, str], since: float) -> list[int]:
    """Indices of ``ids`` recorded since ``since`` (epoch s) as policy timeouts."""
    by_id = {t: i for i, t in ids.items()}
    stuck = []
    for entry in ep.read_manifest(out) if out.is_dir() else []:
        spec = entry.trial_spec
        if (spec is not None and spec.trial_id in by_id and entry.outcome.get("reason") == "policy_timeout"
                and entry.extra.get("recorded_at_epoch", 0) >= since):
            stuck.append(by_id[spec.trial_id])
    return sorted(set(stuck))


def blocks_of(indices: list[int], size: int) -> list[tuple[int, int]]:
    """Contiguous runs of sorted indices cut into (first, count) blocks of at most ``size``."""
    out: list[tuple[int, int]] = []
    for i in sorted(indices):
        if out and out[-1][0] + out[-1][1] == i and out[-1][1] < size:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def check_config(out: Path, config: GenerationConfig, force: bool = False) -> None:
    """Record the generation settings, or refuse to resume a directory made with others."""
    path = out / CONFIG_FILE
    mine = {**asdict(config), "protocol": config.protocol}
    if path.exists() and not force:
        old = json.loads(path.read_text(encoding="utf-8"))
        # A setting added after a directory was made holds its default there.
        defaults = {f.name: f.default for f in fields(GenerationConfig)}
        diff = {k: (old.get(k, defaults.get(k)), mine.get(k)) for k in IDENTITY if old.get(k, defaults.get(k)) != mine.get(k)}
        if diff:
            raise ValueError(f"{out} holds demos generated with other settings ({diff}); use another --out or --force")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=2) + "\n", encoding="utf-8")


def _launch_command(config: GenerationConfig, first: int, count: int, eval_dir: Path) -> list[str]:
    exe = console_script("gf-launch")
    args = {
        "policy": config.policy, "backend_args": config.backend_args, "protocols": f"[{config.protocol}]",
        "trials": str(count), "first_index": str(first), "seed": str(config.base_seed), "split": config.split_file,
        "image_size": str(config.image_size), "robot": config.robot, "demo_dir": str(Path(config.out).resolve()),
        "output_dir": str(eval_dir.resolve()), "operator": config.operator, "policy_timeout": str(config.policy_timeout_s),
        "record_ground_truth": str(config.ground_truth).lower(),
    }
    return [exe, "demos", *(f"{k}:={v}" for k, v in args.items())]


class _Workers:
    """K threads, each running one worker graph at a time on a free ROS domain."""

    def __init__(self, config: GenerationConfig, out: Path):
        self.config, self.out = config, out
        self.tasks: queue.Queue = queue.Queue()
        self.procs: dict[int, subprocess.Popen] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.restarts = 0
        self.lock = threading.Lock()
        self.active = 0

    def run_block(self, worker: int, first: int, count: int, attempt: int) -> tuple[int, float]:
        """Run one block's graph; returns its exit code and its start time (epoch s)."""
        work = self.out / WORK_DIR
        eval_dir = work / "eval" / f"{first:04d}-{first + count - 1:04d}-a{attempt}"
        shutil.rmtree(eval_dir, ignore_errors=True)
        log_path = work / "logs" / f"worker-{worker}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # A domain without other nodes that no other worker or project process holds.
        domain, domain_lock = claim_domain()
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
        ids = {i: t for i, t in trial_ids(self.config).items() if first <= i < first + count}
        started = time.time()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== block {first}..{first + count - 1} attempt {attempt} (domain {domain}) ===\n")
            log.flush()
            proc = subprocess.Popen(_launch_command(self.config, first, count, eval_dir), stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
            with self.lock:
                self.procs[worker] = proc
            try:
                while proc.poll() is None:
                    try:
                        proc.wait(timeout=2.0)
                    except subprocess.TimeoutExpired:
                        pass
                    if proc.poll() is None and stuck_in(self.out, ids, started):
                        # One policy timeout from the scripted expert means the graph is stuck: do
                        # not wait out a timeout per remaining trial; requeue them instead.
                        log.write(f"=== policy timeout in block {first}..{first + count - 1}: stopping its graph ===\n")
                        log.flush()
                        _stop(proc)
                        with self.lock:
                            self.restarts += 1
                        return 0, started
            finally:
                with self.lock:
                    self.procs.pop(worker, None)
                os.close(domain_lock)
        return proc.returncode, started

    def loop(self, worker: int) -> None:
        while not self.stop.is_set():
            try:
                first, count, attempt = self.tasks.get(timeout=0.2)
            except queue.Empty:
                with self.lock:
                    if self.active == 0 and self.tasks.empty():
                        return
                continue
            with self.lock:
                self.active += 1
            try:
                code, started = self.run_block(worker, first, count, attempt)
                if code != 0 and not self.stop.is_set():
                    self.errors.append(f"block {first}..{first + count - 1} (attempt {attempt}) exited with {code}; "
                                       f"see {self.out / WORK_DIR / 'logs' / f'worker-{worker}.log'}")
                if not self.stop.is_set():
                    self.requeue(first, count, attempt, started)
            finally:
                with self.lock:
                    self.active -= 1

    def requeue(self, first: int, count: int, attempt: int, started: float) -> None:
        """Queue the block's trials that still lack a finished episode.

        A trial that failed (stuck, incomplete recording) uses up an attempt. When the graph was
        stopped because one trial got stuck, the trials after it never ran: they keep theirs.
        """
        recover(self.out)  # salvage bags of a crashed recorder (they count as incomplete)
        ids = {i: t for i, t in trial_ids(self.config).items() if first <= i < first + count}
        missing = [i for i in ids if i not in status_of(self.out, ids)]
        stuck = stuck_in(self.out, ids, started)
        if stuck:
            never_ran = [i for i in missing if i > max(stuck)]
            failed = [i for i in missing if i <= max(stuck)]
        else:
            never_ran, failed = [], missing
        if attempt < self.config.max_attempts:
            for block in blocks_of(failed, self.config.block_size):
                self.tasks.put((*block, attempt + 1))
        for block in blocks_of(never_ran, self.config.block_size):
            self.tasks.put((*block, attempt))

    def terminate(self) -> None:
        self.stop.set()
        with self.lock:
            procs = list(self.procs.values())
        for p in procs:
            _stop(p)


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop a worker graph: SIGINT (gf-launch stops its nodes cleanly), SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def generate(config: GenerationConfig, progress: bool = True, force: bool = False) -> GenerationReport:
    """Generate (or finish generating) the demo set; see the module docstring."""
    from tqdm import tqdm

    out = Path(config.out)
    if config.split not in SPLIT_PROTOCOLS:
        raise ValueError(f"--split {config.split!r}: expected one of {sorted(SPLIT_PROTOCOLS)}")
    check_config(out, config, force=force)
    for entry in recover(out):
        print(f"recovered an interrupted recording: {entry.bag} (incomplete)", file=sys.stderr)
    ids = trial_ids(config)
    done = status_of(out, ids)
    pending = [i for i in ids if i not in done]
    report = GenerationReport(planned=len(ids))
    started = time.monotonic()
    if pending:
        workers = max(1, min(config.workers, len(pending)))
        size = max(1, min(config.block_size, math.ceil(len(pending) / workers)))
        pool = _Workers(config, out)
        for block in blocks_of(pending, size):
            pool.tasks.put((*block, 1))
        threads = [threading.Thread(target=pool.loop, args=(k,), daemon=True) for k in range(workers)]
        # Not on a terminal (a log file): a line every 30 s instead of a redrawn bar.
        bar = tqdm(total=len(ids), initial=len(done), desc="demos", unit="ep", disable=not progress,
                   file=sys.stderr, smoothing=0.1, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
        print(f"{len(pending)} of {len(ids)} episodes to generate with {workers} worker(s) "
              f"(blocks of {size}); logs in {out / WORK_DIR / 'logs'}", file=sys.stderr)
        for t in threads:
            t.start()
        # SIGTERM (kill, a job scheduler) stops the workers as cleanly as Ctrl-C does.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(1.0)
                now = status_of(out, ids)
                ok = sum(e.success for e in now.values())
                bar.set_postfix_str(f"success {ok}/{len(now)}", refresh=False)
                bar.update(len(now) - bar.n)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the workers (run the same command again to resume)", file=sys.stderr)
            pool.terminate()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
        for error in pool.errors:
            print(f"warning: {error}", file=sys.stderr)
    final = status_of(out, ids)
    report.complete = len(final)
    report.successful = sum(e.success for e in final.values())
    report.ran_now = len(final) - len(done)
    report.wall_time_s = time.monotonic() - started
    report.failed_indices = sorted(i for i, e in final.items() if not e.success)
    report.incomplete_indices = sorted(i for i in ids if i not in final)
    history = out / WORK_DIR / "runs.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a", encoding="utf-8") as f:
        f.write(json.dumps({**asdict(report), "workers": config.workers, "finished": time.time()}) + "\n")
    return report
