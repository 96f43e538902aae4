"""The importer for upstream episode folders, `gf-replay play`, the replay backend, stats and the
graph registrations."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gf_teleop import episodes as ep


def fabricate_upstream(root: Path, helpers, lengths=(5, 4)) -> list[tuple]:
    """An upstream dataset: <n>/images/primary_image/<t>.png, action.npy, a proprio .npy,
    task_instruction.txt, and generation_records.csv (as upstream's generator writes it)."""
    from gf_eval.splits import load_splits

    train = load_splits().entries("Train")
    root.mkdir(parents=True)
    arrays, rows = [], []
    for n, steps in enumerate(lengths, start=1):
        images, proprio, actions = helpers.synthetic_arrays(steps, size=(20, 24), seed=n)
        folder = root / str(n)
        (folder / "images" / "primary_image").mkdir(parents=True)
        for t, frame in enumerate(images):
            Image.fromarray(frame).save(folder / "images" / "primary_image" / f"{t}.png")
        np.save(folder / "action.npy", actions.astype(np.float64))
        np.save(folder / "left_arm_poseuler_arm.npy", proprio.astype(np.float64))
        cards = train[3 * n: 3 * n + 3]
        target = n % 3
        (folder / "task_instruction.txt").write_text(f"pick the block and place it on {cards[target].description}\n")
        rows.append({"num_steps": steps, "task": "x", "success": n == 1, "card_0": cards[0].name, "card_1": cards[1].name,
                     "card_2": cards[2].name, "target": target, "cube_position": "[0.03, 0.71, 0.015]"})
        arrays.append((images, proprio, actions, cards, target))
    with open(root / "generation_records.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["", *rows[0]])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"": i, **row})
    return arrays


def test_import_upstream_episode_folders(tmp_path, helpers):
    src = tmp_path / "upstream"
    arrays = fabricate_upstream(src, helpers)
    out = tmp_path / "demos"
    proc = subprocess.run([helpers.exe("gf-demos"), "import-upstream", str(src), str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "imported 2 episode(s)" in proc.stdout, proc.stdout + proc.stderr
    entries = ep.read_manifest(out)
    assert [e.episode_id for e in entries] == ["upstream-1", "upstream-2"]
    assert [e.success for e in entries] == [True, False]  # from generation_records.csv
    for entry, (images, proprio, actions, cards, target) in zip(entries, arrays):
        episode = ep.load_episode(out, entry)
        np.testing.assert_array_equal(episode.images, images)
        np.testing.assert_array_equal(episode.proprio, proprio)
        np.testing.assert_array_equal(episode.actions, actions)
        assert episode.instruction == f"pick the block and place it on {cards[target].description}"
        spec = entry.trial_spec
        assert spec.emoji_ids == tuple(c.id for c in cards) and spec.target_index == target
        assert spec.cube_xy == (0.03, 0.71) and entry.extra["source"] == "upstream-import"
        assert ep.bag_custom_data(out / entry.bag)[ep.KEY_SOURCE] == "upstream-import"
    # Importing again adds nothing (resumable).
    proc = subprocess.run([helpers.exe("gf-demos"), "import-upstream", str(src), str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert "imported 0 episode(s)" in proc.stdout and len(ep.read_manifest(out)) == 2


def test_import_of_a_broken_folder_says_what_is_wrong(tmp_path, helpers):
    src = tmp_path / "bad"
    fabricate_upstream(src, helpers, lengths=(3,))
    (src / "1" / "left_arm_poseuler_arm.npy").unlink()
    proc = subprocess.run([helpers.exe("gf-demos"), "import-upstream", str(src), str(tmp_path / "d"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no proprio .npy" in proc.stderr


@pytest.mark.slow
def test_replay_play_publishes_the_bag_with_its_timing(synthetic_demo, fresh_domain, helpers):
    """gf-replay play: every message of the bag arrives (same bytes) at the recorded pace / rate."""
    import rclpy

    from gf_teleop.bagtypes import message_class
    from gf_teleop.recorder_node import subscription_qos

    demo_dir, _ = synthetic_demo
    bag = demo_dir / ep.read_manifest(demo_dir)[0].bag
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        expected: dict[str, list[bytes]] = {}
        for conn, _, raw in reader.messages():
            expected.setdefault(conn.topic, []).append(bytes(raw))
        duration = (reader.end_time - reader.start_time) / 1e9
    rclpy.init()
    node = rclpy.create_node("play_listener")
    got: dict[str, list[tuple[float, bytes]]] = {t: [] for t in expected}
    for topic in expected:
        node.create_subscription(message_class(ep.TOPIC_TYPES[topic]), topic,
                                 lambda data, t=topic: got[t].append((time.monotonic(), data)),
                                 subscription_qos(topic), raw=True)
    player = subprocess.Popen([helpers.exe("gf-replay"), "play", str(bag), "--rate", "0.5", "--delay", "0.5",
                               "--wait-subscribers", "1",
                               "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while player.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.05)
        for _ in range(20):
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    assert player.returncode == 0, player.stdout.read()
    for topic, sent in expected.items():
        received = [data for _, data in got[topic]]
        assert len(received) == len(sent), topic
        for a, b in zip(received, sent):
            assert a[:len(b)] == b and len(a) - len(b) < 4, topic  # up to the transport's CDR padding
    arrivals = sorted(t for items in got.values() for t, _ in items)
    assert arrivals[-1] - arrivals[0] == pytest.approx(duration / 0.5, abs=0.25)  # half speed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_looping_play_stops_quietly_on_sigterm_and_ctrl_c(synthetic_demo, fresh_domain, helpers, ended, sig):
    demo_dir, _ = synthetic_demo
    bag = demo_dir / ep.read_manifest(demo_dir)[0].bag
    player = subprocess.Popen([helpers.exe("gf-replay"), "play", str(bag), "--loop", "--delay", "0", "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3.0)  # publishing by now
    assert player.poll() is None
    player.send_signal(sig)
    output = ended(player, timeout=30)
    assert player.returncode == 128 + sig if sig == signal.SIGTERM else player.returncode == 130, output
    assert "Traceback" not in output, output


def test_play_refuses_topics_that_are_not_in_the_bag(synthetic_demo, helpers):
    demo_dir, _ = synthetic_demo
    bag = demo_dir / ep.read_manifest(demo_dir)[0].bag
    proc = subprocess.run([helpers.exe("gf-replay"), "play", str(bag), "--topics", "/nothing", "--delay", "0",
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "none of the topics" in proc.stderr


def test_replay_backend_matches_trials_by_spec(synthetic_demo, demo_trial):
    from gf_eval.trials import make_trial
    from gf_policy.backend import PolicyObservation, backend_class, load_backend

    demo_dir, (_, _, actions) = synthetic_demo
    assert backend_class("replay").needs_image is False
    backend = load_backend("replay", demo_dir=str(demo_dir))
    backend.reset(make_trial("Demo", 7, 0))  # equal spec, built anew
    for t in range(len(actions)):
        plan = backend.act(PolicyObservation(trial=demo_trial, step=t, proprio=np.zeros(7, np.float32)))
        np.testing.assert_array_equal(plan.actions, actions[t][None])
    hold = backend.act(PolicyObservation(trial=demo_trial, step=len(actions) + 3, proprio=np.zeros(7, np.float32))).actions
    assert not hold[0, :6].any() and hold[0, 6] == actions[-1, 6]  # past the end: hold still
    backend.reset(make_trial("Demo", 8, 0))  # never recorded
    with pytest.raises(ValueError, match="no recorded episode for trial Demo-0008-0"):
        backend.act(PolicyObservation(trial=demo_trial, step=0, proprio=np.zeros(7, np.float32)))
    lenient = load_backend("replay", demo_dir=str(demo_dir), strict=False)
    lenient.reset(make_trial("Demo", 8, 0))
    assert lenient.act(PolicyObservation(trial=demo_trial, step=0, proprio=np.zeros(7, np.float32))).actions.shape == (1, 7)
    with pytest.raises(ValueError, match="exactly one"):
        load_backend("replay")


def test_stats_of_a_demo_directory(tmp_path, helpers):
    from gf_eval.trials import make_trial
    from gf_teleop.importer import write_array_episode
    from gf_teleop.stats import run_stats

    out = tmp_path / "d"
    for i, (steps, success) in enumerate(((5, True), (7, True), (6, False))):
        images, proprio, actions = helpers.synthetic_arrays(steps, seed=i)
        write_array_episode(out, images=images, proprio=proprio, actions=actions, trial=make_trial("Demo", i),
                            success=success, operator="stats")
    stats = run_stats(out, tmp_path / "stats", progress=False)
    assert (stats.episodes, stats.complete, stats.successful) == (3, 3, 2)
    assert sorted(stats.lengths) == [5, 6, 7] and stats.success_rate == pytest.approx(2 / 3)
    assert sum(stats.target_emojis.values()) == 3 and sum(stats.card_emojis.values()) == 9
    assert -1 <= min(stats.action_min) and max(stats.action_max) <= 1
    saved = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert saved["successful"] == 2
    assert Image.open(tmp_path / "stats" / "first_frames.png").size[0] == 3 * 128
    assert (tmp_path / "stats" / "trajectories.png").stat().st_size > 10_000


def test_contact_sheet_shows_every_problem_and_a_spread_of_successes(tmp_path):
    from types import SimpleNamespace

    from gf_teleop.stats import contact_sheet

    def entry(i, success):
        return SimpleNamespace(episode_id=f"Demo-{i:04d}-0", success=success, complete=True)

    frames = [(entry(i, i not in (7, 300)), np.full((8, 8, 3), i % 256, np.uint8)) for i in range(500)]
    contact_sheet(frames, tmp_path / "sheet.png", columns=10, thumb=16, limit=30)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape[:2] == (3 * (16 + 14), 10 * 16)  # 30 thumbnails, not 500
    firsts = [int(sheet[r * 30 + 8, c * 16 + 8, 0]) for r in range(3) for c in range(10)]
    assert firsts[:2] == [7, 300 % 256]  # the failures lead
    assert firsts[2] == 0 and firsts[-1] > 200  # then successes from the start to the end of the set


def test_graphs_are_registered_and_consistent(helpers):
    """demos / teleop_sim: every node parameter exists in its config class and every template
    refers to an argument or a value the graph derives from them (the static check the sim_eval
    launch file has)."""
    import importlib.util
    import string

    from gf_bringup.graphs import config_fields, load_graphs
    from gf_bringup.runtime import package_file

    graphs = load_graphs()
    for name in ("demos", "teleop_sim"):
        graph = graphs[name]
        args = set(graph.resolve_args({}))  # the arguments and what the graph derives from them
        for node in graph.nodes:
            fields = config_fields(node)
            for param, template in node.parameters.items():
                assert param in fields, f"{name}/{node.name}: no parameter {param}"
                refs = {f for _, f, _, _ in string.Formatter().parse(template) if f}
                assert refs <= args, f"{name}/{node.name}.{param}: {refs - args}"
            if node.params_file:
                assert package_file(node.package, node.params_file).exists()
            assert helpers.exe(node.executable)
        values = graph.resolve_args({})
        assert values["output_dir"].endswith("/eval")
        assert [n.name for n in graph.active_nodes(values)][-1] == "recorder"
        launch = package_file("gf_teleop", f"launch/{name}.launch.py")
        spec = importlib.util.spec_from_file_location(f"launch_{name}", launch)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(module.generate_launch_description)
    assert "policy" not in [n.name for n in graphs["teleop_sim"].nodes]
    printed = subprocess.run([helpers.exe("gf-launch"), "demos", "trials:=2", "demo_dir:=/tmp/x", "--print"],
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and "gf-recorder" in printed.stdout and "output_dir: /tmp/x" in printed.stdout
