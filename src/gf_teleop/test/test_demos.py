"""Demo generation through the real ROS graph, then everything that reads its output: resumption,
`gf-replay sim` (the scripted episodes reproduce exactly), `gf-replay policy`, the replay backend
driving the evaluation graph, `gf-demos stats` and `gf-demos check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from gf_teleop import episodes as ep

pytestmark = pytest.mark.slow
EPISODES = 3


def _run(args, timeout=300, env=None):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Three scripted demos (64 px camera to keep the test short), generated with two workers."""
    from gf_bringup.runtime import workspace_root  # noqa: F401 - the environment is the project's

    out = tmp_path_factory.mktemp("gen") / "demos"
    gf_demos = os.path.join(os.path.dirname(sys.executable), "gf-demos")
    proc = _run([gf_demos, "generate", "--split", "train", "--episodes", str(EPISODES), "--workers", "2",
                 "--out", str(out), "--image-size", "64", "--no-progress"], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "".join(
        p.read_text()[-3000:] for p in (out / ".work" / "logs").glob("*.log"))
    return out, proc


def test_generate_records_every_episode_complete_and_successful(generated):
    out, proc = generated
    entries = ep.read_manifest(out)
    assert sorted(e.trial_spec.index for e in entries) == list(range(EPISODES))
    assert all(e.complete and e.success and e.operator == "scripted-expert" for e in entries), entries
    assert f"{EPISODES}/{EPISODES} episodes complete, {EPISODES} successful" in proc.stdout
    for entry in entries:
        episode = ep.load_episode(out, entry)
        assert episode.images.shape == (entry.length, 64, 64, 3) and episode.actions.shape == (entry.length, 7)
        assert entry.trial_spec.protocol == "Demo" and episode.instruction.startswith("Pick the cube")
        assert len(np.unique(episode.images.reshape(entry.length, -1), axis=0)) > entry.length // 2  # the arm moves
    config = json.loads((out / "generation.json").read_text())
    assert config["protocol"] == "Demo" and config["workers"] == 2


def test_generate_resumes_without_repeating(generated, helpers):
    out, _ = generated
    before = (out / ep.MANIFEST).read_bytes()
    proc = _run([helpers.exe("gf-demos"), "generate", "--episodes", str(EPISODES), "--out", str(out),
                 "--image-size", "64", "--no-progress"], timeout=120)
    assert proc.returncode == 0 and "0 recorded" in proc.stdout, proc.stdout + proc.stderr
    assert (out / ep.MANIFEST).read_bytes() == before
    # Other settings in the same directory are refused instead of mixed in.
    proc = _run([helpers.exe("gf-demos"), "generate", "--episodes", str(EPISODES), "--out", str(out),
                 "--image-size", "128", "--no-progress"], timeout=120)
    assert proc.returncode == 2 and "other settings" in proc.stderr


def test_replay_sim_reproduces_the_scripted_episodes(generated, helpers):
    out, _ = generated
    proc = _run([helpers.exe("gf-replay"), "sim", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{EPISODES}/{EPISODES} episodes reproduce" in proc.stdout
    assert proc.stdout.count("REPRODUCED") == EPISODES and "max EE position error 0.000 mm" in proc.stdout


def test_replay_sim_notices_a_different_trajectory(generated, tmp_path):
    """A tampered action must show up as a difference (the check is not vacuous)."""
    from gf_teleop.replay import SimReplayer

    out, _ = generated
    entry = ep.read_manifest(out)[0]
    episode = ep.load_episode(out, entry, images=False)
    replayer = SimReplayer(image_size=64)
    original = ep.load_episode

    def tampered(directory, e, images=True):
        loaded = original(directory, e, images=images)
        loaded.actions = loaded.actions.copy()
        loaded.actions[5:15, 0] += 0.3  # 3 cm further forward for ten steps
        return loaded

    try:
        ep.load_episode = tampered
        result = replayer.replay(out, entry)
    finally:
        ep.load_episode = original
        replayer.close()
    assert not result.reproduced and result.max_position_error_m > 0.005
    assert result.steps <= episode.length


def test_replay_policy_reports_per_dimension_error_and_plots(generated, tmp_path, helpers):
    out, _ = generated
    entry = ep.read_manifest(out)[0]
    bag = out / entry.bag
    proc = _run([helpers.exe("gf-replay"), "policy", str(bag), "--policy", "replay", "--backend-args",
                 f"{{bag: {bag}}}", "--out", str(tmp_path), "--no-progress"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / f"{entry.episode_id}-replay.json").read_text())
    assert report["mae"] == [0.0] * 7 and report["steps"] == entry.length
    assert (tmp_path / f"{entry.episode_id}-replay.png").stat().st_size > 10_000
    # A policy that needs images sees them; here a constant policy gives a non-zero error.
    from gf_teleop.replay import replay_policy

    result = replay_policy(out, entry, "replay", {"bag": str(out / ep.read_manifest(out)[1].bag)}, progress=False)
    assert max(result.mae) > 0
    # A directory: every episode, then a summary weighted by their steps.
    proc = _run([helpers.exe("gf-replay"), "policy", str(out), "--policy", "replay", "--backend-args",
                 f"{{bag: {bag}}}", "--out", str(tmp_path / "all"), "--no-progress"], timeout=300)
    assert proc.returncode == 0 and "summary over" in proc.stdout, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "all" / "summary_replay.json").read_text())
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "all").glob("*-replay.json"))]
    assert summary["episodes"] == len(reports) == len(ep.read_manifest(out)) >= 2
    assert summary["steps"] == sum(r["steps"] for r in reports)
    expected = np.sum([np.array(r["mae"]) * r["steps"] for r in reports], axis=0) / summary["steps"]
    np.testing.assert_allclose(summary["mae"], expected, rtol=1e-6)
    assert summary["worst_episode"] != entry.episode_id  # the replayed bag's own episode has no error


