"""Trial specs are deterministic; scoring and intervals are right on constructed cases."""

import json
import math
import subprocess
import sys

import pytest

from gf_eval.scoring import (
    CardFootprint,
    FinalState,
    Rate,
    difference_interval,
    placed_card,
    score_episode,
    summarize,
    wilson_interval,
)
from gf_eval.splits import load_splits
from gf_eval.trials import DEFAULT_GEOMETRY, PROTOCOLS, TrialSpec, combinations_from_manifest, default_id_combinations, make_trial

SPEC_JSON = "import sys; from gf_eval.trials import make_trial; print(make_trial(sys.argv[1], int(sys.argv[2]), 7).to_json())"


@pytest.mark.parametrize("protocol", ["ID", "Train", "Val", "Hard"])
def test_specs_are_identical_across_processes(protocol):
    here = make_trial(protocol, 13, 7).to_json()
    there = subprocess.run([sys.executable, "-c", SPEC_JSON, protocol, "13"], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there
    assert TrialSpec.from_dict(json.loads(there)) == make_trial(protocol, 13, 7)


def test_specs_follow_the_protocol_rules():
    splits = load_splits()
    g = DEFAULT_GEOMETRY
    for protocol in ("Train", "Val", "Hard"):
        allowed = {e.id for e in splits.entries(protocol)}
        for i in range(30):
            spec = make_trial(protocol, i)
            assert set(spec.emoji_ids) <= allowed and len(set(spec.emoji_ids)) == 3
            assert spec.instruction == f"Pick the cube and place it on {spec.target.description}."
            for card, y in zip(spec.cards, g.card_ys):
                assert abs(card.x - g.card_x) <= g.card_jitter and abs(card.y - y) <= g.card_jitter
            assert abs(spec.cube_xy[0] - g.cube_center[0]) <= g.cube_jitter
    targets = [make_trial("Val", i).target_index for i in range(300)]
    assert all(60 <= targets.count(k) <= 140 for k in range(3))  # uniform target slot
    assert make_trial("Val", 1).trial_id != make_trial("Val", 2).trial_id
    assert make_trial("Val", 1, 0).cards != make_trial("Val", 1, 1).cards  # the base seed matters
    assert set(PROTOCOLS) >= {"ID", "Train", "Val", "Hard", "Demo"}


def test_id_protocol_draws_demo_combinations(tmp_path):
    splits = load_splits()
    demo = {(c.emoji_ids, c.target_index) for c in default_id_combinations(splits, 0)}
    for i in range(20):
        spec = make_trial("ID", i)
        assert (spec.emoji_ids, spec.target_index) in demo
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"trial": make_trial("Demo", k).to_dict(), "success": k != 1} for k in range(3)]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    combos = combinations_from_manifest(manifest)
    assert len(combos) == 2  # the failed demo does not count
    spec = make_trial("ID", 5, id_combinations=combos)
    assert (spec.emoji_ids, spec.target_index) in {(c.emoji_ids, c.target_index) for c in combos}


CARDS = tuple(CardFootprint(0.2, y, 0.0, 0.07, 0.002) for y in (0.9, 0.7, 0.5))


def state(xyz, grasped=False, speed=0.0, cards=CARDS):
    return FinalState(cube_xyz=xyz, cube_half_size=0.015, cube_grasped=grasped, max_arm_joint_speed=speed, cards=cards)


@pytest.mark.parametrize("card", [0, 1, 2])
def test_cube_resting_on_each_card(card):
    y = (0.9, 0.7, 0.5)[card]
    score = score_episode(state((0.23, y - 0.05, 0.017)), target_index=1)
    assert score.placed_card == card and score.executed
    assert score.recognised == (card == 1) and score.success == (card == 1)


def test_no_card_grasped_moving_lifted_and_rotated_cards():
    assert score_episode(state((0.02, 0.7, 0.015)), 1).placed_card == -1  # on the table
    assert not score_episode(state((0.2, 0.7, 0.017), grasped=True), 1).executed  # still held
    assert not score_episode(state((0.2, 0.7, 0.017), speed=0.5), 1).executed  # arm moving
    assert placed_card(state((0.2, 0.7, 0.08))) == -1  # lifted above the card
    assert placed_card(state((0.2 + 0.075, 0.7, 0.017))) == -1  # just outside the footprint
    rotated = (CardFootprint(0.2, 0.7, math.pi / 4, 0.07, 0.002),)
    assert placed_card(state((0.2 + 0.09, 0.7, 0.017), cards=rotated)) == 0  # inside the rotated square's corner
    assert placed_card(state((0.2 + 0.065, 0.7 + 0.065, 0.017), cards=rotated)) == -1


def test_upstream_rule_uses_the_099_m_radius():
    near = score_episode(state((0.2 + 0.09, 0.7 + 0.03, 0.017)), 1)  # 9.5 cm away: outside our footprint
    assert near.upstream_success and not near.success
    assert not score_episode(state((0.2 + 0.1, 0.7 + 0.03, 0.017)), 1).upstream_success


def test_wilson_intervals_match_known_values():
    lo, hi = wilson_interval(81, 263)  # Wilson (1927) / standard textbook example
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), pytest.approx(1.0))
    assert wilson_interval(50, 100) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


def test_summary_uses_the_papers_recognition_rate():
    rows = [{"protocol": "Val", "executed": e, "success": s, "end_reason": "x"} for e, s in
            [(True, True), (True, False), (True, False), (False, False)]]
    s = summarize(rows)["Val"]
    assert (s.execution.successes, s.execution.trials) == (3, 4)
    assert (s.recognition.successes, s.recognition.trials) == (1, 3)  # successes / executions
    assert (s.overall.successes, s.overall.trials) == (1, 4)
    assert str(Rate(0, 0)) == "n/a"


def test_the_difference_of_two_rates_has_newcombes_interval():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II example (a): 56/70 vs 48/80, method 10
    lo, hi = difference_interval(Rate(56, 70), Rate(48, 80))
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    lo, hi = difference_interval(Rate(0, 10), Rate(0, 10))  # both 0 %: symmetric, inside [-1, 1]
    assert lo == pytest.approx(-hi) and -1 < lo < 0
