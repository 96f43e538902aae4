"""`gf-mini compare`: the paper's comparison in miniature (issue 18), from the rows' files alone.

Reads every comparison row's evaluated runs (``runs/mini/<row>`` and its other seeds,
``runs/mini/<row>_seedN``), the mini VLM's probe and the sweeps, and writes to
``runs/mini/comparison/``:

- ``comparison.md`` / ``comparison.json``: per row the seeds, execution / recognition / overall
  success per protocol pooled over seeds (95 % Wilson intervals), each seed's Val recognition and
  the row's wall time; the VLM's probe accuracy per list; and the question the benchmark asks:
  each VLM row's Val and Hard recognition minus the scratch control's, with a 95 % interval
  (Newcombe's, ``gf_eval.scoring.difference_interval``), so a difference is not read into noise;
  and the compute the whole comparison took: each pre-training recipe (the VLM's stages, the
  robot pre-training) and the rows, every stage counted once in the run that ran it, and the
  time the machine was busy with them (runs side by side counted once);
- ``figure2.png``: the paper's Figure 2 in miniature, overall success vs. fine-tuning step per
  protocol for the rows whose sweep covers every protocol (vlm-full, vlm-lora).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gf_eval.scoring import ProtocolSummary, Rate, difference_interval, summarize
from gf_training.mini_plan import EVAL_DIR, EVAL_PROTOCOLS, PROBE_DIR, RECIPES, RUN_ROOT, SEED_SUFFIX, STAGE_LOG, Recipe
from gf_training.mini_report import _clock
from gf_training.mini_stage_log import StageLog, busy_intervals, covered_seconds

COMPARISON_DIR = "comparison"
CONTROL = "scratch-full"
# The rows the paper's finding rests on (VLM priors help held-out recognition; full fine-tuning
# erodes them; co-training or a LoRA-tuned VLM keep more): gf-mini run-comparison trains them with
# a second seed, so a difference between them is not one seed's luck. The frozen VLM's row is not
# among them because its expert alone finds the cube in 10-15 % of the trials, too few executions
# for its recognition to decide anything (README Results).
DECIDING_ROWS = (CONTROL, "vlm-full", "vlm-lora", "cotrain-full")
# Recognition of the held-out emojis is what VLM priors should change; Train and ID are in the demos.
HELD_OUT = ("Val", "Hard")


def comparison_rows() -> list[Recipe]:
    """The rows of the comparison, the control first (recipes that share the catalogue model)."""
    return [r for r in RECIPES.values() if r.catalogue_tokenizer and r.kind == "vla"]


@dataclass
class RowResult:
    recipe: Recipe
    runs: dict[int, Path]  # seed -> run directory with evaluation results
    records: dict[int, list[dict]]  # seed -> result records
    wall_s: float  # stage wall time summed over the seeds' runs (the shared VLM and demos not included)

    @property
    def pooled(self) -> dict[str, ProtocolSummary]:
        return summarize([r for records in self.records.values() for r in records])

    def seed_summaries(self) -> dict[int, dict[str, ProtocolSummary]]:
        return {seed: summarize(records) for seed, records in sorted(self.records.items())}


def _seed_of(run_dir: Path, recipe: Recipe) -> int | None:
    if run_dir.name == recipe.slug:
        return 0
    suffix = run_dir.name.removeprefix(recipe.slug + SEED_SUFFIX)
    return int(suffix) if suffix != run_dir.name and suffix.isdigit() else None


# Stages named after a base recipe's kind: that recipe's own run, timed in its own stage log.
BASE_STAGES = ("vlm", "pretrain")


def _own_stages(run_dir: Path, shared: tuple[str, ...]) -> list[dict]:
    """The stage log entries of the stages the run ran itself, without its base and ``shared``."""
    log = StageLog(run_dir / STAGE_LOG).read()
    return [e for name, e in log.items() if name not in (*BASE_STAGES, *shared) and not e.get("skipped")]


def _wall_time(run_dir: Path, shared: tuple[str, ...] = ("demos",)) -> float:
    """Seconds of the stages the run ran itself (killed attempts included), without its base and
    the ``shared`` stages."""
    return sum(e["seconds"] for e in _own_stages(run_dir, shared))


def pretraining_recipes() -> list[Recipe]:
    """The recipes the rows start from, directly or through another: the VLM's stages, robot pre-training."""
    names: list[str] = []
    todo = [r.base for r in comparison_rows() if r.base]
    while todo:
        name = todo.pop()
        if name not in names:
            names.append(name)
            todo += [RECIPES[name].base] if RECIPES[name].base else []
    return [r for r in RECIPES.values() if r.name in names]


