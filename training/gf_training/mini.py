"""`gf-mini run RECIPE`: a learned policy on the benchmark, end to end on a CPU.

One command runs the whole loop for a small ``PI0StyleVLA`` trained from scratch::

    demos     gf-demos generate --split train --episodes N --out demos/mini/train
    vl        gf-vl-data GENERATOR --scenes M --out vl/mini/GENERATOR   (co-training recipes only)
    train     gf-train mini/<recipe>.yaml output_dir=runs/mini/<recipe> data.demo_dirs=[...]
    sweep     gf-sweep runs/mini/<recipe> --trials S --protocols Val   (best checkpoint by Val overall SR)
    eval      gf-launch sim_eval policy:=vla ... protocols:=[ID,Train,Val,Hard] trials:=T
    report    runs/mini/<recipe>/report/: the paper's table (95 % Wilson intervals), success vs.
              training step, the loss curve, the wall time of every stage

The ``vlm`` recipe pre-trains the mini model's VLM instead (issue 18): ``tokenizer`` (gf-vl-data
tokenizer: every emoji's name), ``vl`` (glyphs, cards and which-card scenes of every catalogue
emoji), ``train`` (vision-language samples only), ``export`` (gf-vlm export: a PaliGemma
directory) and ``probe`` (gf-probe on the cards of every list).

Every stage skips finished work (enough demos in the manifest, the final checkpoint, complete
sweep and evaluation results) and the tools underneath resume interrupted work, so the same
command continues an interrupted recipe. ``--dry-run`` prints the commands. The stages show
their own progress bars with ETA; between stages gf-mini prints the elapsed time and an estimate
of the remaining time from the rates in ``ESTIMATED_RATES``.

The parts: ``mini_plan`` (the recipes, ``Plan``), ``mini_stages`` (what each stage runs and when
it is finished) and ``mini_report`` (the report); this module runs the stages and holds
``gf-mini``, and re-exports the others' names, so ``gf_training.mini`` still reaches everything.
The comparison of issue 18 has its own two: ``mini_comparison`` (``gf-mini compare``, the table
from the rows' files) and ``mini_schedule`` (``gf-mini run-comparison``, every run it needs).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gf_training.mini_plan import (
    DEMO_DIR,
    EVAL_DIR,
    EVAL_PROTOCOLS,
    MINI_CONFIG_DIR,
    PROBE_DIR,
    RECIPES,
    REPORT_DIR,
    RUN_ROOT,
    SEED_SUFFIX,
    STAGE_LOG,
    SWEEP_PROTOCOLS,
    VL_ROOT,
    Plan,
    Recipe,
    VLData,
)
from gf_training.mini_report import _clock, plot_loss, read_metrics, write_report
from gf_training.mini_stage_log import BEAT_S, StageLog
from gf_training.mini_stages import (
    ESTIMATED_RATES,
    POLICY_BACKEND_ARGS,
    STAGES,
    Stage,
    chosen_checkpoint,
    eval_command,
    evaluated,
    final_checkpoint,
    stages,
    sweep_file,
    swept,
    trained,
    usable_demos,
    vl_samples,
)

__all__ = [
    "DEMO_DIR", "ESTIMATED_RATES", "EVAL_DIR", "EVAL_PROTOCOLS", "MINI_CONFIG_DIR", "POLICY_BACKEND_ARGS", "RECIPES",
    "PROBE_DIR", "REPORT_DIR", "RUN_ROOT", "STAGES", "STAGE_LOG", "SWEEP_PROTOCOLS", "VL_ROOT", "Plan", "Recipe", "Stage",
    "VLData",
    "chosen_checkpoint", "eval_command", "evaluated", "final_checkpoint", "main", "make_plan", "plot_loss",
    "read_metrics", "run", "stages", "sweep_file", "swept", "trained", "usable_demos", "vl_samples", "write_report",
]


STOP_GRACE_S = 10.0  # after Ctrl-C, the command's time to stop cleanly (an evaluation's nodes) before it is killed


def run_command(cmd: list[str], beat: Callable[[float], None], every_s: float = BEAT_S) -> int:
    """Run ``cmd`` to its end, calling ``beat(elapsed seconds)`` every ``every_s`` meanwhile;
    returns its exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    try:
        while True:
            try:
                return proc.wait(timeout=every_s)
            except subprocess.TimeoutExpired:
                beat(time.perf_counter() - started)
    except BaseException:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE_S)  # a Ctrl-C reached the command too: let it stop cleanly
        proc.kill()
        proc.wait()
        raise


