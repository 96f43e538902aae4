"""gf-bench eval: alternating direct/graph rounds on the same trials, medians, and the target verdict."""

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
def test_gf_bench_eval_runs_the_real_graph_and_prints_the_comparison(capsys):
    assert bench.main(["--trials", "1", "--rounds", "1", "--samples", "3"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("trials per hour"))
    graph, direct = (float(v) for v in line.split()[3:5])
    assert graph > 0 and direct > 0 and "of the direct loop" in line and "target >= 85%" in line
    assert "oracle success rate" in out and "100%" in out.split("oracle success rate")[1].splitlines()[0]
    assert "image path (224px)" in out
