"""gf-bench eval: alternating direct/graph rounds on the same trials, medians, and the target verdict."""

import json

import pytest

from gf_policy import eval_bench as bench


def test_rounds_alternate_and_each_round_runs_new_trials_on_both_sides(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "direct_loop", lambda n, first_index=0: calls.append(("direct", n, first_index)) or (0.4, 1.0))
    monkeypatch.setattr(bench, "ros_graph", lambda n, first_index=0: calls.append(("graph", n, first_index)) or (0.5, 1.0, 6.0))
    rounds = bench.compare(trials=4, rounds=3)
    assert calls == [(side, 4, first) for first in (0, 4, 8) for side in ("direct", "graph")]
    assert rounds["direct_s"] == [0.4] * 3 and rounds["graph_s"] == [0.5] * 3 and rounds["startup_s"] == [6.0] * 3


@pytest.mark.slow
def test_gf_bench_eval_runs_the_real_graph_beside_the_direct_loop(capsys):
    assert bench.main(["--trials", "1", "--rounds", "1", "--samples", "3", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    graph, direct = figures["graph"], figures["reference_direct_loop"]
    assert graph["seconds_per_trial"] > 0 and direct["seconds_per_trial"] > 0
    assert figures["graph_percent_of_direct"] == pytest.approx(100 * direct["seconds_per_trial"] / graph["seconds_per_trial"])
    assert graph["success_rate"] == direct["success_rate"] == 1.0  # the oracle, both ways
    assert figures["target"] == {"graph_percent_of_direct": 85, "met": figures["graph_percent_of_direct"] >= 85}
    latency = figures["image_path_ms"]
    assert 0 < latency["p50"] <= latency["p99"] and latency["reference_in_process"] > 0
