"""Checkpoint sweeps: the best checkpoint by Val overall SR (the paper's rule, with tie-breaks),
the table / JSON / Figure-2 plot, skipping complete evaluations, and the gf-launch subprocess
path (exercised with a stand-in gf-launch that writes a results file as the real one does)."""

from __future__ import annotations

import inspect
import json
import re
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from gf_eval.results import ResultsFile, TrialRecord
from gf_eval.scoring import summarize
from gf_eval.trials import make_trial
from gf_training.sweep import (
    CheckpointResult,
    SimEvaluator,
    SweepError,
    find_checkpoints,
    is_complete,
    main,
    run_sweep,
    select_best,
)

STEPS = (5_000, 10_000, 20_000, 30_000)
# step -> protocol -> (executed, successes) out of TRIALS
TRIALS = 10
OUTCOMES = {
    5_000: {"ID": (9, 6), "Train": (8, 5), "Val": (7, 3)},
    10_000: {"ID": (10, 9), "Train": (9, 7), "Val": (9, 5)},
    20_000: {"ID": (10, 10), "Train": (10, 8), "Val": (9, 4)},
    30_000: {"ID": (10, 10), "Train": (10, 9), "Val": (10, 4)},
}


def make_run(tmp_path: Path, steps=STEPS) -> Path:
    run = tmp_path / "run"
    for step in steps:
        d = run / "checkpoints" / f"step_{step:06d}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")
    (run / "checkpoints" / ".step_000040.partial").mkdir()  # an interrupted save is not a checkpoint
    (run / "checkpoints" / "step_000050").mkdir()  # nor is a directory without weights
    return run


def records_for(outcomes: dict[str, tuple[int, int]], trials: int = TRIALS) -> list[TrialRecord]:
    """Trial records with the given executed/success counts per protocol."""
    out = []
    for protocol, (executed, successes) in outcomes.items():
        for i in range(trials):
            spec = make_trial(protocol, i)
            if i < successes:
                placed = spec.target_index
            elif i < executed:
                placed = (spec.target_index + 1) % 3
            else:
                placed = -1
            out.append(TrialRecord.score(spec, placed, placed == spec.target_index, "timeout" if placed < 0 else "success", 200, 1.0))
    return out


class FakeEvaluator:
    """Writes results the way gf-launch does and counts its calls."""

    def __init__(self, outcomes=OUTCOMES):
        self.outcomes, self.calls = outcomes, []

    def __call__(self, checkpoint: Path, output_dir: Path) -> list[dict]:
        step = int(checkpoint.name[5:])
        self.calls.append(step)
        results = ResultsFile(output_dir)
        for r in records_for(self.outcomes[step]):
            results.append(r)
        return [r.to_dict() for r in results.read()]