def _run_dirs(root: Path, rows: list[RowResult]) -> dict[str, list[Path]]:
    """The comparison's runs: each pre-training recipe's, and the rows' (every seed)."""
    runs = root / RUN_ROOT
    out = {r.name: [runs / r.slug] for r in pretraining_recipes() if (runs / r.slug).is_dir()}
    out["rows"] = [d for row in rows for d in row.runs.values()]
    return out


def compute_time(root: Path, rows: list[RowResult]) -> dict[str, float]:
    """Seconds per pre-training recipe and for the rows' runs: every stage counted once, in the run
    that ran it (data made by hand before a stage log existed is not in it)."""
    return {name: sum(_wall_time(d, shared=()) for d in dirs) for name, dirs in _run_dirs(root, rows).items()}


def busy_time(root: Path, rows: list[RowResult]) -> float:
    """Seconds the machine spent on the comparison: the union of every stage attempt's interval,
    so runs side by side count once (the compute the issue budgets; ``compute_time`` sums them)."""
    intervals = [span for dirs in _run_dirs(root, rows).values() for d in dirs
                 for entry in _own_stages(d, shared=()) for span in busy_intervals(entry)]
    return covered_seconds(intervals)


def collect(root: Path) -> list[RowResult]:
    """Every comparison row with at least one evaluated run under ``root``."""
    from gf_eval.results import ResultsFile

    found = []
    for recipe in comparison_rows():
        runs, records = {}, {}
        for run_dir in sorted((root / RUN_ROOT).glob(recipe.slug + "*")):
            seed = _seed_of(run_dir, recipe)
            trials = [r.to_dict() for r in ResultsFile(run_dir / EVAL_DIR).read()] if seed is not None else []
            if trials:
                runs[seed], records[seed] = run_dir, trials
        if runs:
            found.append(RowResult(recipe, runs, records, sum(_wall_time(d) for d in runs.values())))
    return found


def _pct(rate: Rate) -> str:
    return str(rate).strip() if rate.trials else "n/a"


def held_out_differences(rows: list[RowResult]) -> dict[str, dict[str, dict]]:
    """Each VLM row's recognition on the held-out protocols minus the control's, pooled over seeds."""
    control = next((r for r in rows if r.recipe.name == CONTROL), None)
    if control is None:
        return {}
    out: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row is control:
            continue
        out[row.recipe.name] = {}
        for protocol in HELD_OUT:
            a, b = row.pooled.get(protocol), control.pooled.get(protocol)
            if a is None or b is None or not a.recognition.trials or not b.recognition.trials:
                continue
            lo, hi = difference_interval(a.recognition, b.recognition)
            out[row.recipe.name][protocol] = {"difference": a.recognition.value - b.recognition.value, "ci95": [lo, hi],
                                              "row": a.recognition.value, "control": b.recognition.value}
    return out


