"""End to end: the real graph (sim bridge, policy, eval node) over DDS on this machine."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gf_eval.results import ResultsFile
from gf_eval.scoring import summarize

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def launch(*assignments, timeout=900):
    proc = subprocess.run([str(BIN / "gf-launch"), "sim_eval", *assignments], capture_output=True, text=True, timeout=timeout)
    return proc


def summary(output_dir):
    return summarize([r.to_dict() for r in ResultsFile(output_dir).read()])


def test_oracle_executes_and_recognises_and_the_report_agrees(tmp_path, fresh_domain):
    out = tmp_path / "oracle"
    proc = launch("policy:=oracle", "trials:=4", f"output_dir:={out}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    s = summary(out)
    assert set(s) == {"ID", "Train", "Val"}
    for protocol in s.values():
        assert protocol.trials == 4
        assert protocol.execution.value >= 0.95 and protocol.recognition.value >= 0.95
    table = (out / "report" / "summary.md").read_text()
    for name, protocol in s.items():
        assert f"| {name} | 4 | {protocol.execution} | {protocol.recognition} | {protocol.overall} |" in table
    assert "| Val | 4 |" in proc.stdout  # the table is printed at the end
    assert (out / "report" / "success_rates.png").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["policy"] == "oracle" and run["split_hash"] and "mani_skill" in run["versions"]


def test_chance_recognition_is_clearly_below_the_oracle(tmp_path, fresh_domain):
    out = tmp_path / "chance"
    proc = launch("policy:=chance", "trials:=12", "protocols:=[Val]", f"output_dir:={out}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    val = summary(out)["Val"]
    assert val.execution.value >= 0.9
    assert val.recognition.value <= 0.6  # oracle: >= 0.95; chance level 1/3


def test_the_composed_graph_runs_in_one_process(tmp_path, fresh_domain):
    """`--composed` (options may follow the graph name): sim bridge, policy and eval node on one
    multi-threaded executor in the starter's own process."""
    out = tmp_path / "composed"
    proc = launch("--composed", "policy:=chance", "trials:=6", "protocols:=[Val]", f"output_dir:={out}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "composed" in proc.stdout.splitlines()[0]
    val = summary(out)["Val"]
    assert val.trials == 6 and val.execution.value >= 0.8
    ends = {r.end_reason for r in ResultsFile(out).read()}
    assert ends <= {"success", "timeout"}, ends  # every episode ended in the simulator, none stalled


def test_resume_after_sigkill_runs_each_trial_exactly_once(tmp_path, fresh_domain):
    out = tmp_path / "resume"
    cmd = [str(BIN / "gf-launch"), "sim_eval", "policy:=oracle", "trials:=4", "protocols:=[Train, Val]", f"output_dir:={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 2):
        time.sleep(0.05)
    assert results.exists()
    # SIGKILL everything at once, mid-trial: the three nodes and the starter.
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 3
    for pid in children + [str(proc.pid)]:
        os.kill(int(pid), signal.SIGKILL)
    proc.wait()
    done_before = len(ResultsFile(out).read())
    assert 2 <= done_before < 8
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:]
    ids = [r.trial_id for r in ResultsFile(out).read()]
    assert len(ids) == len(set(ids)) == 8
    assert f"{done_before} already in" in again.stdout


def test_a_dead_policy_ends_trials_as_policy_timeout_and_the_run_continues(tmp_path, fresh_domain):
    out = tmp_path / "dead"
    args = ["policy:=oracle", "trials:=3", "protocols:=[Val]", f"output_dir:={out}", "policy_timeout:=3.0"]
    env = dict(os.environ)
    starter = subprocess.Popen([str(BIN / "gf-launch"), "sim_eval", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 1):
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(starter.pid), "-f", "gf-policy"], capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGKILL)
    output, _ = starter.communicate(timeout=300)
    assert starter.returncode == 0, output[-4000:]
    records = ResultsFile(out).read()
    assert len(records) == 3
    assert records[0].end_reason == "success"
    assert [r.end_reason for r in records[1:]] == ["policy_timeout", "policy_timeout"]
    assert all(not r.executed for r in records[1:])
