"""Reports of evaluation runs: the paper's table, a bar chart, per-emoji and per-position CSVs.

``gf-report DIR`` rewrites the report of one output directory; ``gf-report compare DIR...``
prints (and plots) several runs side by side, e.g. a VLA next to the oracle and chance baselines.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from gf_eval.results import RUN_FILE, ResultsFile, TrialRecord
from gf_eval.scoring import CHANCE_RECOGNITION, ProtocolSummary, Rate, breakdown, summarize
from gf_eval.splits import EmojiSplits

PROTOCOL_ORDER = ("ID", "Train", "Val", "Hard", "Touch")


def _ordered(summaries: dict[str, ProtocolSummary]) -> list[ProtocolSummary]:
    rank = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    return sorted(summaries.values(), key=lambda s: (rank.get(s.protocol, 99), s.protocol))


def results_table(summaries: dict[str, ProtocolSummary], title: str = "") -> str:
    """The paper's table as Markdown: Exe. SR, Rec. SR, overall SR with 95 % Wilson intervals."""
    lines = [f"### {title}" if title else "", "",
             "| Protocol | Trials | Exe. SR | Rec. SR | Overall SR | Upstream SR | Ends |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for s in _ordered(summaries):
        ends = ", ".join(f"{k}: {v}" for k, v in sorted(s.end_reasons.items()))
        lines.append(f"| {s.protocol} | {s.trials} | {s.execution} | {s.recognition} | {s.overall} | "
                     f"{s.upstream_overall} | {ends} |")
    lines.append("")
    lines.append(f"Rates in %, [95 % Wilson interval]. Rec. SR = successes / executions (chance: {100 * CHANCE_RECOGNITION:.1f}%).")
    return "\n".join(line for line in lines if line is not None).strip() + "\n"


def _rate_cells(rate: Rate) -> list:
    lo, hi = rate.interval
    return [rate.successes, rate.trials, f"{rate.value:.4f}" if rate.trials else "", f"{lo:.4f}", f"{hi:.4f}"]


def write_report(output_dir: Path, records: list[TrialRecord], run_info: dict, splits: EmojiSplits | None = None) -> Path:
    """Write ``output_dir/report/`` and return it."""
    report = Path(output_dir) / "report"
    report.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() for r in records]
    summaries = summarize(rows)
    title = f"{run_info.get('policy', '?')} on {run_info.get('split_name', '?')} ({run_info.get('robot', '')}, seed {run_info.get('base_seed', '')})"
    (report / "summary.md").write_text(results_table(summaries, title), encoding="utf-8")
    with open(report / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        header = ["protocol", "trials"]
        for name in ("execution", "recognition", "overall", "upstream_overall"):
            header += [f"{name}_successes", f"{name}_trials", f"{name}_rate", f"{name}_ci_low", f"{name}_ci_high"]
        w.writerow(header)
        for s in _ordered(summaries):
            w.writerow([s.protocol, s.trials] + _rate_cells(s.execution) + _rate_cells(s.recognition)
                       + _rate_cells(s.overall) + _rate_cells(s.upstream_overall))
    names = {}
    if splits is not None:
        names = {e.id: (e.char, e.name) for entries in splits.splits.values() for e in entries}
    with open(report / "per_emoji.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["protocol", "target_emoji_id", "char", "name", "trials", "executed", "successes", "overall_rate"])
        for (protocol, emoji), (exe, _recognition, overall) in breakdown(rows, lambda r: (r["protocol"], r["target_emoji_id"])).items():
            char, name = names.get(emoji, ("", ""))
            w.writerow([protocol, emoji, char, name, overall.trials, exe.successes, overall.successes, f"{overall.value:.4f}"])
    with open(report / "per_position.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["protocol", "target_slot", "trials", "execution_rate", "recognition_rate", "overall_rate", "placed_on_slot_0", "placed_on_slot_1", "placed_on_slot_2"])
        for (protocol, slot), (exe, rec, overall) in breakdown(rows, lambda r: (r["protocol"], r["target_index"])).items():
            placed = [sum(1 for r in rows if r["protocol"] == protocol and r["target_index"] == slot and r["placed_card"] == k) for k in range(3)]
            w.writerow([protocol, slot, overall.trials, f"{exe.value:.4f}", f"{rec.value:.4f}" if rec.trials else "", f"{overall.value:.4f}", *placed])
    (report / "config.json").write_text(json.dumps(run_info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_rates({title: summaries}, report / "success_rates.png")
    return report


def plot_rates(runs: dict[str, dict[str, ProtocolSummary]], path: Path) -> None:
    """Grouped bars of Exe./Rec./overall SR per protocol (one panel per run), 95 % CIs, chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.1), squeeze=False)
    colors = {"Exe. SR": "#4C72B0", "Rec. SR": "#DD8452", "Overall SR": "#55A868"}
    for ax, (title, summaries) in zip(axes[0], runs.items()):
        ordered = _ordered(summaries)
        width = 0.26
        for k, (label, attr) in enumerate((("Exe. SR", "execution"), ("Rec. SR", "recognition"), ("Overall SR", "overall"))):
            xs, ys, errs = [], [], [[], []]
            for i, s in enumerate(ordered):
                rate: Rate = getattr(s, attr)
                value = rate.value if rate.trials else 0.0
                lo, hi = rate.interval
                xs.append(i + (k - 1) * width)
                ys.append(100 * value)
                errs[0].append(100 * max(0.0, value - lo))
                errs[1].append(100 * max(0.0, hi - value))
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=label, color=colors[label])
        ax.axhline(100 * CHANCE_RECOGNITION, color="grey", linestyle="--", linewidth=1, label="chance (Rec.)")
        ax.set_xticks(range(len(ordered)), [f"{s.protocol}\n(n={s.trials})" for s in ordered])
        ax.set_ylim(0, 105)
        ax.set_ylabel("success rate (%)")
        ax.set_title(title, fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_run(output_dir: Path) -> tuple[dict, list[TrialRecord]]:
    output_dir = Path(output_dir)
    run_info = json.loads((output_dir / RUN_FILE).read_text(encoding="utf-8")) if (output_dir / RUN_FILE).exists() else {}
    return run_info, ResultsFile(output_dir).read()


def run_labels(runs: list[tuple[Path, dict]]) -> list[str]:
    """Panel titles of compared runs: the policy, plus the directory where several runs share one
    (two ``vla`` checkpoints must not end up in one panel)."""
    policies = [info.get("policy") or d.name for d, info in runs]
    return [p if policies.count(p) == 1 else f"{p} ({d})" for p, (d, _) in zip(policies, runs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-report", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("show", help="(re)write and print the report of one output directory")
    one.add_argument("output_dir", type=Path)
    cmp_ = sub.add_parser("compare", help="print several runs side by side and plot them")
    cmp_.add_argument("output_dirs", type=Path, nargs="+")
    cmp_.add_argument("--plot", type=Path, help="write the comparison chart here (PNG)")
    args = parser.parse_args(argv)
    if args.command == "show":
        run_info, records = load_run(args.output_dir)
        if not records:
            print(f"no results in {args.output_dir}", file=sys.stderr)
            return 1
        path = write_report(args.output_dir, records, run_info)
        print((path / "summary.md").read_text(encoding="utf-8"))
        print(f"report: {path}")
        return 0
    loaded = []
    for d in args.output_dirs:
        run_info, records = load_run(d)
        if not records:
            print(f"no results in {d}", file=sys.stderr)
            return 1
        loaded.append((d, run_info, summarize([r.to_dict() for r in records])))
    runs = {}
    for label, (d, run_info, summaries) in zip(run_labels([(d, info) for d, info, _ in loaded]), loaded):
        runs[label] = summaries  # one panel per directory
        print(results_table(summaries, f"{run_info.get('policy', d.name)}  ({d})"))
    if args.plot:
        plot_rates(runs, args.plot)
        print(f"comparison chart: {args.plot}")
    return 0
