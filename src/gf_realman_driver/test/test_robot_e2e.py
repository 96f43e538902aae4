"""End to end: `gf-launch robot dry_run:=true` (driver with SimulatedArm, test-pattern camera, policy in
stream mode with the scripted touch_oracle, Touch eval node) over DDS, unattended.

The scripted policy touches the target card in trial 0, the next card in trial 1 and the gap between
two cards in trial 2, so the automatic scoring must say: success, wrong card, not executed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gf_eval.results import ResultsFile

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
AIMS = "backend_args:={aim: [target, other, between]}"


def launch(*assignments: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "gf-launch"), "robot", "dry_run:=true", "auto_confirm:=true", "console:=disabled", *assignments]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_scripted_touches_are_scored_right_card_wrong_card_and_between_cards(tmp_path, fresh_domain):
    out = tmp_path / "touch"
    proc = launch("trials:=3", f"output_dir:={out}", AIMS)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    records = ResultsFile(out).read()
    assert [r.trial_id for r in records] == ["Touch-0000-0", "Touch-0001-0", "Touch-0002-0"]
    right, wrong, between = records
    assert right.placed_card == right.target_index and right.success
    assert wrong.placed_card == (wrong.target_index + 1) % 3 and wrong.executed and not wrong.recognised
    assert between.placed_card == -1 and not between.executed and between.extra["over_card"] == -1
    for r in records:
        assert r.end_reason == "gripper_closed" and r.extra["gripper_closed"] and r.chunks_rejected == 0
        assert r.extra["height_above_card"] is None or r.extra["height_above_card"] <= 0.04
        assert r.instruction.startswith("Touch ") and r.protocol == "Touch"
    table = (out / "report" / "summary.md").read_text()
    assert "| Touch | 3 |  66.7% [21-94] |  50.0% [9-91] |  33.3% [6-79] |" in table
    assert "| Touch | 3 |" in proc.stdout  # the table is printed at the end
    assert len(list((out / "previews").glob("Touch-*.png"))) == 3
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "touch" and run["robot"] == "rm75" and run["policy"] == "touch_oracle"
    assert "arm stopped and link closed" in proc.stdout  # the driver shut down cleanly

    # Resuming the same directory with more trials runs only the new one.
    again = launch("trials:=4", f"output_dir:={out}", AIMS)
    assert again.returncode == 0, again.stdout[-5000:]
    assert "3 already in" in again.stdout
    assert [r.trial_id for r in ResultsFile(out).read()] == [f"Touch-000{i}-0" for i in range(4)]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_the_dry_run_graph_stays_on_loopback(tmp_path, fresh_domain):
    import re

    log = tmp_path / "strace.log"
    cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(log),
           str(BIN / "gf-launch"), "robot", "dry_run:=true", "auto_confirm:=true", "console:=disabled", "trials:=1",
           f"output_dir:={tmp_path / 'touch'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    address = re.compile(r'sin6?_addr=inet_(?:addr|pton)\((?:AF_INET6, )?"([^"]+)"\)')
    trace = log.read_text()
    assert "sendmsg(" in trace or "sendto(" in trace
    outside = [line for line in trace.splitlines()
               if any(c in line for c in ("connect(", "sendto(", "sendmsg(", "sendmmsg("))
               for a in address.findall(line) if not (a.startswith("127.") or a in ("::1", "::ffff:127.0.0.1"))]
    assert outside == []
