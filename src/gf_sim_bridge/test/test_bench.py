"""gf-bench sim measures both tasks in alternating rounds and prints the table with its targets."""

import pytest

from gf_sim_bridge import bench

pytestmark = pytest.mark.slow


def test_gf_bench_sim_prints_both_tasks_side_by_side(capsys):
    assert bench.main(["--steps", "10", "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    physics = next(line for line in out.splitlines() if line.startswith("control steps/s, physics only"))
    gf, ref, ratio = (float(v) for v in physics.split()[4:7])
    assert gf > 0 and ref > 0 and ratio == pytest.approx(gf / ref, abs=0.01)
    assert "camera 224px" in out and "expert: 100% success over 1 episodes" in out
    assert "targets: >= 300 physics steps/s" in out


def test_rounds_alternate_between_the_two_tasks():
    order = []

    class Env:
        def __init__(self, name):
            self.name = name
            self.action_space = type("Space", (), {"shape": (7,)})()

        def step(self, action):
            order.append(self.name)

    subject, reference = bench._Stepper(Env("gf")), bench._Stepper(Env("ref"))
    bench._alternate(subject, reference, steps=bench.ROUNDS * 2, warmup=1)
    assert len(subject.rates) == len(reference.rates) == bench.ROUNDS
    timed = order[2:]  # after one warm-up step each
    assert timed == (["gf"] * 2 + ["ref"] * 2) * bench.ROUNDS
