"""The scripted Touch policy used in dry runs: where it aims and how it moves."""

from __future__ import annotations

import numpy as np
import pytest

from gf_bringup.runtime import package_file
from gf_eval.splits import load_splits
from gf_eval.touch import load_layout, make_touch_trial
from gf_policy.backend import PolicyObservation
from gf_realman_driver.touch_expert import TouchOracleBackend

LAYOUT_FILE = str(package_file("gf_realman_driver", "config/touch_layout_dry_run.yaml"))
LAYOUT = load_layout(LAYOUT_FILE)


def trial(index: int):
    return make_touch_trial(index, 0, load_splits(), LAYOUT)


def test_aims_target_other_and_between_in_turn():
    backend = TouchOracleBackend(LAYOUT_FILE, aim=["target", "other", "between"])
    for index, aim in enumerate(["target", "other", "between"]):
        spec = trial(index)
        xy, z = backend.goal(spec)
        t = spec.target_index
        slots = LAYOUT.slots
        if aim == "target":
            assert tuple(xy) == pytest.approx((slots[t].x, slots[t].y))
        elif aim == "other":
            assert tuple(xy) == pytest.approx((slots[(t + 1) % 3].x, slots[(t + 1) % 3].y))
        else:
            n = t + 1 if t < 2 else t - 1
            assert tuple(xy) == pytest.approx(((slots[t].x + slots[n].x) / 2, (slots[t].y + slots[n].y) / 2))
        assert z == pytest.approx(0.08 + backend.approach)
    with pytest.raises(ValueError):
        TouchOracleBackend(LAYOUT_FILE, aim="everywhere")


def test_it_approaches_from_above_then_closes_when_there():
    backend = TouchOracleBackend(LAYOUT_FILE)
    spec = trial(0)
    xy, z = backend.goal(spec)
    far = PolicyObservation(trial=spec, step=0, proprio=np.array([0.28, 0.0, 0.26, 3.14, 0, 3.14, 1.0], np.float32))
    plan = backend.act(far).actions
    assert plan.shape == (2, 7) and np.all(plan[:, 6] == 1.0)
    assert np.all(np.linalg.norm(plan[:, :3], axis=1) <= 0.1 + 1e-6)  # <= 1 cm per step
    there = PolicyObservation(trial=spec, step=0, proprio=np.array([xy[0], xy[1], z, 3.14, 0, 3.14, 1.0], np.float32))
    plan = backend.act(there).actions
    assert np.all(plan[:, 6] == -1.0) and np.allclose(plan[:, :3], 0.0)
