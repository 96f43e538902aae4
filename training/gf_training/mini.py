"""`gf-mini run RECIPE`: a learned policy on the benchmark, end to end on a CPU.

One command runs the whole loop for a small ``PI0StyleVLA`` trained from scratch::

    demos     gf-demos generate --split train --episodes N --out demos/mini/train
    vl        gf-vl-data GENERATOR --scenes M --out vl/mini/GENERATOR   (co-training recipes only)
    train     gf-train mini/<recipe>.yaml output_dir=runs/mini/<recipe> data.demo_dirs=[...]
    sweep     gf-sweep runs/mini/<recipe> --trials S --protocols Val   (best checkpoint by Val overall SR)
    eval      gf-launch sim_eval policy:=vla ... protocols:=[ID,Train,Val,Hard] trials:=T
    report    runs/mini/<recipe>/report/: the paper's table (95 % Wilson intervals), success vs.
              training step, the loss curve, the wall time of every stage

Every stage skips finished work (enough demos in the manifest, the final checkpoint, complete
sweep and evaluation results) and the tools underneath resume interrupted work, so the same
command continues an interrupted recipe. ``--dry-run`` prints the commands. The stages show
their own progress bars with ETA; between stages gf-mini prints the elapsed time and an estimate
of the remaining time from the rates in ``ESTIMATED_RATES``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gf_bringup.runtime import console_script
from gf_training.config import load_config

MINI_CONFIG_DIR = "mini"
DEMO_DIR = Path("demos/mini/train")
VL_ROOT = Path("vl/mini")
RUN_ROOT = Path("runs/mini")
EVAL_PROTOCOLS = ("ID", "Train", "Val", "Hard")
SWEEP_PROTOCOLS = ("Val",)  # gf-sweep's selection rule: best Val overall SR
# The policy node runs torch on one thread: the simulator needs the other core, and two
# intra-op threads competing with it for one core are slower than one.
POLICY_BACKEND_ARGS = {"num_threads": 1}
STAGES = ("demos", "vl", "train", "sweep", "eval", "report")
STAGE_LOG = "mini_stages.json"
REPORT_DIR = "report"
EVAL_DIR = "eval"

# Rough rates on a 2-core CPU, for the between-stage estimate of the remaining time only:
# demo episodes with gf-demos' 2 workers, optimiser steps of the mini model, evaluated trials
# (a failed trial runs the full 200 steps, a successful one about 50).
ESTIMATED_RATES = {"demo_s_per_episode": 1.6, "vl_s_per_scene": 0.5, "train_steps_per_s": 3.0,
                   "eval_s_per_trial": 9.0}


@dataclass(frozen=True)
class Recipe:
    """One row of the mini recipes: a training config under ``configs/mini/`` and the sizes of
    the stages around it."""

    name: str
    description: str
    demo_episodes: int = 500
    # Vision-language data the config co-trains on: (gf-vl-data generator, scenes), written to
    # vl/mini/<generator> and passed to training as cotrain.vl_dirs.
    vl_data: tuple[tuple[str, int], ...] = ()
    sweep_trials: int = 20
    eval_trials: int = 100

    @property
    def train_config(self) -> str:
        return f"{MINI_CONFIG_DIR}/{self.name}.yaml"


RECIPES = {
    r.name: r for r in (
        Recipe("baseline", "PI0StyleVLA (~1.1 M parameters, 96 px) from scratch on 500 Train demos of the "
                           "default scene"),
        Recipe("crop", "the baseline's model seeing a crop of the frame around the table (128 px, 16 px "
                       "patches), from scratch on the same demos"),
        Recipe("no_proprio", "the baseline's model without proprio: every step is read from the image"),
        Recipe("proprio_dropout", "the baseline's model with the proprio of half its training samples hidden"),
        Recipe("cube_cotrain", "the baseline's model co-trained on 'where is the cube?' scenes (its image "
                               "position as text)", vl_data=(("cube", 1000),)),
        Recipe("scene_probe", "the baseline's model with an auxiliary head reading the cube's start position "
                              "from its image tokens (training-only)"),
    )
}


@dataclass
class Plan:
    """Where one run of a recipe reads and writes, with the sizes it was asked for."""

    recipe: Recipe
    root: Path
    demo_episodes: int
    sweep_trials: int
    eval_trials: int
    train_overrides: list[str] = field(default_factory=list)
    run_name: str | None = None  # default: the recipe's name

    @property
    def demo_dir(self) -> Path:
        return self.root / DEMO_DIR

    @property
    def run_dir(self) -> Path:
        return self.root / RUN_ROOT / (self.run_name or self.recipe.name)

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / EVAL_DIR

    @property
    def report_dir(self) -> Path:
        return self.run_dir / REPORT_DIR

    def vl_dir(self, generator: str) -> Path:
        return self.root / VL_ROOT / generator

    def train_args(self) -> list[str]:
        vl = [f"cotrain.vl_dirs=[{','.join(str(self.vl_dir(g)) for g, _ in self.recipe.vl_data)}]"]
        return [self.recipe.train_config, f"output_dir={self.run_dir}", f"data.demo_dirs=[{self.demo_dir}]",
                *(vl if self.recipe.vl_data else []), *self.train_overrides]

    def train_steps(self) -> int:
        return load_config(self.recipe.train_config, self.train_args()[1:]).train.steps


# ---------------------------------------------------------------------------------------------
# what is finished
# ---------------------------------------------------------------------------------------------


def usable_demos(demo_dir: Path) -> int:
    """Complete, successful episodes in a demo directory's manifest (what training uses)."""
    manifest = demo_dir / "manifest.jsonl"
    if not manifest.exists():
        return 0
    count = 0
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            count += bool(entry.get("complete") and entry.get("success"))
    return count