def plot_figure2(root: Path, path: Path) -> bool:
    """Overall SR vs. fine-tuning step per protocol for the rows whose sweep covers every protocol."""
    from gf_training.sweep import SWEEP_DIR

    curves = {}
    for recipe in comparison_rows():
        sweep = root / RUN_ROOT / recipe.slug / SWEEP_DIR / "sweep.json"
        if recipe.sweep_protocols == EVAL_PROTOCOLS and sweep.exists():
            curves[recipe.name] = json.loads(sweep.read_text(encoding="utf-8"))["checkpoints"]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(EVAL_PROTOCOLS), figsize=(4.2 * len(EVAL_PROTOCOLS), 3.4), sharey=True)
    for ax, protocol in zip(axes, EVAL_PROTOCOLS):
        for name, checkpoints in curves.items():
            points = [(c["step"], c["protocols"][protocol]["overall"]) for c in checkpoints if protocol in c["protocols"]]
            points = [(step, rate) for step, rate in points if rate["rate"] is not None]
            if not points:
                continue
            steps = [s for s, _ in points]
            line, = ax.plot(steps, [100 * r["rate"] for _, r in points], marker="o", label=name)
            ax.fill_between(steps, [100 * r["ci95"][0] for _, r in points], [100 * r["ci95"][1] for _, r in points],
                            color=line.get_color(), alpha=0.15)
        ax.set_title(protocol)
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("overall success (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Success vs. fine-tuning steps (mini Figure 2; 95 % Wilson bands)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_comparison(root: Path) -> dict[str, Path]:
    """``comparison.md``, ``comparison.json`` and (when there are sweeps for it) ``figure2.png``."""
    out = root / RUN_ROOT / COMPARISON_DIR
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary": out / "comparison.md", "json": out / "comparison.json"}
    rows = collect(root)
    lines = ["# The paper's comparison in miniature", ""]
    probe_path = root / RUN_ROOT / RECIPES["vlm"].slug / PROBE_DIR / "summary.json"
    probe = json.loads(probe_path.read_text(encoding="utf-8")) if probe_path.exists() else None
    if probe:
        accuracy = {name: s["accuracy_retrieval"] for name, s in probe["lists"].items()}
        lines += ["Mini VLM probe (retrieval accuracy, every card of the list): "
                  + ", ".join(f"{name} {100 * a:.0f} %" for name, a in accuracy.items()) + "."]
        if probe.get("scenes"):
            lines += ["Which card shows it, in simulator scenes (chance 33 %): "
                      + ", ".join(f"{name} {100 * s['accuracy']:.0f} %" for name, s in probe["scenes"].items()) + "."]
        lines += [""]
    header = " | ".join(f"{p} Exe / Rec / Overall" for p in EVAL_PROTOCOLS)
    lines += [f"| Row | Seeds | {header} | Val Rec per seed | Wall time |",
              "|---|---|" + "---|" * len(EVAL_PROTOCOLS) + "---|---:|"]
    table = []
    for row in rows:
        pooled, per_seed = row.pooled, row.seed_summaries()
        cells = [" / ".join(_pct(getattr(pooled[p], w)) for w in ("execution", "recognition", "overall"))
                 if p in pooled else "n/a" for p in EVAL_PROTOCOLS]
        val_rec = ", ".join(f"{100 * s['Val'].recognition.value:.0f} %" if "Val" in s and s["Val"].recognition.trials
                            else "n/a" for s in per_seed.values())
        lines.append(f"| {row.recipe.name} | {', '.join(map(str, row.runs))} | {' | '.join(cells)} | {val_rec} | "
                     f"{_clock(row.wall_s)} |")
        table.append({"row": row.recipe.name, "seeds": list(row.runs), "runs": [str(d) for d in row.runs.values()],
                      "wall_s": row.wall_s,
                      "protocols": {p: {w: {"successes": getattr(s, w).successes, "trials": getattr(s, w).trials}
                                        for w in ("execution", "recognition", "overall")} for p, s in pooled.items()}})
    differences = held_out_differences(rows)
    if differences:
        lines += ["", f"Held-out recognition minus the control's ({CONTROL}), pooled over seeds, 95 % interval "
                      "(Newcombe); an interval that excludes 0 is a difference beyond noise:", "",
                  "| Row | " + " | ".join(HELD_OUT) + " |", "|---|" + "---|" * len(HELD_OUT)]
        for name, by_protocol in differences.items():
            cells = [f"{100 * d['difference']:+.0f} pts [{100 * d['ci95'][0]:+.0f}, {100 * d['ci95'][1]:+.0f}]"
                     if (d := by_protocol.get(p)) else "n/a" for p in HELD_OUT]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    compute, busy = compute_time(root, rows), busy_time(root, rows)
    lines += ["", "Compute on this machine (stage logs, killed attempts included): "
              + ", ".join(f"{name} {_clock(seconds)}" for name, seconds in compute.items())
              + f"; total {_clock(sum(compute.values()))}. The machine was busy with them for {_clock(busy)} "
              "(runs side by side counted once)."]
    if plot_figure2(root, out / "figure2.png"):
        files["figure2"] = out / "figure2.png"
        lines += ["", "Success vs. fine-tuning steps: `figure2.png`."]
    missing = [r.name for r in comparison_rows() if r.name not in {row.recipe.name for row in rows}]
    if missing:
        lines += ["", "Not evaluated yet: " + ", ".join(missing) + " (`gf-mini run ROW`)."]
    files["summary"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    files["json"].write_text(json.dumps({"probe": probe and probe["lists"], "probe_scenes": probe and probe.get("scenes"),
                                         "rows": table, "compute_s": compute, "busy_s": busy,
                                         "held_out_vs_control": differences}, indent=2) + "\n", encoding="utf-8")
    return files
