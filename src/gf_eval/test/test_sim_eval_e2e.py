"""End to end: the real graph (sim bridge, policy, eval node) over DDS on this machine."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gf_eval.results import ResultsFile
from gf_eval.scoring import SIM_END_REASONS, summarize

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
    assert "deprecated" not in proc.stdout + proc.stderr  # the graph's arguments are no rcl remap rules
    val = summary(out)["Val"]
    assert val.trials == 6 and val.execution.value >= 0.8
    ends = {r.end_reason for r in ResultsFile(out).read()}
    assert ends <= set(SIM_END_REASONS), ends  # every episode ended in the simulator, none stalled


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


def outcomes(output_dir) -> list[tuple]:
    return [(r.trial_id, r.end_reason, r.placed_card) for r in ResultsFile(output_dir).read()]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    out = tmp_path_factory.mktemp("undisturbed")
    proc = launch("policy:=oracle", "trials:=3", "protocols:=[Val]", f"output_dir:={out}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    return outcomes(out)


@pytest.mark.parametrize("victim", ["policy", "sim_bridge", "eval"])
def test_a_dead_node_is_never_scored_and_the_rerun_equals_an_undisturbed_run(tmp_path, fresh_domain, undisturbed, victim):
    """An OOM kill or a segfault of any node stops the graph at once with a reason; the trial in flight
    is not recorded (never as the policy's failure) and the same command finishes the run."""
    out = tmp_path / victim
    cmd = [str(BIN / "gf-launch"), "sim_eval", "policy:=oracle", "trials:=3", "protocols:=[Val]", f"output_dir:={out}"]
    starter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 1):
        time.sleep(0.05)
    node = subprocess.run(["pgrep", "-P", str(starter.pid), "-f", f"__node:={victim}"], capture_output=True, text=True).stdout.split()
    assert len(node) == 1
    os.kill(int(node[0]), signal.SIGKILL)
    output, _ = starter.communicate(timeout=120)
    assert starter.returncode == 128 + signal.SIGKILL, output[-4000:]
    if victim != "eval":
        assert f"node {victim} exited with code -9: stopping the graph" in output
    kept = outcomes(out)
    assert kept == undisturbed[:len(kept)] and len(kept) < 3  # nothing scored after the kill
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:]
    assert outcomes(out) == undisturbed


def test_kills_at_random_points_lose_and_duplicate_nothing(tmp_path, fresh_domain, undisturbed):
    """The policy, the bridge and the eval node SIGKILLed at seeded random moments of one run (start-
    up, mid-trial, between trials), the same command re-run after each: the results equal an
    undisturbed run's, trial for trial (0 lost, 0 duplicated, the oracle's own outcomes)."""
    rng = random.Random(20261205)
    out = tmp_path / "random_kills"
    cmd = [str(BIN / "gf-launch"), "sim_eval", "policy:=oracle", "trials:=3", "protocols:=[Val]", f"output_dir:={out}"]
    kills = []
    for victim in rng.sample(["policy", "sim_bridge", "eval"], 3):
        done = len(ResultsFile(out).read()) if out.exists() else 0
        after, delay = rng.randint(done, 2), rng.uniform(0.0, 1.5)  # this many results in, then up to a trial more
        starter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        node = []
        while starter.poll() is None and not node:  # start-up: kill it as soon as it exists
            node = subprocess.run(["pgrep", "-P", str(starter.pid), "-f", f"__node:={victim}"],
                                  capture_output=True, text=True).stdout.split()
        while starter.poll() is None and len(ResultsFile(out).read() if out.exists() else []) < after:
            time.sleep(0.02)
        time.sleep(delay)
        if node and starter.poll() is None:
            os.kill(int(node[0]), signal.SIGKILL)
        output, _ = starter.communicate(timeout=300)
        kills.append((victim, after, round(delay, 2), len(ResultsFile(out).read()), starter.returncode))
        assert starter.returncode in (0, 128 + signal.SIGKILL), (kills, output[-3000:])
        assert outcomes(out) == undisturbed[:len(outcomes(out))], kills  # what was kept is what the oracle does
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:]
    assert outcomes(out) == undisturbed, kills


@pytest.mark.parametrize("mistake,reason", [
    ("missing checkpoint", "checkpoint: no directory"),
    ("no backend_args", "policy backend 'vla': missing a required argument: 'checkpoint'; give its arguments as backend_args"),
    ("server down", "cannot reach ws://127.0.0.1:9 after"),
])
def test_a_policy_that_cannot_start_ends_the_run_with_a_one_line_reason(tmp_path, fresh_domain, mistake, reason):
    args = {"missing checkpoint": ["policy:=vla", f"backend_args:={{checkpoint: {tmp_path / 'missing'}}}"],
            "no backend_args": ["policy:=vla", f"checkpoint:={tmp_path / 'missing'}"],
            "server down": ["policy:=remote", "backend_args:={url: 'ws://127.0.0.1:9', retries: 0}"]}[mistake]
    out = tmp_path / "no_policy"
    proc = launch(*args, "trials:=2", "protocols:=[Val]", f"output_dir:={out}",
                  timeout=120)  # not the 180 s graph start-up wait
    assert proc.returncode != 0
    assert "node policy exited with code" in proc.stdout, proc.stdout[-3000:]
    assert reason in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert ResultsFile(out).read() == []


def test_a_mistyped_launch_argument_is_refused_in_one_line_before_any_node_starts(tmp_path):
    proc = launch("trials:=ten", f"output_dir:={tmp_path}", timeout=60)
    assert proc.returncode == 2
    assert "eval.trials (from '{trials}'): expected an integer, got 'ten'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "ROS_DOMAIN_ID" not in proc.stdout


def test_two_evaluations_share_a_ros_domain_under_two_namespaces(tmp_path, fresh_domain):
    """Relative names: each graph talks only to itself (a chunk of the other graph would be
    rejected as stale and counted)."""
    runs = {}
    for namespace, policy in (("arm1", "oracle"), ("arm2", "chance")):
        out = tmp_path / namespace
        cmd = [str(BIN / "gf-launch"), "sim_eval", f"policy:={policy}", "trials:=3", "protocols:=[Val]",
               f"namespace:={namespace}", f"output_dir:={out}"]
        runs[namespace] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for out, proc in runs.values():
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output[-3000:]
        assert f"ROS_DOMAIN_ID={fresh_domain}" in output
        records = ResultsFile(out).read()
        assert len(records) == 3 and sum(r.chunks_rejected for r in records) == 0, [r.to_dict() for r in records]
    assert all(r.success for r in ResultsFile(runs["arm1"][0]).read())  # the oracle's own graph