def vl_samples(directory: Path) -> int:
    """Samples in a gf-vl-data directory's manifest (0 if there is none yet)."""
    from gf_training.vl_data import MANIFEST

    manifest = directory / MANIFEST
    if not manifest.exists():
        return 0
    return sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())


def final_checkpoint(plan: Plan) -> Path:
    from gf_training.train import CHECKPOINT_DIR, checkpoint_name

    return plan.run_dir / CHECKPOINT_DIR / checkpoint_name(plan.train_steps())


def trained(plan: Plan) -> bool:
    from gf_training.train import INFERENCE_WEIGHTS

    return (final_checkpoint(plan) / INFERENCE_WEIGHTS).exists()


def sweep_file(plan: Plan) -> Path:
    from gf_training.sweep import SWEEP_DIR

    return plan.run_dir / SWEEP_DIR / "sweep.json"


def swept(plan: Plan) -> bool:
    """The sweep covered every checkpoint with enough trials."""
    from gf_training.sweep import find_checkpoints

    path = sweep_file(plan)
    if not path.exists():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    done = {c["step"]: c["protocols"] for c in data.get("checkpoints", [])}
    wanted = [s for s, _ in find_checkpoints(plan.run_dir)]
    return bool(wanted) and all(
        s in done and all(done[s].get(p, {}).get("trials", 0) >= plan.sweep_trials for p in SWEEP_PROTOCOLS)
        for s in wanted)


def chosen_checkpoint(plan: Plan) -> Path | None:
    """The checkpoint the evaluation uses: the sweep's best, the final one without a sweep."""
    if plan.sweep_trials <= 0:
        return final_checkpoint(plan)
    path = sweep_file(plan)
    if not path.exists():
        return None
    best = json.loads(path.read_text(encoding="utf-8")).get("best")
    return Path(best["checkpoint"]) if best else None


def evaluated(plan: Plan) -> bool:
    from gf_eval.results import ResultsFile
    from gf_training.sweep import is_complete

    records = [r.to_dict() for r in ResultsFile(plan.eval_dir).read()]
    return is_complete(records, plan.eval_trials, EVAL_PROTOCOLS)


# ---------------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    done: Callable[[], bool]
    command: Callable[[], list[str] | None]  # None: runs in this process (the report)
    estimate_s: Callable[[], float]


