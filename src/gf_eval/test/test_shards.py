"""Sharded evaluation (gf_eval.shards): the plan covers every trial once, the merge is ordered,
one record per trial id and refuses gaps; on a local loopback Ray, 2 shards give the serial run's
trials and outcomes, and a worker killed mid-shard loses and duplicates nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gf_eval.results import ResultsFile, TrialRecord
from gf_eval.shards import ShardError, merge_results, plan_shards
from gf_eval.trials import make_trial

ORACLE = ("policy:=oracle",)
TRIALS = 6  # two shards of 3: a kill after a shard's first trial leaves two to resume


def record(protocol: str, index: int, success: bool = True) -> dict:
    spec = make_trial(protocol, index)
    placed = spec.target_index if success else -1
    return TrialRecord.score(spec, placed, success, "done", 10, 1.0).to_dict()


def test_the_plan_covers_every_trial_once(tmp_path):
    shards = plan_shards(tmp_path, ORACLE, ["ID", "Val"], trials=10, shard_trials=4, first_index=3)
    assert [(s.protocol, s.first_index, s.trials) for s in shards] == [
        ("ID", 3, 4), ("ID", 7, 4), ("ID", 11, 2), ("Val", 3, 4), ("Val", 7, 4), ("Val", 11, 2)]
    assert len({s.directory for s in shards}) == len(shards)
    assert shards[0].command("gf-launch")[-4:] == ["protocols:=[ID]", "first_index:=3", "trials:=4",
                                                    f"output_dir:={tmp_path}/shards/ID-0003-4"]
    assert shards[0].command("gf-launch")[:3] == ["gf-launch", "sim_eval", "--composed"]  # one process per shard
    separate = plan_shards(tmp_path, ORACLE, ["ID"], trials=4, shard_trials=4, composed=False)
    assert "--composed" not in separate[0].command("gf-launch")
    with pytest.raises(ValueError, match="set by the shard plan"):
        plan_shards(tmp_path, ["policy:=oracle", "trials:=5"], ["Val"], 10, 5)


def test_the_merge_is_ordered_unique_and_refuses_gaps(tmp_path):
    shards = plan_shards(tmp_path, ORACLE, ["Train", "Val"], trials=4, shard_trials=2)
    by_key = {s.key: [record(s.protocol, i) for i in reversed(range(s.first_index, s.first_index + s.trials))]
              for s in shards}
    by_key[shards[1].key].append(record("Train", 3))  # a trial recorded twice (a retried shard)
    by_key[shards[1].key].append(record("Val", 0))  # not this shard's trial: ignored
    merged = merge_results(tmp_path, list(reversed(shards)), by_key, ["Train", "Val"])
    ids = [r["trial_id"] for r in merged]
    assert ids == [make_trial(p, i).trial_id for p in ("Train", "Val") for i in range(4)]
    assert [r.trial_id for r in ResultsFile(tmp_path).read()] == ids
    by_key[shards[3].key] = by_key[shards[3].key][1:]
    with pytest.raises(ShardError, match=r"shard Val-0002-2 lacks trial indices \[3\]"):
        merge_results(tmp_path, shards, by_key)


# ---------------------------------------------------------------------------------------------
# end to end: gf-launch graphs, a local Ray
# ---------------------------------------------------------------------------------------------


def outcomes(records: list[dict]) -> list[tuple]:
    return [(r["trial_id"], r["placed_card"], r["executed"], r["recognised"], r["success"]) for r in records]


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory) -> list[dict]:
    """The same evaluation as one gf-launch graph (the way it always ran)."""
    out = tmp_path_factory.mktemp("serial")
    subprocess.run([str(Path(sys.executable).parent / "gf-launch"), "sim_eval", *ORACLE, "protocols:=[Val]",
                    f"trials:={TRIALS}", f"output_dir:={out}"], check=True, capture_output=True, timeout=600)
    return [r.to_dict() for r in ResultsFile(out).read()]


# Ray listens on every interface whatever ray.init is told (gf_eval.shards.connect_ray), so the
# Ray runs happen in a network namespace holding only loopback; the graphs run there too.
RAY_DRIVER = r"""
import json, os, sys, threading, time
import psutil, ray
from gf_eval.shards import evaluate_sharded, network_interfaces_beyond_loopback, plan_shards, shard_records
out, trials, kill = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "kill"
assert not network_interfaces_beyond_loopback()
os.environ["RAY_ADDRESS"] = ""
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
killed = []
def kill_mid_shard():
    # Find the victim's graph first and poll its results closely: the kill must land while the
    # shard still has trials to run (a kill after its last record leaves nothing to resume).
    victim = plan_shards(out, ["policy:=oracle"], ["Val"], trials, trials // 2)[1]
    graph = None
    while graph is None:
        graph = next((p for p in psutil.process_iter(["cmdline"])
                      if f"output_dir:={victim.directory}" in (p.info["cmdline"] or [])), None)
        time.sleep(0.05)
    worker = graph.parent()
    while not shard_records(victim):
        time.sleep(0.02)
    worker.kill()
    killed.append((worker.pid, str(victim.directory), len(shard_records(victim)), victim.trials))
if kill:
    threading.Thread(target=kill_mid_shard, daemon=True).start()
lines = []
merged = evaluate_sharded(out, ["policy:=oracle"], ["Val"], trials, trials // 2, ray_address="", progress=lines.append)
listening = sorted({c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN})
ray.shutdown()
print(json.dumps({"merged": merged, "lines": lines, "killed": killed, "listening": listening}))
"""


def run_in_loopback_namespace(out: Path, kill: bool) -> dict:
    import json
    import shutil

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode:
        pytest.skip("needs a loopback-only network namespace (unshare -rn) for the local Ray")
    script = "ip link set lo up && exec \"$0\" -c \"$1\" \"$2\" \"$3\" \"$4\""
    proc = subprocess.run(["unshare", "-rn", "sh", "-c", script, sys.executable, RAY_DRIVER, str(out), str(TRIALS),
                           "kill" if kill else "no"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_shards_on_ray_equal_the_serial_run(serial_run, tmp_path):
    run = run_in_loopback_namespace(tmp_path, kill=False)
    assert outcomes(run["merged"]) == outcomes(serial_run)
    assert [r.trial_id for r in ResultsFile(tmp_path).read()] == [r["trial_id"] for r in serial_run]
    last = run["lines"][-1]
    assert last.startswith(f"[shards] 2/2 shards, {TRIALS}/{TRIALS} trials") and "ETA 0 min" in last


@pytest.mark.slow
def test_a_worker_killed_mid_shard_loses_and_duplicates_nothing(serial_run, tmp_path):
    run = run_in_loopback_namespace(tmp_path, kill=True)
    assert run["killed"], "no worker was killed"
    _, _, recorded_at_kill, shard_trials = run["killed"][0]
    assert recorded_at_kill < shard_trials, run["killed"]  # the kill came mid-shard
    assert outcomes(run["merged"]) == outcomes(serial_run)
    assert len({r["trial_id"] for r in run["merged"]}) == len(run["merged"]) == TRIALS
    log = (Path(run["killed"][0][1]) / "launch.log").read_text()
    assert log.count("$ ROS_DOMAIN_ID=") == 2  # the killed shard ran again and resumed
