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

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_jog_and_record_the_three_card_centres(tmp_path, module_domain, ros_tools):
    output = tmp_path / "calibration" / "touch_layout.yaml"
    child = pexpect.spawn(str(BIN / "gf-launch"), ["robot_calibrate", "dry_run:=true", f"output:={output}"],
                          encoding="utf-8", timeout=40, env=dict(os.environ), dimensions=(40, 200))
    probe = ros_tools.Probe()
    recorded_at: list[np.ndarray] = []
    try:
        child.expect("Jog the fingertips onto the centre of the card at slot 0")
        probe.wait(lambda: len(probe.ee) > 3, 30.0, "EE states")
        start = probe.xyz()

        def hold(key: str, seconds: float) -> None:
            # A held key: the terminal's auto-repeat, every 80 ms.
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                child.send(key)
                time.sleep(0.08)
            time.sleep(0.6)  # key released: the arm stops

        def record(expect: str) -> None:
            recorded_at.append(probe.settle(still_for=0.2))
            child.send("\r")
            child.expect(expect)

        hold("a", 1.3)  # +y (the robot's left) at 25 % speed: ~13 cm
        record("recorded slot 0")
        hold("d", 1.7)
        record("recorded slot 1")
        child.send("\r")  # the same spot again: refused, nothing recorded
        child.expect("not recorded: this point is 0.0 cm from slot 1, closer than a card")
        hold("d", 1.7)  # the workspace's -y wall (y = -0.20) stops it a little early
        record("layout saved to")
        child.expect(pexpect.EOF)
    finally:
        probe.close()
        child.close()
    assert child.exitstatus == 0
    layout = load_layout(output)
    assert layout.source == "gf-calibrate" and layout.created
    for slot, ee in zip(layout.slots, recorded_at):
        assert (slot.x, slot.y, slot.z) == pytest.approx(tuple(ee), abs=1e-3)  # what the driver published
    assert layout.slots[0].y > start[1] + 0.05 and layout.slots[0].y - layout.slots[1].y >= 0.14
    assert all(abs(s.z - start[2]) < 2e-3 and abs(s.x - start[0]) < 2e-3 for s in layout.slots)  # y jogs only