def eval_command(plan: Plan, checkpoint: Path | str) -> list[str]:
    """``checkpoint``: a directory (made absolute: the nodes need not share this working
    directory) or a placeholder text for a dry run."""
    if isinstance(checkpoint, Path):
        checkpoint = checkpoint.resolve()
    args = {"checkpoint": str(checkpoint), **POLICY_BACKEND_ARGS}
    backend = yaml.safe_dump(args, default_flow_style=True, width=10**6).strip()
    return [console_script("gf-launch"), "sim_eval", "policy:=vla", f"backend_args:={backend}", f"checkpoint:={checkpoint}",
            f"protocols:=[{','.join(EVAL_PROTOCOLS)}]", f"trials:={plan.eval_trials}", f"output_dir:={plan.eval_dir}"]


def stages(plan: Plan) -> list[Stage]:
    rates = ESTIMATED_RATES
    checkpoints = len(load_config(plan.recipe.train_config, plan.train_args()[1:]).train.save_steps) or 1

    def eval_cmd() -> list[str]:
        chosen = chosen_checkpoint(plan)
        return eval_command(plan, chosen if chosen is not None else "<best checkpoint of the sweep>")

    def vl_stage(generator: str, scenes: int) -> Stage:
        directory = plan.vl_dir(generator)
        return Stage("vl", lambda: vl_samples(directory) >= scenes,
                     lambda: [console_script("gf-vl-data"), generator, "--scenes", str(scenes), "--out", str(directory)],
                     lambda: max(scenes - vl_samples(directory), 0) * rates["vl_s_per_scene"])

    return [
        Stage("demos", lambda: usable_demos(plan.demo_dir) >= plan.demo_episodes,
              lambda: [console_script("gf-demos"), "generate", "--split", "train", "--episodes", str(plan.demo_episodes),
                       "--out", str(plan.demo_dir)],
              lambda: max(plan.demo_episodes - usable_demos(plan.demo_dir), 0) * rates["demo_s_per_episode"]),
        *(vl_stage(g, n) for g, n in plan.recipe.vl_data),
        Stage("train", lambda: trained(plan), lambda: [console_script("gf-train"), *plan.train_args()],
              lambda: plan.train_steps() / rates["train_steps_per_s"]),
        Stage("sweep", lambda: plan.sweep_trials <= 0 or swept(plan),
              lambda: [console_script("gf-sweep"), str(plan.run_dir), "--trials", str(plan.sweep_trials),
                       "--protocols", ",".join(SWEEP_PROTOCOLS),
                       *(f"--backend-arg={k}={v}" for k, v in POLICY_BACKEND_ARGS.items())],
              lambda: checkpoints * plan.sweep_trials * len(SWEEP_PROTOCOLS) * rates["eval_s_per_trial"]),
        Stage("eval", lambda: evaluated(plan), eval_cmd,
              lambda: plan.eval_trials * len(EVAL_PROTOCOLS) * rates["eval_s_per_trial"]),
        Stage("report", lambda: False, lambda: None, lambda: 5.0),
    ]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _record_stage(plan: Plan, name: str, seconds: float, skipped: bool) -> None:
    path = plan.run_dir / STAGE_LOG
    log = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if skipped and name in log:
        return  # keep the wall time of the run that did the work
    log[name] = {"seconds": round(seconds, 1), "skipped": skipped, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")


def run(plan: Plan, dry_run: bool = False, only: Sequence[str] | None = None,
        say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)) -> int:
    """Run (or print) the recipe's stages in order; returns a process exit code."""
    selected = [s for s in stages(plan) if only is None or s.name in only]
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
            _record_stage(plan, stage.name, 0.0, skipped=True)
            continue
        remaining = sum(s.estimate_s() for s in selected[i - 1:] if not s.done())
        say(f"{label}: elapsed {_clock(time.perf_counter() - started)}, about {_clock(remaining)} left (estimate)")
        stage_start = time.perf_counter()
        cmd = stage.command()
        if cmd is None:
            files = write_report(plan)
            say(f"{label}: {files['summary']}")
        else:
            say("$ " + shlex.join(cmd))
            code = subprocess.run(cmd, check=False).returncode
            if code != 0:
                say(f"{label} failed with exit code {code}; the same command resumes it")
                return code
        _record_stage(plan, stage.name, time.perf_counter() - stage_start, skipped=False)
    if not dry_run:
        say(f"[gf-mini] {plan.recipe.name}: all stages done in {_clock(time.perf_counter() - started)} "
            f"(report: {plan.report_dir})")
    return 0


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """``metrics.jsonl`` of a training run, one entry per logged step (a resumed run's later
    line for the same step wins), in step order."""
    from gf_training.train import METRICS_FILE

    path = Path(run_dir) / METRICS_FILE
    by_step: dict[int, dict[str, float]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                by_step[int(entry["step"])] = entry
    return [by_step[s] for s in sorted(by_step)]


def plot_loss(metrics: list[dict[str, float]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([m["step"] for m in metrics], [m["train/loss"] for m in metrics], color="#4C72B0")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("flow-matching loss (train)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(plan: Plan) -> dict[str, Path]:
    """``report/summary.md`` (the paper's table for the evaluated checkpoint, the sweep table,
    stage wall times), ``loss.png`` and ``success_vs_step.png``."""
    from gf_eval.report import load_run, results_table
    from gf_eval.scoring import summarize
    from gf_training.sweep import SWEEP_DIR

    out = plan.report_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"summary": out / "summary.md"}
    parts = [f"# Mini recipe `{plan.recipe.name}`", "", plan.recipe.description + "."]
    run_config = plan.run_dir / "config.yaml"
    if run_config.exists():  # what this run directory was trained with (overrides included)
        trained_with = yaml.safe_load(run_config.read_text(encoding="utf-8"))
        t = trained_with["train"]
        parts.append(f"Trained {t['steps']} steps at batch {t['batch_size']} on {', '.join(trained_with['data']['demo_dirs'])} "
                     f"(`{run_config}`).")
    parts.append("")
    run_info, records = load_run(plan.eval_dir)
    if records:
        title = f"{run_info.get('checkpoint', '?')} ({run_info.get('split_name', '?')}, seed {run_info.get('base_seed', '?')})"
        parts.append(results_table(summarize([r.to_dict() for r in records]), title))
    else:
        parts.append(f"No evaluation results in {plan.eval_dir} yet.\n")
    sweep_md = plan.run_dir / SWEEP_DIR / "sweep.md"
    if sweep_md.exists():
        parts.append(sweep_md.read_text(encoding="utf-8"))
        sweep_png = plan.run_dir / SWEEP_DIR / "sweep.png"
        if sweep_png.exists():
            files["success_vs_step"] = out / "success_vs_step.png"
            shutil.copyfile(sweep_png, files["success_vs_step"])
            parts.append("Success vs. training step: `success_vs_step.png`.\n")
    metrics = read_metrics(plan.run_dir)
    if metrics:
        files["loss"] = out / "loss.png"
        plot_loss(metrics, files["loss"], f"{plan.recipe.name}: training loss")
        last = metrics[-1]
        parts.append(f"Training loss: `loss.png` (last logged: step {int(last['step'])}, loss {last['train/loss']:.4f}, "
                     f"{last.get('train/steps_per_s', float('nan')):.2f} steps/s).\n")
    log_path = plan.run_dir / STAGE_LOG
    if log_path.exists():
        log = json.loads(log_path.read_text(encoding="utf-8"))
        parts += ["| Stage | Wall time |", "|---|---:|"]
        parts += [f"| {name} | {_clock(entry['seconds'])} |" for name, entry in log.items() if name != "report"]
        total = sum(entry["seconds"] for entry in log.values())
        parts += [f"| total | {_clock(total)} |", ""]
    files["summary"].write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    return files


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
        train_overrides=list(args.train or []), run_name=args.run_name,
    )


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-mini``."""
    parser = argparse.ArgumentParser(prog="gf-mini", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the recipes")
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
        if name == "run":
            p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
            p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    args = parser.parse_args(argv)
    if args.command == "list":
        for recipe in RECIPES.values():
            print(f"{recipe.name:12s} {recipe.train_config:24s} {recipe.description}")
        return 0
    plan = make_plan(args)
    if args.command == "report":
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
