"""The report of a mini recipe (``report/`` of its run): the paper's table, the sweep, the loss
curve and the wall time of every stage.

Separate from the stages: ``gf-mini report`` rewrites it from the files alone, and its plotting
imports (matplotlib) stay out of the runner.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from gf_training.mini_plan import STAGE_LOG, Plan
from gf_training.mini_stage_log import StageLog


def _attempts(entry: dict) -> str:
    """`` (2 attempts)`` for a stage killed before it finished and run again."""
    count = len(entry.get("attempts", []))
    return f" ({count} attempts)" if count > 1 else ""


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


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
    from gf_training.checkpoints import RUN_CONFIG
    from gf_training.sweep import SWEEP_DIR

    out = plan.report_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"summary": out / "summary.md"}
    parts = [f"# Mini recipe `{plan.recipe.name}`", "", plan.recipe.description + "."]
    run_config = plan.run_dir / RUN_CONFIG
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
    log = StageLog(plan.run_dir / STAGE_LOG).read()
    if log:
        parts += ["| Stage | Wall time |", "|---|---:|"]
        parts += [f"| {name} | {_clock(entry['seconds'])}{_attempts(entry)} |" for name, entry in log.items()
                  if name != "report"]
        total = sum(entry["seconds"] for entry in log.values())
        parts += [f"| total | {_clock(total)} |", ""]
    files["summary"].write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    return files
