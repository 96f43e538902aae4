"""gf-bench serve: the batching server beside batching off, measured in the same run (--json)."""

import json

import pytest

from gf_policy import bench

pytestmark = pytest.mark.slow


def test_gf_bench_serve_measures_batching_beside_its_reference(capsys):
    assert bench.serve_main(["--clients", "2", "--requests", "3", "--rounds", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    on, off = figures["batching"], figures["reference_batching_off"]
    assert on["inferences_per_s"] > 0 and off["inferences_per_s"] > 0
    assert off["mean_batch"] == 1.0 and 1.0 <= on["mean_batch"] <= 2.0  # max_batch: 1 vs the 2 clients
    assert figures["speedup"] == pytest.approx(on["inferences_per_s"] / off["inferences_per_s"])
    assert figures["target"] == {"speedup": 2.0, "met": figures["speedup"] >= 2.0}
    assert 0 < on["p50_ms"] <= on["p99_ms"]
