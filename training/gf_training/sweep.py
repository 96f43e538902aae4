"""`gf-sweep RUN_DIR`: evaluate every checkpoint of a training run on the simulated benchmark and
report the best one by Val overall SR (the paper's rule), with the paper's Figure 2: execution,
recognition and overall SR against fine-tuning steps.

Each checkpoint is evaluated by ``gf-launch sim_eval policy:=vla`` into its own output directory
(``RUN_DIR/sweep/step_005000/`` ...); a checkpoint whose results are already complete is not
evaluated again, and an interrupted evaluation resumes (gf-launch's results file is crash-safe).
Outputs in the sweep directory: ``sweep.md`` (table), ``sweep.json`` (all rates and the choice),
``sweep.png`` (the figure).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gf_bringup.runtime import console_script
from gf_eval.results import ResultsFile
from gf_eval.scoring import CHANCE_RECOGNITION, ProtocolSummary, Rate, summarize
from gf_eval.shards import PLANNED_ARGS, ShardError, add_shard_arguments, merge_results, plan_shards, run_shards
from gf_training.train import CHECKPOINT_DIR, INFERENCE_WEIGHTS

DEFAULT_PROTOCOLS = ("ID", "Train", "Val")
SELECT_PROTOCOL = "Val"
SWEEP_DIR = "sweep"
RATES = (("execution", "Exe. SR"), ("recognition", "Rec. SR"), ("overall", "Overall SR"))

# (checkpoint dir, output dir) -> result records (TrialRecord dicts)
Evaluator = Callable[[Path, Path], list[dict]]


class SweepError(RuntimeError):
    """A checkpoint could not be evaluated."""


@dataclass
class CheckpointResult:
    step: int
    checkpoint: Path
    output_dir: Path
    summaries: dict[str, ProtocolSummary]
    evaluated: bool = True  # False: complete results were already there

    def rate(self, protocol: str, which: str = "overall") -> Rate | None:
        s = self.summaries.get(protocol)
        return getattr(s, which) if s is not None else None


@dataclass
class SweepResult:
    results: list[CheckpointResult]
    best: CheckpointResult | None
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def find_checkpoints(run_dir: str | Path, steps: Sequence[int] | None = None) -> list[tuple[int, Path]]:
    """Inference-ready checkpoints ``RUN_DIR/checkpoints/step_N`` (or ``RUN_DIR`` itself holding
    ``step_N`` directories), in step order; ``steps`` selects some."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINT_DIR if (run_dir / CHECKPOINT_DIR).is_dir() else run_dir
    found = []
    for d in root.glob("step_*"):
        if d.is_dir() and d.name[5:].isdigit() and (d / "config.json").exists() and (d / INFERENCE_WEIGHTS).exists():
            found.append((int(d.name[5:]), d))
    found.sort()
    if steps is not None:
        wanted = {int(s) for s in steps}
        missing = wanted - {s for s, _ in found}
        if missing:
            raise SweepError(f"no checkpoint for step(s) {sorted(missing)} in {root}")
        found = [(s, d) for s, d in found if s in wanted]
    return found


def is_complete(records: list[dict], trials: int, protocols: Sequence[str]) -> bool:
    """Whether ``records`` hold at least ``trials`` distinct trials of every protocol."""
    per: dict[str, set] = {}
    for r in records:
        per.setdefault(r["protocol"], set()).add(r["trial_id"])
    return all(len(per.get(p, ())) >= trials for p in protocols)


