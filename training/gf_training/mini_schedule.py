"""`gf-mini run-comparison`: every run the comparison needs, in dependency order, N at a time.

The comparison (issue 18) is a dozen ``gf-mini run`` commands that depend on each other: every
row needs the catalogue tokenizer and the Train demos, the VLM rows start from the mini VLM
(each of whose stages starts from the one before), ``vlapre-full`` from the robot pre-training
(which starts from the VLM), and the rows that decide a conclusion train a second seed::

    tokenizer ──> vlm-names ──> vlm-table ──> vlm ──┬──> vla-pretrain ──> vlapre-full
                                                    └──> vlm-full, vlm-lora, vlm-action, cotrain-full, ...
    demos ─────────────────────────────────────────────> every row (scratch-full needs nothing else)

Each job is the resumable command a user would type (``gf-mini run ROW --seed N``), run in its
own process with its output in ``runs/mini/comparison/logs/<job>.log``; a finished job is not
started again, so the same command continues an interrupted comparison. A job starts once every
job it needs has succeeded; a failure skips what needs it and the rest go on. At the end the
comparison is written (``gf-mini compare``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gf_bringup.runtime import console_script
from gf_training.mini_comparison import COMPARISON_DIR, CONTROL, DECIDING_ROWS, comparison_rows, write_comparison
from gf_training.mini_plan import RECIPES, RUN_ROOT, Plan
from gf_training.mini_report import _clock
from gf_training.mini_stages import stages

LOG_DIR = "logs"  # under runs/mini/comparison/


@dataclass(frozen=True)
class Job:
    """One ``gf-mini run`` of the comparison: a recipe (with a seed), or only some of its stages."""

    name: str  # the run directory's name for a row; what the job makes otherwise ("demos")
    recipe: str
    seed: int = 0
    stages: tuple[str, ...] = ()  # empty: every stage of the recipe
    needs: tuple[str, ...] = ()  # names of the jobs that must succeed first

    def plan(self, root: Path) -> Plan:
        recipe = RECIPES[self.recipe]
        return Plan(recipe, root, recipe.demo_episodes, recipe.sweep_trials, recipe.eval_trials, seed=self.seed)

    def command(self, root: Path) -> list[str]:
        return [console_script("gf-mini"), "run", self.recipe, "--root", str(root),
                *(["--seed", str(self.seed)] if self.seed else []),
                *(["--stages", ",".join(self.stages)] if self.stages else [])]

    def done(self, root: Path) -> bool:
        chosen = [s for s in stages(self.plan(root)) if not self.stages or s.name in self.stages]
        return bool(chosen) and all(s.done() for s in chosen)  # no such stage: gf-mini will say so


def comparison_jobs(rows: Sequence[str] | None = None, seeds: int = 2) -> list[Job]:
    """The jobs of the comparison's ``rows`` (default: all), the deciding rows with ``seeds`` seeds
    and the others with one, in the order they should start: what the rows start from, then
    every row's first seed, then the second seeds."""
    recipes = [r for r in comparison_rows() if rows is None or r.name in rows]
    unknown = set(rows or ()) - {r.name for r in recipes}
    if unknown:
        raise ValueError(f"not rows of the comparison: {sorted(unknown)}")
    # The control's first stages make what every row shares.
    jobs = {"tokenizer": Job("tokenizer", CONTROL, stages=("tokenizer",)),
            "demos": Job("demos", CONTROL, stages=("demos",))}

    def base_job(name: str) -> str:
        if name not in jobs:
            base = RECIPES[name].base
            needs = ("tokenizer",) if base is None else (base_job(base),)
            jobs[name] = Job(name, name, needs=needs)
        return name

    for recipe in recipes:
        if recipe.base:
            base_job(recipe.base)
    # Every row's first seed before any second one: the scheduler starts the first ready job.
    for seed in range(max(seeds, 1)):
        for recipe in recipes:
            if seed == 0 or recipe.name in DECIDING_ROWS:
                name = Plan(recipe, Path("."), 0, 0, 0, seed=seed).run_dir.name  # runs/mini/<row>[_seedN]
                jobs[name] = Job(name, recipe.name, seed=seed,
                                 needs=("tokenizer", "demos", *([recipe.base] if recipe.base else [])))
    return list(jobs.values())


