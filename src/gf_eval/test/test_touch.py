"""The Touch task without ROS: layout files, trial plan, automatic scoring at the first gripper close,
operator commands, and the resumable evaluation with its void log and report."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from gf_eval.splits import load_splits
from gf_eval.touch import (
    CONFIRM,
    ESTOP,
    OVERRIDE_PREFIX,
    QUIT,
    VOID,
    CardSlot,
    LayoutError,
    TouchEvaluation,
    TouchLayout,
    TouchMonitor,
    load_layout,
    make_touch_trial,
    override_card,
    parse_command,
    preview_image,
    review_text,
    setup_text,
    touched_card,
)
from gf_eval.trials import TrialSpec, make_trial

LAYOUT = TouchLayout(slots=(CardSlot(0.35, 0.16, 0.08), CardSlot(0.35, 0.0, 0.08), CardSlot(0.35, -0.16, 0.08)),
                     created="2025-03-01T10:00:00+01:00", source="test")
SPLITS = load_splits()


def test_a_layout_survives_its_yaml_file_and_keeps_its_timestamp(tmp_path):
    path = LAYOUT.save(tmp_path / "calib" / "layout.yaml")
    loaded = load_layout(path)
    assert loaded == LAYOUT and loaded.hash == LAYOUT.hash
    assert "created: '2025-03-01T10:00:00+01:00'" in path.read_text()
    moved = TouchLayout(slots=(CardSlot(0.36, 0.16, 0.08), *LAYOUT.slots[1:]))
    assert moved.hash != LAYOUT.hash


@pytest.mark.parametrize("change, message", [
    ({"slots": [{"x": 0.35, "y": 0.16, "z": 0.08}, {"x": 0.35, "y": 0.05, "z": 0.08}, {"x": 0.35, "y": -0.16, "z": 0.08}]}, "overlap"),
    ({"slots": [{"x": 0.35, "y": -0.16, "z": 0.08}, {"x": 0.35, "y": 0.0, "z": 0.08}, {"x": 0.35, "y": 0.16, "z": 0.08}]}, "must decrease"),
    ({"slots": [{"x": 0.35, "y": 0.16, "z": 0.08}, {"x": 0.35, "y": 0.0, "z": 0.08}]}, "exactly 3"),
    ({"slots": [{"x": 0.35, "y": 0.16}, {"x": 0.35, "y": 0.0}, {"x": 0.35, "y": -0.16}]}, "numeric x, y, z"),
    ({"card_size": 0.0}, "card_size"),
])
def test_a_bad_layout_is_refused_with_a_reason(tmp_path, change, message):
    data = {**LAYOUT.to_dict(), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LayoutError, match=message) as info:
        load_layout(path)
    assert str(path) in str(info.value)


def test_a_missing_layout_says_how_to_make_one(tmp_path):
    with pytest.raises(LayoutError, match="gf-calibrate"):
        load_layout(tmp_path / "nope.yaml")


def test_touch_trials_are_val_emojis_at_the_calibrated_slots_and_reproducible():
    specs = [make_touch_trial(i, 0, SPLITS, LAYOUT) for i in range(30)]
    val = {e.id for e in SPLITS.entries("Val")}
    for i, spec in enumerate(specs):
        twin = make_trial("Val", i, 0, SPLITS)
        assert spec.trial_id == f"Touch-{i:04d}-0" and spec.protocol == "Touch"
        assert spec.emoji_ids == twin.emoji_ids and spec.target_index == twin.target_index
        assert set(spec.emoji_ids) <= val and len(set(spec.emoji_ids)) == 3
        assert [(c.x, c.y) for c in spec.cards] == [(s.x, s.y) for s in LAYOUT.slots]
        assert spec.instruction == f"Touch {spec.target.description}."
        assert spec.geometry.card_half_size == pytest.approx(0.07)
        assert TrialSpec.from_dict(json.loads(spec.to_json())) == spec
    assert specs == [make_touch_trial(i, 0, SPLITS, LAYOUT) for i in range(30)]
    assert {s.target_index for s in specs} == {0, 1, 2}
    assert make_touch_trial(0, 1, SPLITS, LAYOUT).emoji_ids != specs[0].emoji_ids  # the seed matters


@pytest.mark.parametrize("xyz, touched, over", [
    ((0.35, 0.0, 0.08), 1, 1),            # centre of the middle card, fingertips on it
    ((0.35, 0.16, 0.11), 0, 0),           # over the left card, 3 cm up: still a touch (limit 4 cm)
    ((0.41, -0.21, 0.09), 2, 2),          # near a corner of the right card
    ((0.35, 0.0, 0.13), -1, 1),           # over the middle card but 5 cm up: not a touch
    ((0.35, 0.08, 0.08), -1, -1),         # in the 2 cm gap between the left and middle cards
    ((0.45, 0.0, 0.08), -1, -1),          # beyond the cards' far edge
])
def test_touched_card_is_decided_by_footprint_and_height(xyz, touched, over):
    got_touched, got_over, height = touched_card(LAYOUT, xyz)
    assert (got_touched, got_over) == (touched, over)
    if over >= 0:
        assert height == pytest.approx(xyz[2] - 0.08)


def test_a_rotated_card_uses_its_rotated_footprint():
    layout = TouchLayout(slots=(CardSlot(0.35, 0.2, 0.08, math.pi / 4), LAYOUT.slots[1], LAYOUT.slots[2]))
    # 0.065 m along x from the centre: inside the axis-aligned square, outside the 45-degree one.
    assert touched_card(layout, (0.35 + 0.065, 0.2 + 0.065, 0.08))[0] == -1
    assert touched_card(layout, (0.35 + 0.09, 0.2, 0.08))[0] == 0  # along the diagonal: inside


def test_the_monitor_scores_at_the_first_close_after_an_open():
    monitor = TouchMonitor(LAYOUT)
    # The gripper starts closed: that is not a close; it must open first.
    assert monitor.update(0.0, (0.30, 0.0, 0.25), 0.1) is None
    assert monitor.update(0.1, (0.35, 0.16, 0.20), 1.0) is None
    assert monitor.update(0.2, (0.35, 0.16, 0.09), 0.7) is None  # closing, not yet below the threshold
    score = monitor.update(0.3, (0.35, 0.16, 0.085), 0.4)
    assert score is not None and score.closed and score.touched_card == 0 and score.time == 0.3
    assert score.outcome(target_index=0) == (True, True, True)
    assert score.outcome(target_index=2) == (True, False, False)
    assert monitor.update(0.4, (0.35, 0.0, 0.08), 0.0) is None  # later states change nothing
    assert monitor.finish(5.0) is score


def test_a_trial_without_a_close_touches_nothing():
    monitor = TouchMonitor(LAYOUT)
    monitor.update(0.0, (0.35, 0.0, 0.08), 1.0)
    score = monitor.finish(60.0)
    assert not score.closed and score.touched_card == -1 and score.over_card == 1
    assert score.outcome(1) == (False, False, False)


def test_operator_keys_and_words_map_to_commands():
    assert parse_command("\n") == parse_command("y") == parse_command("confirm") == parse_command("accept") == CONFIRM
    assert parse_command("1") == parse_command("override 1") == parse_command("override:1") == OVERRIDE_PREFIX + "1"
    assert parse_command("n") == parse_command("override none") == OVERRIDE_PREFIX + "none"
    assert (parse_command("v"), parse_command("e"), parse_command(" "), parse_command("q")) == (VOID, ESTOP, ESTOP, QUIT)
    assert parse_command("x") is None and parse_command("override 7") is None
    assert override_card(OVERRIDE_PREFIX + "2") == 2 and override_card(OVERRIDE_PREFIX + "none") == -1
    assert override_card(CONFIRM) is None


def test_operator_texts_name_slots_cards_and_the_verdict():
    spec = make_touch_trial(3, 0, SPLITS, LAYOUT)
    text = setup_text(spec, LAYOUT, (4, 30))
    for i, card in enumerate(spec.cards):
        assert f"slot {i}" in text and card.emoji_id in text and card.name in text
    assert "robot's left" in text and spec.instruction in text and "(4/30)" in text
    monitor = TouchMonitor(LAYOUT)
    monitor.update(0, (0.35, 0.16, 0.2), 1.0)
    monitor.update(1, (0.35, 0.16, 0.14), 0.0)  # 6 cm above the card
    assert "not a touch" in review_text(spec, LAYOUT, monitor.score)


def test_the_preview_shows_three_cards_in_slot_order():
    spec = make_touch_trial(0, 0, SPLITS, LAYOUT)
    image = preview_image(spec, LAYOUT, card_px=120).convert("RGB")
    assert image.width > 3 * 120
    # The three card areas are mostly white and differ from each other (three different emojis).
    crops = [image.crop((16 + i * 136, 44, 16 + i * 136 + 120, 164)) for i in range(3)]
    assert all(sum(c.convert("L").point(lambda v: v > 240).getdata()) > 0.6 * 120 * 120 for c in crops)
    assert len({c.tobytes() for c in crops}) == 3


def test_the_evaluation_resumes_logs_voids_and_writes_the_report(tmp_path):
    out = tmp_path / "touch"
    ev = TouchEvaluation(str(out), "vla", LAYOUT, trials=5)
    assert [s.trial_id for s in ev.pending()] == [f"Touch-{i:04d}-0" for i in range(5)]
    first, second = ev.pending()[:2]
    ev.log_void(first, "operator", {"attempt": 1})
    from gf_eval.results import TrialRecord

    ev.record(TrialRecord.score(first, first.target_index, True, "gripper_closed", 40, 3.0))
    ev.record(TrialRecord.score(second, (second.target_index + 1) % 3, False, "gripper_closed", 40, 3.0))
    ev.close()
    again = TouchEvaluation(str(out), "vla", LAYOUT, trials=5)
    assert [r.trial_id for r in again.done] == [first.trial_id, second.trial_id]
    assert len(again.pending()) == 3 and again.voided()[0]["trial_id"] == first.trial_id
    with pytest.raises(ValueError, match="already recorded"):
        again.record(TrialRecord.score(first, -1, False, "timeout", 0, 1.0))
    report = again.finish()
    table = (report / "summary.md").read_text()
    assert "| Touch | 2 |" in table and "task" in (report / "config.json").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "touch" and run["protocols"] == ["Touch"] and run["layout_hash"] == LAYOUT.hash
    again.close()
    with pytest.raises(ValueError, match="different run"):
        TouchEvaluation(str(out), "another_policy", LAYOUT, trials=5)
    assert again.preview_path(first).exists()