def test_replay_backend_drives_the_evaluation_graph(generated, tmp_path, fresh_domain, helpers):
    """policy:=replay re-enacts the recorded demos through sim_eval: same outcome, same length."""
    out, _ = generated
    results = tmp_path / "eval"
    proc = _run([helpers.exe("gf-launch"), "sim_eval", "policy:=replay", f"backend_args:={{demo_dir: {out}}}",
                 "protocols:=[Demo]", f"trials:={EPISODES}", "image_size:=64", f"output_dir:={results}"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    recorded = {e.trial_spec.trial_id: e for e in ep.read_manifest(out)}
    assert len(rows) == EPISODES
    for row in rows:
        assert row["success"] and row["steps"] == recorded[row["trial_id"]].length, row


def test_stats_and_check(generated, tmp_path, helpers):
    out, _ = generated
    proc = _run([helpers.exe("gf-demos"), "stats", str(out), "--out", str(tmp_path), "--no-progress"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["episodes"] == EPISODES and stats["successful"] == EPISODES and stats["success_rate"] == 1.0
    assert len(stats["action_min"]) == 7 and min(stats["action_min"]) >= -1 and max(stats["action_max"]) <= 1
    assert stats["target_emojis"] and "gf-default-v1/Train" in stats["split_coverage"]
    assert f"success       {EPISODES}/{EPISODES}" in proc.stdout
    for png in ("trajectories.png", "first_frames.png"):
        assert (tmp_path / png).stat().st_size > 5_000
    proc = _run([helpers.exe("gf-demos"), "check", str(out), "--no-progress"], timeout=120)
    assert proc.returncode == 0 and f"{EPISODES}/{EPISODES} bags pass" in proc.stdout, proc.stdout


def test_a_stuck_graph_is_restarted_instead_of_timing_out_trial_after_trial(generated, tmp_path, helpers):
    """A policy that stops acting (here: replay without a recording for trial 1) must not cost one
    policy timeout per remaining trial: the block's graph is stopped, the trials after the stuck
    one run in a fresh graph, and the stuck one is tried again."""
    out, _ = generated
    partial = tmp_path / "partial"  # the demos without trial 1
    partial.mkdir()
    (partial / "bags").symlink_to(out / "bags")
    for entry in ep.read_manifest(out):
        if entry.trial_spec.index != 1:
            ep.append_manifest(partial, entry)
    target = tmp_path / "replayed"
    started = time.monotonic()
    proc = _run([helpers.exe("gf-demos"), "generate", "--episodes", str(EPISODES), "--workers", "1",
                 "--out", str(target), "--image-size", "64", "--policy", "replay", "--backend-args",
                 f"{{demo_dir: {partial}}}", "--policy-timeout", "4", "--max-attempts", "2", "--no-progress"], timeout=400)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{EPISODES - 1}/{EPISODES} episodes complete, {EPISODES - 1} successful" in proc.stdout
    assert "still without a complete recording: [1]" in proc.stdout
    logs = (target / ".work" / "logs" / "worker-0.log").read_text()
    # The stuck trial alone gets a second attempt; trial 2 ran either before the graph was
    # stopped (the eval moves on after a timeout) or in a fresh graph on its first attempt.
    assert "block 1..1 attempt 2" in logs and "block 2..2 attempt 2" not in logs
    stuck = [e for e in ep.read_manifest(target) if e.outcome.get("reason") == "policy_timeout"]
    assert len(stuck) == 2 and all(e.trial_spec.index == 1 for e in stuck)
    assert elapsed < 240


def test_demos_recorded_with_ground_truth_replay_the_oracle_that_made_them(generated, tmp_path, helpers):
    """Without /gf/sim_state a bag cannot feed the oracle (it needs the simulator's truth), and says
    so; `--ground-truth` records it, and the oracle fed its own episode answers its recorded actions."""
    out, _ = generated
    plain = out / ep.read_manifest(out)[0].bag
    proc = _run([helpers.exe("gf-replay"), "policy", str(plain), "--policy", "oracle", "--no-progress"], timeout=120)
    assert proc.returncode != 0 and "has no /gf/sim_state" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    truth = tmp_path / "truth"
    proc = _run([helpers.exe("gf-demos"), "generate", "--split", "train", "--episodes", "1", "--workers", "1",
                 "--out", str(truth), "--image-size", "64", "--ground-truth", "--no-progress"], timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = ep.read_manifest(truth)[0]
    bag = truth / entry.bag
    assert next(ep.read_messages(bag, (ep.SIM_STATE,)), None) is not None
    proc = _run([helpers.exe("gf-replay"), "policy", str(bag), "--policy", "oracle", "--out", str(tmp_path / "r"),
                 "--no-progress"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r" / f"{entry.episode_id}-oracle.json").read_text())
    assert report["steps"] == entry.length and max(report["mae"]) < 1e-3, report["mae"]
    # A directory made without the ground truth is not resumed with it (its bags would be mixed).
    proc = _run([helpers.exe("gf-demos"), "generate", "--split", "train", "--episodes", "4", "--out", str(out),
                 "--image-size", "64", "--ground-truth", "--no-progress"], timeout=120)
    assert proc.returncode != 0 and "'ground_truth': (False, True)" in proc.stdout + proc.stderr
