"""`gf-launch robot_calibrate dry_run:=true` in a terminal (pexpect): keyboard jogging of the simulated arm
through the driver, Enter records each slot at the EE position the driver publishes, a slip is
refused, and the layout file is written and readable by the Touch evaluation."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pexpect = pytest.importorskip("pexpect")

from gf_eval.touch import load_layout  # noqa: E402
from gf_realman_driver.graphs import dry_run_layout  # noqa: E402

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


KEYS = {0: ("w", "s"), 1: ("a", "d"), 2: ("r", "f")}  # +/- per axis: x forward, y left, z up
TRAVEL_Z = 0.16  # above the cards while moving between slots
TOLERANCE = 0.012  # the operator's aim: well inside a 14 cm card
# A tap at 10 % moves its axis for the keyboard's 0.25 s hold: 5 control steps of 2.5 mm, 6 when a
# loaded machine runs a step late. The landing window is wider than such a tap, so a tap from
# outside the window can never jump over it and jogging cannot oscillate around the goal.
LANDING = 0.009


def test_jogging_reaches_and_records_every_card_slot_of_the_dry_run_layout(tmp_path, module_domain, ros_tools):
    """An operator's session: lift, jog over each card of the packaged dry-run layout (slot 0 on
    the robot's left first), lower onto it, press Enter. Every slot is reachable through the
    driver's limits, the layout written is the one jogged to, and a slip (Enter twice at one spot) is
    refused."""
    output = tmp_path / "calibration" / "touch_layout.yaml"
    target = load_layout(Path(dry_run_layout()))
    child = pexpect.spawn(str(BIN / "gf-launch"), ["robot_calibrate", "dry_run:=true", f"output:={output}"],
                          encoding="utf-8", timeout=40, env=dict(os.environ), dimensions=(40, 200))
    probe = ros_tools.Probe()
    recorded_at: list[np.ndarray] = []
    speed = [0.0]  # as last seen on the status line

    def shown_speed() -> float:
        """The speed on the node's status line (one every 0.5 s), printed after the keys typed so
        far were read: launch relays a line a fraction of a second late, so lines that arrive
        within 0.6 s may be older than the last key."""
        fresh_after = time.monotonic() + 0.6
        while True:
            child.expect(r"speed (\d+)%")
            if time.monotonic() >= fresh_after:
                return int(child.match.group(1)) / 100

    def set_speed(value: float) -> None:
        # As an operator does it: press +/- until the screen shows the speed wanted. A key the
        # terminal loses under load is pressed again instead of leaving every tap 2.5x too long.
        for _ in range(6):
            if speed[0] == value:
                return
            child.send("-" if value < speed[0] else "+")
            speed[0] = shown_speed()
        raise AssertionError(f"the status line never showed speed {value:.0%} (last {speed[0]:.0%})")

    def jog(axis: int, goal: float) -> None:
        # Closed loop as an operator does it: long holds at 25 % (10 cm/s), taps at 10 % near the goal.
        taps = []
        for _ in range(40):
            error = goal - probe.settle(still_for=0.15)[axis]
            taps.append(round(error * 1000, 1))
            if abs(error) <= LANDING:
                return
            key = KEYS[axis][0 if error > 0 else 1]
            set_speed(0.25 if abs(error) > 0.03 else 0.1)
            end = time.monotonic() + max(0.0, abs(error) / (0.1 if speed[0] == 0.25 else 0.04) - 0.35)
            child.send(key)
            while time.monotonic() < end:  # the terminal's auto-repeat, every 80 ms
                time.sleep(0.08)
                child.send(key)
        raise AssertionError(f"could not jog axis {axis} to {goal:.3f} m (at {probe.xyz()[axis]:.3f}); "
                             f"errors before each key (mm): {taps}")

    try:
        child.expect("Jog the fingertips onto the centre of the card at slot 0")
        probe.wait(lambda: len(probe.ee) > 3, 30.0, "EE states")
        speed[0] = shown_speed()
        for i, slot in enumerate(target.slots):
            jog(2, TRAVEL_Z)
            jog(0, slot.x)
            jog(1, slot.y)
            jog(2, slot.z)
            recorded_at.append(probe.settle(still_for=0.2))
            child.send("\r")
            child.expect("layout saved to" if i == 2 else f"recorded slot {i}")
            if i == 0:
                child.send("\r")  # the same spot again: refused, nothing recorded
                child.expect("not recorded: this point is 0.0 cm from slot 0, closer than a card")
        child.expect(pexpect.EOF)
    finally:
        probe.close()
        child.close()
    assert child.exitstatus == 0
    layout = load_layout(output)
    assert layout.source == "gf-calibrate" and layout.created
    for slot, ee, aimed in zip(layout.slots, recorded_at, target.slots):
        assert (slot.x, slot.y, slot.z) == pytest.approx(tuple(ee), abs=1e-3)  # what the driver published
        assert (slot.x, slot.y, slot.z) == pytest.approx((aimed.x, aimed.y, aimed.z), abs=TOLERANCE)