def test_best_by_val_overall_with_table_json_and_figure(tmp_path):
    run = make_run(tmp_path)
    assert [s for s, _ in find_checkpoints(run)] == list(STEPS)
    evaluator = FakeEvaluator()
    sweep = run_sweep(run, evaluator, trials=TRIALS)
    assert evaluator.calls == list(STEPS)
    # Val overall: 30 %, 50 %, 40 %, 40 % -> 10k, although later checkpoints execute better
    assert sweep.best.step == 10_000
    val = sweep.best.rate("Val")
    assert (val.successes, val.trials) == (5, 10)
    rec = sweep.results[0].rate("Val", "recognition")
    assert (rec.successes, rec.trials) == (3, 7)  # recognition = successes / executions

    table = sweep.files["table"].read_text()
    assert "| 10000 **best** |" in table and "90.0 / 55.6 / 50.0" in table  # Val: Exe / Rec / Overall of 10k
    data = json.loads(sweep.files["json"].read_text())
    assert data["best"]["step"] == 10_000 and data["select_protocol"] == "Val"
    assert data["checkpoints"][3]["protocols"]["Val"]["execution"]["successes"] == 10
    png = sweep.files["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(sweep.files["plot"]).shape
    assert width > 2 * height  # three panels side by side: ID, Train, Val

    # a second sweep finds complete results and evaluates nothing; without `trials` it re-evaluates
    again = run_sweep(run, evaluator, trials=TRIALS)
    assert evaluator.calls == list(STEPS) and not any(r.evaluated for r in again.results)
    assert again.best.step == 10_000
    only = run_sweep(run, FakeEvaluator(), steps=[20_000, 30_000], out_dir=tmp_path / "other")
    assert [r.step for r in only.results] == [20_000, 30_000] and only.best.step == 30_000  # Val tie: better on ID/Train
    with pytest.raises(SweepError, match="15000"):
        run_sweep(run, evaluator, steps=[15_000])


def result(step: int, outcomes: dict[str, tuple[int, int]]) -> CheckpointResult:
    return CheckpointResult(step, Path(f"step_{step}"), Path("."), summarize([r.to_dict() for r in records_for(outcomes)]))


def test_tie_breaks():
    a = result(5_000, {"ID": (10, 5), "Val": (10, 5)})
    b = result(10_000, {"ID": (10, 8), "Val": (10, 5)})
    c = result(20_000, {"ID": (10, 8), "Val": (10, 5)})
    assert select_best([a, b, c]).step == 10_000  # equal Val: better elsewhere, then earlier
    assert select_best([result(1, {"ID": (10, 10)})]) is None  # never evaluated on Val: no choice
    assert not is_complete([r.to_dict() for r in records_for({"Val": (5, 5)}, trials=4)], 5, ["Val"])


FAKE_LAUNCH = '''\
    #!{python}
    """Stand-in for gf-launch sim_eval: checks the arguments, writes results.jsonl like the eval node."""
    import json, sys, time
    from pathlib import Path
    import yaml
    from gf_eval.results import ResultsFile, TrialRecord
    from gf_eval.trials import make_trial
    TRIALS = {trials}
    OUTCOMES = {{int(k): v for k, v in json.loads({outcomes!r}).items()}}
{records_for}
    assert sys.argv[1] == "sim_eval", sys.argv
    args = dict(a.split(":=", 1) for a in sys.argv[2:])
    assert args["policy"] == "vla" and args["seed"] == "3", args
    backend = yaml.safe_load(args["backend_args"])
    assert backend["device"] == "cpu", backend
    ckpt = Path(backend["checkpoint"])
    assert ckpt.is_absolute() and (ckpt / "config.json").exists()
    step = int(ckpt.name[5:])
    if step == {fail_step}:
        print("simulated crash"); sys.exit(3)
    protocols = args["protocols"].strip("[]").split(",")
    assert protocols == ["ID", "Train", "Val"] and int(args["trials"]) == {trials}
    out = ResultsFile(Path(args["output_dir"]))
    for r in records_for(OUTCOMES[step]):
        out.append(r)
        time.sleep({delay})
    print("done", step)
'''


def write_fake_launch(tmp_path: Path, fail_step: int = -1, delay: float = 0.0) -> Path:
    script = tmp_path / f"fake-gf-launch-{fail_step}-{delay}"
    source = textwrap.indent(inspect.getsource(records_for), "    ")
    script.write_text(textwrap.dedent(FAKE_LAUNCH.format(
        python=sys.executable, outcomes=json.dumps(OUTCOMES), records_for=source, fail_step=fail_step, trials=TRIALS,
        delay=delay)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_sim_evaluator_runs_gf_launch(tmp_path):
    run = make_run(tmp_path, steps=(5_000,))
    ckpt = find_checkpoints(run)[0][1]
    evaluator = SimEvaluator(trials=TRIALS, launch_args=["seed:=3"], backend_args={"device": "cpu"},
                             gf_launch=str(write_fake_launch(tmp_path)))
    cmd = evaluator.command(ckpt, tmp_path / "out")
    assert cmd[1:3] == ["sim_eval", "policy:=vla"] and f"trials:={TRIALS}" in cmd and "protocols:=[ID,Train,Val]" in cmd
    records = evaluator(ckpt, tmp_path / "out")
    assert len(records) == 3 * TRIALS
    assert "done 5000" in (tmp_path / "out" / "sweep_launch.log").read_text()

    failing = SimEvaluator(trials=TRIALS, launch_args=["seed:=3"], backend_args={"device": "cpu"},
                           gf_launch=str(write_fake_launch(tmp_path, fail_step=5_000)))
    with pytest.raises(SweepError, match="exit code 3.*sweep_launch.log"):
        failing(ckpt, tmp_path / "out2")
    with pytest.raises(SweepError, match="not found"):
        SimEvaluator(gf_launch=str(tmp_path / "no-such-launcher"))(ckpt, tmp_path / "out3")


def test_sim_evaluator_reports_trials_as_they_come_in(tmp_path):
    run = make_run(tmp_path, steps=(5_000,))
    ckpt = find_checkpoints(run)[0][1]
    lines: list[str] = []
    evaluator = SimEvaluator(trials=TRIALS, launch_args=["seed:=3"], backend_args={"device": "cpu"},
                             gf_launch=str(write_fake_launch(tmp_path, delay=0.1)), progress=lines.append,
                             progress_every_s=0.5)
    assert len(evaluator(ckpt, tmp_path / "out")) == 3 * TRIALS
    counts = [int(re.search(r"step_005000: (\d+)/30 trials", line).group(1)) for line in lines]
    assert len(counts) >= 2 and counts == sorted(counts) and counts[0] < 3 * TRIALS, lines
    assert "ETA" in lines[-1]


def test_gf_sweep_command(tmp_path, capsys):
    run = make_run(tmp_path)
    launch = write_fake_launch(tmp_path)
    argv = [str(run), "--trials", str(TRIALS), "--launch-arg", "seed:=3", "--backend-arg", "device=cpu",
            "--gf-launch", str(launch)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Best by Val overall SR: step 10000" in out and "sweep.png" in out
    assert (run / "sweep" / "step_010000" / "results.jsonl").exists()
    with pytest.raises(SystemExit):  # the best is chosen by Val, so Val must be evaluated
        main([str(run), "--protocols", "ID,Train"])
    assert main([str(tmp_path / "empty")]) == 1
    assert "no checkpoints" in capsys.readouterr().err