class Process(Protocol):
    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...


class JobProcess:
    """A job's ``gf-mini run`` in a process group of its own, so that stopping it also stops the
    training or evaluation it started (``gf-mini run`` waits on them, it does not forward signals)."""

    def __init__(self, command: list[str], log: Path):
        with open(log, "ab") as out:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def poll(self) -> int | None:
        return self.popen.poll()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        self.popen.wait()


def run_jobs(jobs: Sequence[Job], start: Callable[[Job], Process], limit: int,
             say: Callable[[str], None], is_done: Callable[[Job], bool] = lambda job: False,
             poll_s: float = 2.0) -> dict[str, int | None]:
    """Run ``jobs`` with at most ``limit`` at once, each after the jobs it needs succeeded.

    Returns each job's exit code: 0 for a job finished earlier (``is_done``), None for a job not
    started because something it needs failed. Interrupted (Ctrl-C, SIGTERM), it stops the
    running jobs, which resume from their last checkpoint or result when started again.
    """
    names = {job.name for job in jobs}
    for job in jobs:
        if missing := set(job.needs) - names:
            raise ValueError(f"job {job.name} needs {sorted(missing)}, which are not jobs")
    codes: dict[str, int | None] = {}
    running: dict[str, tuple[Process, float]] = {}
    pending = list(jobs)
    # Asked once per job, when it is first ready: reading a recipe's state takes a fraction of a
    # second, too much to repeat at every poll while the jobs waiting for a slot wait.
    not_done: set[str] = set()
    try:
        while pending or running:
            for name, (process, started) in list(running.items()):
                if (code := process.poll()) is not None:
                    codes[name] = code
                    del running[name]
                    say(f"[gf-mini] {name}: {'done' if code == 0 else f'failed with exit code {code}'} "
                        f"in {_clock(time.monotonic() - started)}")
            for job in list(pending):
                if any(n in codes and codes[n] != 0 for n in job.needs):
                    pending.remove(job)
                    codes[job.name] = None
                    say(f"[gf-mini] {job.name}: not started, it needs "
                        + ", ".join(n for n in job.needs if codes[n] != 0) + ", which did not succeed")
                elif not all(codes.get(n) == 0 for n in job.needs):
                    continue
                elif job.name not in not_done and is_done(job):
                    pending.remove(job)
                    codes[job.name] = 0
                    say(f"[gf-mini] {job.name}: finished earlier")
                else:
                    not_done.add(job.name)
                    if len(running) < limit:
                        pending.remove(job)
                        running[job.name] = (start(job), time.monotonic())
                        say(f"[gf-mini] {job.name}: started ({len(running)} running, {len(pending)} waiting)")
            if running:
                time.sleep(poll_s)
    finally:
        for name, (process, _) in running.items():
            say(f"[gf-mini] {name}: stopped")
            process.terminate()
    return codes


def run_comparison(root: Path, jobs: Sequence[Job], limit: int, dry_run: bool = False,
                   say: Callable[[str], None] = print) -> int:
    """``gf-mini run-comparison``: the jobs, then the comparison's table; 1 if any job failed."""
    if dry_run:
        for job in jobs:
            status = "done" if job.done(root) else "to run"
            needs = f" after {', '.join(job.needs)}" if job.needs else ""
            say(f"[gf-mini] {job.name} ({status}{needs}): {' '.join(job.command(root))}")
        return 0
    log_dir = root / RUN_ROOT / COMPARISON_DIR / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # through run_jobs' clean-up, as Ctrl-C goes

    say(f"[gf-mini] {len(jobs)} jobs, at most {limit} at once; logs in {log_dir}")
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        codes = run_jobs(jobs, lambda job: JobProcess(job.command(root), log_dir / f"{job.name}.log"), limit, say,
                         is_done=lambda job: job.done(root))
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [name for name, code in codes.items() if code != 0]
    say(f"[gf-mini] comparison jobs finished in {_clock(time.monotonic() - started)}"
        + (f"; not done: {', '.join(failed)} (the same command resumes them)" if failed else ""))
    say(write_comparison(root)["summary"].read_text(encoding="utf-8"))
    return 1 if failed else 0