class SimEvaluator:
    """Evaluates a checkpoint with ``gf-launch sim_eval policy:=vla`` (a subprocess)."""

    def __init__(self, trials: int = 100, protocols: Sequence[str] = DEFAULT_PROTOCOLS,
                 launch_args: Sequence[str] = (), backend_args: dict[str, Any] | None = None,
                 gf_launch: str | None = None, timeout_s: float | None = None,
                 progress: Callable[[str], None] | None = None, progress_every_s: float = 30.0):
        """``progress`` gets a line every ``progress_every_s`` while a checkpoint's trials come in."""
        self.trials = trials
        self.progress = progress
        self.progress_every_s = progress_every_s
        self.protocols = tuple(protocols)
        self.launch_args = list(launch_args)
        self.backend_args = dict(backend_args or {})
        self.gf_launch = gf_launch or console_script("gf-launch")
        self.timeout_s = timeout_s

    def command(self, checkpoint: Path, output_dir: Path) -> list[str]:
        """The gf-launch command line for one checkpoint."""
        args = {"checkpoint": str(Path(checkpoint).resolve()), **self.backend_args}
        flow = yaml.safe_dump(args, default_flow_style=True, width=10**6).strip()
        return [self.gf_launch, "sim_eval", "policy:=vla", f"backend_args:={flow}", f"checkpoint:={args['checkpoint']}",
                f"output_dir:={output_dir}",
                f"trials:={self.trials}", f"protocols:=[{','.join(self.protocols)}]", *self.launch_args]

    def _wait(self, proc: subprocess.Popen, name: str, output_dir: Path) -> None:
        """Wait for gf-launch, saying how many trials are in (and the ETA) as they come."""
        started = time.monotonic()
        deadline = None if self.timeout_s is None else started + self.timeout_s
        total, reported = self.trials * len(self.protocols), -1
        while True:
            wait = self.progress_every_s if deadline is None else min(self.progress_every_s, deadline - time.monotonic())
            try:
                proc.wait(timeout=max(wait, 0.0))
                return
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            done = len(ResultsFile(output_dir).read())
            if self.progress is not None and done != reported:
                reported, elapsed = done, time.monotonic() - started
                eta = f", ETA {(total - done) * elapsed / done / 60:.0f} min" if done else ""
                self.progress(f"    {name}: {done}/{total} trials{eta}")

    def __call__(self, checkpoint: Path, output_dir: Path) -> list[dict]:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command(checkpoint, output_dir)
        log_path = output_dir / "sweep_launch.log"
        with open(log_path, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            except FileNotFoundError as exc:
                raise SweepError(f"{self.gf_launch} not found: is the workspace installed (scripts/setup.sh)?") from exc
            except OSError as exc:
                raise SweepError(f"cannot run {self.gf_launch}: {exc}") from exc
            try:
                self._wait(proc, Path(checkpoint).name, output_dir)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                proc.wait()
                raise SweepError(f"evaluation of {checkpoint} exceeded {self.timeout_s} s (log: {log_path})") from exc
        if proc.returncode != 0:
            raise SweepError(f"gf-launch failed with exit code {proc.returncode} for {checkpoint} (log: {log_path})")
        records = [r.to_dict() for r in ResultsFile(output_dir).read()]
        if not is_complete(records, self.trials, self.protocols):
            raise SweepError(f"{output_dir} holds incomplete results after gf-launch finished (log: {log_path})")
        return records


def select_best(results: Sequence[CheckpointResult], protocol: str = SELECT_PROTOCOL) -> CheckpointResult | None:
    """The checkpoint with the highest overall SR on ``protocol`` (Val: the paper's rule).

    Ties go to the higher mean overall SR on the other protocols, then to the earlier checkpoint.
    """
    scored = [r for r in results if (rate := r.rate(protocol)) is not None and rate.trials > 0]
    if not scored:
        return None

    def key(r: CheckpointResult) -> tuple[float, float, int]:
        others = [s.overall.value for p, s in r.summaries.items() if p != protocol and s.overall.trials]
        return (r.rate(protocol).value, sum(others) / len(others) if others else 0.0, -r.step)

    return max(scored, key=key)


def run_sweep(
    run_dir: str | Path,
    evaluate: Evaluator,
    out_dir: str | Path | None = None,
    steps: Sequence[int] | None = None,
    trials: int | None = None,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Evaluate the run's checkpoints (skipping complete ones when ``trials`` is given), pick the
    best by Val overall SR and write the table, JSON and figure."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / SWEEP_DIR
    checkpoints = find_checkpoints(run_dir, steps)
    if not checkpoints:
        raise SweepError(f"no checkpoints in {run_dir}")
    say = progress or (lambda msg: None)
    results = []
    for i, (step, ckpt) in enumerate(checkpoints, 1):
        odir = out / ckpt.name
        existing = [r.to_dict() for r in ResultsFile(odir).read()]
        if trials is not None and is_complete(existing, trials, protocols):
            say(f"[{i}/{len(checkpoints)}] step {step}: complete results in {odir}")
            records, evaluated = existing, False
        else:
            say(f"[{i}/{len(checkpoints)}] step {step}: evaluating {ckpt}")
            records, evaluated = evaluate(ckpt, odir), True
        if not records:
            raise SweepError(f"the evaluation of {ckpt} produced no results")
        results.append(CheckpointResult(step, ckpt, odir, summarize(records), evaluated))
    best = select_best(results)
    sweep = SweepResult(results, best, out)
    out.mkdir(parents=True, exist_ok=True)
    sweep.files = write_outputs(sweep, title=run_dir.name)
    return sweep


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------


def _protocols_of(results: Sequence[CheckpointResult]) -> list[str]:
    seen = {p for r in results for p in r.summaries}
    order = [p for p in DEFAULT_PROTOCOLS if p in seen]
    return order + sorted(seen - set(order))


def _pct(rate: Rate | None) -> str:
    return "n/a" if rate is None or not rate.trials else f"{100 * rate.value:.1f}"


def sweep_table(sweep: SweepResult, title: str = "") -> str:
    """Markdown: one row per checkpoint, Exe/Rec/Overall SR per protocol; the best is marked."""
    protocols = _protocols_of(sweep.results)
    head = "| Step | " + " | ".join(f"{p} Exe / Rec / Overall" for p in protocols) + " |"
    lines = [f"### Checkpoint sweep {title}".rstrip(), "", head, "|---:|" + "---:|" * len(protocols)]
    for r in sweep.results:
        cells = [" / ".join(_pct(r.rate(p, w)) for w, _ in RATES) for p in protocols]
        mark = " **best**" if sweep.best is r else ""
        lines.append(f"| {r.step}{mark} | " + " | ".join(cells) + " |")
    lines.append("")
    if sweep.best is not None:
        val = sweep.best.rate(SELECT_PROTOCOL)
        lines.append(f"Best by {SELECT_PROTOCOL} overall SR: step {sweep.best.step} ({str(val).strip()}) -> {sweep.best.checkpoint}")
    else:
        lines.append(f"No checkpoint was evaluated on {SELECT_PROTOCOL}: no best checkpoint.")
    lines.append("Rates in %; Rec. SR = successes / executions.")
    return "\n".join(lines) + "\n"


def _rate_json(rate: Rate) -> dict[str, Any]:
    lo, hi = rate.interval
    return {"successes": rate.successes, "trials": rate.trials,
            "rate": rate.value if rate.trials else None, "ci95": [lo, hi]}


def sweep_json(sweep: SweepResult) -> dict[str, Any]:
    return {
        "select_protocol": SELECT_PROTOCOL,
        "best": None if sweep.best is None else {"step": sweep.best.step, "checkpoint": str(sweep.best.checkpoint)},
        "checkpoints": [
            {"step": r.step, "checkpoint": str(r.checkpoint), "output_dir": str(r.output_dir),
             "protocols": {p: {w: _rate_json(getattr(s, w)) for w, _ in RATES} | {"trials": s.trials}
                           for p, s in r.summaries.items()}}
            for r in sweep.results
        ],
    }


def plot_sweep(sweep: SweepResult, path: Path, title: str = "") -> None:
    """Figure 2 of the paper: Exe/Rec/overall SR vs fine-tuning steps, one panel per protocol,
    95 % Wilson bands, the chosen checkpoint marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = _protocols_of(sweep.results)
    fig, axes = plt.subplots(1, len(protocols), figsize=(4.6 * len(protocols), 3.6), squeeze=False, sharey=True)
    colors = {"execution": "#4C72B0", "recognition": "#DD8452", "overall": "#55A868"}
    steps = [r.step for r in sweep.results]
    for ax, protocol in zip(axes[0], protocols):
        for which, label in RATES:
            xs, ys, lo, hi = [], [], [], []
            for r in sweep.results:
                rate = r.rate(protocol, which)
                if rate is None or not rate.trials:
                    continue
                a, b = rate.interval
                xs.append(r.step)
                ys.append(100 * rate.value)
                lo.append(100 * a)
                hi.append(100 * b)
            ax.plot(xs, ys, marker="o", color=colors[which], label=label)
            ax.fill_between(xs, lo, hi, color=colors[which], alpha=0.15, linewidth=0)
        ax.axhline(100 * CHANCE_RECOGNITION, color="grey", linestyle=":", linewidth=1, label="chance (Rec.)")
        if sweep.best is not None:
            ax.axvline(sweep.best.step, color="black", linestyle="--", linewidth=1,
                       label=f"best by {SELECT_PROTOCOL} ({sweep.best.step})")
        ax.set_title(protocol)
        ax.set_xlabel("fine-tuning steps")
        ax.set_xticks(steps, [f"{s / 1000:g}k" if s >= 1000 else str(s) for s in steps])
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success rate (%)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(sweep: SweepResult, title: str = "") -> dict[str, Path]:
    """``sweep.md``, ``sweep.json`` and ``sweep.png`` in the sweep directory."""
    out = sweep.out_dir
    files = {"table": out / "sweep.md", "json": out / "sweep.json", "plot": out / "sweep.png"}
    files["table"].write_text(sweep_table(sweep, title), encoding="utf-8")
    files["json"].write_text(json.dumps(sweep_json(sweep), indent=2) + "\n", encoding="utf-8")
    plot_sweep(sweep, files["plot"], title)
    return files


def evaluate_on_ray(run_dir: Path, evaluator: SimEvaluator, out_dir: Path | None, steps: Sequence[int] | None,
                    shard_trials: int, ray_address: str, composed: bool = True) -> None:
    """``--ray``: the shards of every checkpoint not yet complete, all submitted to Ray at once,
    merged into each checkpoint's usual output directory."""
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / SWEEP_DIR
    shards = []
    for _, ckpt in find_checkpoints(run_dir, steps):
        odir = out / ckpt.name
        if is_complete([r.to_dict() for r in ResultsFile(odir).read()], evaluator.trials, evaluator.protocols):
            continue
        planned = {f"{name}:=" for name in PLANNED_ARGS}
        launch_args = [a for a in evaluator.command(ckpt, odir)[2:] if not any(a.startswith(p) for p in planned)]
        shards += plan_shards(odir, launch_args, evaluator.protocols, evaluator.trials, shard_trials, composed=composed)
    records = run_shards(shards, ray_address, evaluator.gf_launch, lambda line: print(line, file=sys.stderr, flush=True),
                         timeout_s=evaluator.timeout_s)
    for odir in dict.fromkeys(s.output_dir for s in shards):
        merge_results(odir, [s for s in shards if s.output_dir == odir], records, evaluator.protocols)


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-sweep``."""
    parser = argparse.ArgumentParser(prog="gf-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="training run directory (with checkpoints/step_N)")
    parser.add_argument("--trials", type=int, default=100, help="trials per protocol (default 100, as the paper)")
    parser.add_argument("--protocols", default=",".join(DEFAULT_PROTOCOLS), help="comma-separated (default ID,Train,Val)")
    parser.add_argument("--steps", help="only these checkpoint steps, comma-separated")
    parser.add_argument("--out", type=Path, help=f"sweep directory (default RUN_DIR/{SWEEP_DIR})")
    parser.add_argument("--launch-arg", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra gf-launch sim_eval argument, e.g. seed:=1 (repeatable)")
    parser.add_argument("--backend-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra vla backend argument, e.g. device=cuda (repeatable)")
    parser.add_argument("--gf-launch", help="the gf-launch executable (default: this environment's)")
    parser.add_argument("--timeout", type=float, help="seconds allowed per checkpoint evaluation")
    add_shard_arguments(parser)
    parser.add_argument("--shard-trials", type=int, default=25, help="with --ray: trials per shard (default 25)")
    args = parser.parse_args(argv)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if SELECT_PROTOCOL not in protocols:
        parser.error(f"--protocols must include {SELECT_PROTOCOL}: the best checkpoint is chosen by it")
    backend_args = {}
    for item in args.backend_arg:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--backend-arg {item!r} is not KEY=VALUE")
        backend_args[key] = yaml.safe_load(value)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    evaluator = SimEvaluator(args.trials, protocols, args.launch_arg, backend_args, args.gf_launch, args.timeout,
                             progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        if args.ray is not None:  # evaluate every checkpoint's shards on Ray first; run_sweep then finds them complete
            evaluate_on_ray(args.run_dir, evaluator, args.out, steps, args.shard_trials, args.ray, not args.processes)
        sweep = run_sweep(args.run_dir, evaluator, args.out, steps, args.trials, protocols,
                          progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (SweepError, ShardError) as exc:
        print(f"gf-sweep: {exc}", file=sys.stderr)
        return 1
    print(sweep.files["table"].read_text(encoding="utf-8"), end="")
    print(f"figure: {sweep.files['plot']}\nall rates: {sweep.files['json']}")
    return 0 if sweep.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