def run(plan: Plan, dry_run: bool = False, only: Sequence[str] | None = None,
        say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)) -> int:
    """Run (or print) the recipe's stages in order; returns a process exit code."""
    selected = [s for s in stages(plan) if only is None or s.name in only]
    log = StageLog(plan.run_dir / STAGE_LOG)
    started = time.perf_counter()
    for i, stage in enumerate(selected, 1):
        label = f"[gf-mini] {i}/{len(selected)} {stage.name}"
        if dry_run:
            cmd = stage.command()
            status = "done, would skip" if stage.done() else "to run"
            say(f"{label} ({status}): " + (shlex.join(cmd) if cmd else f"write the report in {plan.report_dir}"))
            continue
        if stage.done():
            say(f"{label}: finished earlier, skipped")
            log.skip(stage.name)
            continue
        remaining = sum(s.estimate_s() for s in selected[i - 1:] if not s.done())
        say(f"{label}: elapsed {_clock(time.perf_counter() - started)}, about {_clock(remaining)} left (estimate)")
        stage_start = time.perf_counter()
        log.start(stage.name)
        cmd = stage.command()
        if cmd is None:
            files = write_report(plan)
            say(f"{label}: {files['summary']}")
        else:
            say("$ " + shlex.join(cmd))
            code = run_command(cmd, lambda seconds, name=stage.name: log.beat(name, seconds))
            if code != 0:
                log.beat(stage.name, time.perf_counter() - stage_start)
                say(f"{label} failed with exit code {code}; the same command resumes it")
                return code
        log.beat(stage.name, time.perf_counter() - stage_start, finished=True)
    if not dry_run:
        results = {"vla": plan.report_dir, "vlm": plan.run_dir / PROBE_DIR}.get(plan.recipe.kind, plan.final_checkpoint)
        say(f"[gf-mini] {plan.recipe.name}: all stages done in {_clock(time.perf_counter() - started)} "
            f"(results: {results})")
    return 0


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace) -> Plan:
    recipe = RECIPES[args.recipe]
    return Plan(
        recipe=recipe, root=Path(args.root),
        demo_episodes=args.episodes if args.episodes is not None else recipe.demo_episodes,
        sweep_trials=args.sweep_trials if args.sweep_trials is not None else recipe.sweep_trials,
        eval_trials=args.trials if args.trials is not None else recipe.eval_trials,
        train_overrides=list(args.train or []), run_name=args.run_name, seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-mini``."""
    parser = argparse.ArgumentParser(prog="gf-mini", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the recipes")
    compare = sub.add_parser("compare", help="the comparison's table, held-out differences and Figure 2 from the "
                                             "rows' evaluated runs (runs/mini/comparison/)")
    compare.add_argument("--root", default=".", help="directory that holds runs/ (default: here)")
    everything = sub.add_parser("run-comparison", help="run (or continue) every run of the comparison in dependency "
                                                       "order, N at a time, then compare")
    everything.add_argument("--root", default=".", help="directory that holds demos/ and runs/ (default: here)")
    everything.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    everything.add_argument("--seeds", type=int, default=2, help="seeds of the rows that decide a conclusion "
                                                                 "(default 2; the other rows train one)")
    everything.add_argument("--rows", help="comma-separated rows (default: all) and what they need")
    everything.add_argument("--dry-run", action="store_true", help="print the jobs, run nothing")
    for name, help_text in (("run", "run (or continue) a recipe"), ("report", "rewrite a recipe's report")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("recipe", choices=sorted(RECIPES))
        p.add_argument("--root", default=".", help="directory that holds demos/ and runs/ (default: here)")
        p.add_argument("--episodes", type=int, help="Train demos to generate (default: the recipe's)")
        p.add_argument("--sweep-trials", type=int, help="Val trials per checkpoint in the sweep (0: no sweep, "
                                                       "evaluate the final checkpoint)")
        p.add_argument("--trials", type=int, help="trials per protocol in the final evaluation (default 100)")
        p.add_argument("--train", action="append", metavar="KEY=VALUE", help="gf-train override (repeatable)")
        p.add_argument("--run-name", help=f"run directory {RUN_ROOT}/NAME (default: the recipe's name), e.g. for "
                                          "a variant trained with --train overrides")
        p.add_argument("--seed", type=int, default=0, help="training seed (default 0); another seed trains in "
                                                           f"{RUN_ROOT}/<recipe>{SEED_SUFFIX}N on the same demos and "
                                                           "is evaluated on the same trials")
        if name == "run":
            p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
            p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    args = parser.parse_args(argv)
    if args.command == "list":
        for recipe in RECIPES.values():
            print(f"{recipe.name:12s} {recipe.train_config:24s} {recipe.description}")
        return 0
    if args.command == "compare":
        from gf_training.mini_comparison import write_comparison

        print(write_comparison(Path(args.root))["summary"].read_text(encoding="utf-8"), end="")
        return 0
    if args.command == "run-comparison":
        from gf_training.mini_schedule import comparison_jobs, run_comparison

        rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
        try:
            jobs = comparison_jobs(rows, seeds=args.seeds)
        except ValueError as exc:
            parser.error(str(exc))
        return run_comparison(Path(args.root), jobs, limit=max(args.jobs, 1), dry_run=args.dry_run)
    plan = make_plan(args)
    if args.command == "report":
        if plan.recipe.kind == "vlm":
            parser.error(f"{plan.recipe.name} is a VLM recipe: its results are gf-probe's, in {plan.run_dir / PROBE_DIR}")
        if plan.recipe.kind == "pretrain":
            parser.error(f"{plan.recipe.name} pre-trains for another row: its result is {plan.final_checkpoint}")
        print(write_report(plan)["summary"].read_text(encoding="utf-8"), end="")
        return 0
    only = None
    if args.stages:
        only = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = set(only) - set(STAGES)
        if unknown:
            parser.error(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    return run(plan, dry_run=args.dry_run, only=only)


if __name__ == "__main__":
    sys.exit(main())
