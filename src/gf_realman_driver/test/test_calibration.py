"""The guided calibration routine (ROS-free): three slots recorded in order, slips caught at once,
the layout saved with a timestamp and read back by the Touch evaluation."""

from __future__ import annotations

import datetime as dt

import pytest

from gf_eval.touch import load_layout
from gf_realman_driver.calibration import CARD_FLOOR_MARGIN, CalibrationError, CalibrationRoutine, card_floor_z


def test_three_recorded_points_become_a_timestamped_layout(tmp_path):
    routine = CalibrationRoutine()
    assert "slot 0 (the robot's left)" in routine.prompt()
    assert "recorded slot 0" in routine.record((0.36, 0.17, 0.081))
    assert "slot 1" in routine.prompt()
    routine.record((0.35, 0.01, 0.079))
    routine.record((0.355, -0.15, 0.08))
    assert routine.done and routine.prompt() == "all three card centres recorded"
    layout = routine.save(tmp_path / "calibration" / "touch_layout.yaml", notes="bench table")
    loaded = load_layout(tmp_path / "calibration" / "touch_layout.yaml")
    assert loaded == layout and loaded.notes == "bench table" and loaded.source == "gf-calibrate"
    assert [(s.x, s.y, s.z) for s in loaded.slots] == [(0.36, 0.17, 0.081), (0.35, 0.01, 0.079), (0.355, -0.15, 0.08)]
    age = dt.datetime.now().astimezone() - dt.datetime.fromisoformat(loaded.created)
    assert abs(age.total_seconds()) < 60


@pytest.mark.parametrize("second, message", [
    ((0.35, 0.10, 0.08), "closer than a card"),          # 6 cm from slot 0: the cards would overlap
    ((0.35, 0.40, 0.08), "to the right of slot 0"),      # left of slot 0 instead of right
    ((0.35, 0.0, 0.12), "touch heights differ by 4.0 cm"),  # hovering, not touching
    ((float("nan"), 0.0, 0.08), "no valid EE position"),
])
def test_a_slip_is_refused_and_the_slot_can_be_recorded_again(second, message):
    routine = CalibrationRoutine()
    routine.record((0.35, 0.16, 0.08))
    with pytest.raises(CalibrationError, match=message):
        routine.record(second)
    assert routine.slot == 1
    routine.record((0.35, 0.0, 0.08))
    assert routine.slot == 2


def test_undo_forgets_the_last_slot():
    routine = CalibrationRoutine()
    assert routine.undo() == "nothing recorded yet"
    routine.record((0.35, 0.16, 0.08))
    routine.record((0.35, 0.0, 0.08))
    assert "forgot slot 1" in routine.undo()
    assert routine.slot == 1
    with pytest.raises(CalibrationError, match="only 1 of 3"):
        routine.layout()


def test_the_card_floor_is_the_highest_card_plane_plus_the_margin():
    routine = CalibrationRoutine()
    for y, z in ((0.16, 0.231), (0.0, 0.229), (-0.16, 0.230)):  # the flange's heights with a 15 cm gripper
        routine.record((0.35, y, z))
    layout = routine.layout()
    # With the flange frame the recorded heights are 15 cm above the fingertips on the cards.
    assert card_floor_z(layout, (0.0, 0.0, 0.15)) == pytest.approx(0.231 - 0.15 + CARD_FLOOR_MARGIN)
    assert card_floor_z(layout) == pytest.approx(0.231 + CARD_FLOOR_MARGIN)  # a fingertip tool frame
    assert CARD_FLOOR_MARGIN < layout.touch_height  # a close at the floor still counts as a touch
    with pytest.raises(ValueError, match="touch height"):
        card_floor_z(layout, margin=layout.touch_height)
