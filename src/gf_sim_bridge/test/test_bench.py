"""gf-bench sim measures both tasks in alternating rounds and prints the table with its targets."""

import json

import pytest

from gf_sim_bridge import bench

pytestmark = pytest.mark.slow


def test_gf_bench_sim_measures_both_tasks_and_states_its_targets(capsys):
    assert bench.main(["--steps", "10", "--episodes", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    gf, ref = figures["grinningface"], figures["reference_pickcube"]
    assert gf["physics_steps_per_s"] > 0 and ref["physics_steps_per_s"] > 0
    assert gf["rendered_steps_per_s"] > 0 and ref["rendered_steps_per_s"] > 0
    assert gf["expert_success"] == 1.0 and gf["steps_per_episode"] > 10 and figures["image_size"] == 224
    targets = figures["targets"]
    assert targets["physics_steps_per_s"] == {"target": 300, "met": gf["physics_steps_per_s"] >= 300}


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
