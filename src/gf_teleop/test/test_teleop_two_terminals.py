"""The README's teleoperation: `gf-launch teleop_sim` in one terminal, `gf-teleop` in another.

The starter runs its graph on a ROS domain of its own and prints the command that joins it; a
keyboard operator in a pseudo-terminal drives the simulated arm with it and the episode is recorded.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pexpect
import pytest

from gf_teleop.episodes import load_episode, read_manifest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_gf_teleop_joins_the_starters_graph_with_the_printed_command_and_drives_the_arm(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}  # as a fresh shell: the starter picks one
    demo_dir = tmp_path / "teleop"
    starter = subprocess.Popen([str(BIN / "gf-launch"), "teleop_sim", f"demo_dir:={demo_dir}", "trials:=1", "max_steps:=60"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    command = None
    for line in starter.stdout:
        found = re.search(r"\[gf-launch\] in another terminal: (.+)$", line.strip())
        if found:
            command = found.group(1)
            break
    assert command and "ROS_DOMAIN_ID=" in command and "gf-teleop" in command
    # No display here: the operator's view of the scene is a PNG in the temp directory.
    operator = pexpect.spawn("bash", ["-c", command], env={**env, "TMPDIR": str(tmp_path)}, encoding="utf-8",
                             timeout=120, dimensions=(40, 200))
    first_view = None
    try:
        operator.expect(r"camera preview: (\S+\.png)")
        preview = Path(operator.match.group(1))
        assert preview.parent == tmp_path
        deadline = time.monotonic() + 120
        while starter.poll() is None and time.monotonic() < deadline:
            operator.send("w")  # hold "forward": the arm moves towards the cards
            time.sleep(0.05)
            if first_view is None and preview.exists():
                first_view = cv2.imread(str(preview))
        output = starter.communicate(timeout=60)[0]
    finally:
        operator.send("q")
        operator.expect(pexpect.EOF, timeout=30)
        if starter.poll() is None:
            starter.kill()
    assert starter.returncode == 0, output[-3000:]
    (entry,) = read_manifest(demo_dir)
    episode = load_episode(demo_dir, entry, images=False)
    assert episode.length == 60 and entry.operator == "operator"
    assert (episode.actions[:, 0] > 0.1).sum() > 10  # recorded forward motion from the keyboard
    last_view = cv2.imread(str(preview))  # the camera's 224 px frames, shown at twice the size
    assert first_view is not None and first_view.shape == last_view.shape == (448, 448, 3)
    assert np.abs(last_view.astype(int) - first_view).mean() > 1.0  # refreshed: the arm moved in it
