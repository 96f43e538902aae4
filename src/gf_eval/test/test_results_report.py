"""Results survive crashes and resume without loss or repetition; reports agree with the results."""

import csv
import json

import pytest

from gf_eval.evaluation import Evaluation, EvaluationConfig
from gf_eval.report import main as report_main
from gf_eval.results import ResultsFile, TrialRecord


def record_for(spec, placed):
    return TrialRecord.score(spec, placed_card=placed, upstream_success=placed == spec.target_index,
                             end_reason="success" if placed == spec.target_index else "timeout", steps=50, wall_time=1.0)


def test_evaluation_resumes_after_a_torn_write_without_losing_or_repeating_trials(tmp_path):
    config = EvaluationConfig(output_dir=str(tmp_path), policy="test", protocols=("Train", "Val"), trials_per_protocol=5)
    ev = Evaluation(config)
    assert len(ev.plan) == 10 and len(ev.pending()) == 10
    for spec in ev.pending()[:4]:
        ev.record(record_for(spec, spec.target_index))
    with open(tmp_path / "results.jsonl", "ab") as f:  # a crash in the middle of the 5th line
        f.write(b'{"trial_id": "Train-0004-0", "protocol": "Tr')
    ev.close()
    resumed = Evaluation(config)
    assert [r.trial_id for r in resumed.done] == [s.trial_id for s in ev.plan[:4]]
    assert [s.trial_id for s in resumed.pending()] == [s.trial_id for s in ev.plan[4:]]
    for spec in resumed.pending():
        resumed.record(record_for(spec, (spec.target_index + 1) % 3))
    ids = [r.trial_id for r in ResultsFile(tmp_path).read()]
    assert sorted(ids) == sorted(s.trial_id for s in ev.plan) and len(ids) == len(set(ids))
    with pytest.raises(ValueError, match="already recorded"):
        resumed.record(record_for(ev.plan[0], 0))


def test_resuming_with_another_policy_is_refused(tmp_path):
    Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="a", trials_per_protocol=1)).close()
    with pytest.raises(ValueError, match="different run .*policy: 'a' -> 'b'"):
        Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="b", trials_per_protocol=1))


def test_report_files_agree_with_the_results(tmp_path, capsys):
    ev = Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="half", protocols=("Val",), trials_per_protocol=6))
    for k, spec in enumerate(ev.pending()):
        placed = spec.target_index if k < 3 else (-1 if k == 5 else (spec.target_index + 1) % 3)
        ev.record(record_for(spec, placed))
    report = ev.finish()
    rows = list(csv.DictReader(open(report / "summary.csv")))
    assert rows[0]["protocol"] == "Val"
    assert (rows[0]["execution_successes"], rows[0]["execution_trials"]) == ("5", "6")
    assert (rows[0]["recognition_successes"], rows[0]["recognition_trials"]) == ("3", "5")
    assert (rows[0]["overall_successes"], rows[0]["overall_trials"]) == ("3", "6")
    table = (report / "summary.md").read_text()
    assert "| Val | 6 |  83.3% [44-97] |  60.0% [23-88] |  50.0% [19-81] |" in table
    per_emoji = list(csv.DictReader(open(report / "per_emoji.csv")))
    assert sum(int(r["trials"]) for r in per_emoji) == 6
    assert (report / "success_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report / "config.json").read_text())["policy"] == "half"
    assert report_main(["show", str(tmp_path)]) == 0
    assert "| Val | 6 |" in capsys.readouterr().out


def test_a_second_evaluation_in_the_same_directory_is_refused(tmp_path):
    first = Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="a", trials_per_protocol=1))
    with pytest.raises(RuntimeError, match="another evaluation is running"):
        Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="a", trials_per_protocol=1))
    first.close()
    Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="a", trials_per_protocol=1)).close()


def test_compare_keeps_runs_of_the_same_policy_apart(tmp_path, capsys):
    from gf_eval.report import run_labels

    dirs = []
    for name, placed in (("ckpt_a", 0), ("ckpt_b", 1), ("oracle", None)):
        config = EvaluationConfig(output_dir=str(tmp_path / name), policy="oracle" if name == "oracle" else "vla",
                                  protocols=("Val",), trials_per_protocol=3)
        ev = Evaluation(config)
        for spec in ev.pending():
            ev.record(record_for(spec, spec.target_index if placed is None else placed))
        ev.close()
        dirs.append(tmp_path / name)
    labels = run_labels([(d, json.loads((d / "run.json").read_text())) for d in dirs])
    assert labels == [f"vla ({dirs[0]})", f"vla ({dirs[1]})", "oracle"]
    assert report_main(["compare", *map(str, dirs), "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert all(f"({d})" in out for d in dirs) and (tmp_path / "cmp.png").stat().st_size > 0


def test_the_progress_line_never_shows_nan(tmp_path):
    ev = Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="test", protocols=("Val",), trials_per_protocol=4))
    assert ev.progress_line() == "[0/4] | ETA ?"
    ev.record(record_for(ev.plan[0], -1))  # nothing placed: recognition undefined
    line = ev.progress_line()
    assert "nan" not in line and line.startswith("[1/4] | Val: exe 0% rec - sr 0% | ")
    ev.close()


def test_an_eval_node_given_another_runs_directory_says_so_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    Evaluation(EvaluationConfig(output_dir=str(tmp_path), policy="oracle", trials_per_protocol=1)).close()
    proc = subprocess.run([str(Path(sys.executable).parent / "gf-eval"), "--ros-args", "-p", f"output_dir:={tmp_path}",
                           "-p", "policy:=chance"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "gf-eval: " in proc.stderr and "policy: 'oracle' -> 'chance'" in proc.stderr
