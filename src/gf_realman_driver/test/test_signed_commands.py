"""Only the enrolled policy moves the arm: the real robot graph on loopback with signed commands.

`gf-launch robot dry_run:=true key_file:=K require_signed:=true` runs three scripted Touch trials
while a separate intruder process (intruder.py) publishes >= 1000 unsigned, wrong-secret,
unknown-key, tampered and replayed chunks for the running trial. Every one of them must be
refused for its signature (counted in the driver's ~/status), none executed, and the trials must
come out as without the intruder.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gf_bringup.signing import write_key_file
from gf_eval.results import ResultsFile

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
INTRUDER = Path(__file__).with_name("intruder.py")
INTRUDER_CHUNKS = 1200
INTRUDER_RATE_HZ = 200.0


def test_intruder_chunks_are_refused_and_the_signed_trials_run(tmp_path, fresh_domain, ros_tools, ended):
    key = write_key_file(tmp_path / "keys" / "robot.key", "lab-robot")
    write_key_file(tmp_path / "keys" / "wrong.key", "lab-robot")  # the same key id with another secret
    write_key_file(tmp_path / "keys" / "unknown.key", "not-enrolled")
    out = tmp_path / "touch"
    probe = ros_tools.Probe()
    intruder = subprocess.Popen(
        [sys.executable, str(INTRUDER), key.key_id, str(tmp_path / "keys" / "wrong.key"),
         str(tmp_path / "keys" / "unknown.key"), str(INTRUDER_CHUNKS), str(INTRUDER_RATE_HZ)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        graph = subprocess.run(
            [str(BIN / "gf-launch"), "robot", "dry_run:=true", "auto_confirm:=true", "console:=disabled", "trials:=3",
             f"output_dir:={out}", f"key_file:={tmp_path / 'keys' / 'robot.key'}", "require_signed:=true"],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        status = dict(probe.status)
    finally:
        intruder.send_signal(signal.SIGINT)
        report = ended(intruder, timeout=30)
        probe.close()
    assert graph.returncode == 0, graph.stdout[-5000:] + graph.stderr[-3000:]
    intruded = json.loads([line for line in report.splitlines() if line.startswith("{")][-1])
    published = sum(intruded["published"].values())
    assert published == INTRUDER_CHUNKS, f"the intruder ran out of time: {intruded} (graph ended first)"

    # Every intruder chunk was refused for its signature, before any other check ...
    refused = status["signature_rejections"]
    assert status["signed_commands_required"] is True
    # (DDS may drop some of a flood from the driver's reader queue on a loaded machine: what arrived is
    # refused, by the right reason, and nothing beyond the policy's own chunks is accepted.)
    assert published / 2 <= sum(refused.values()) <= published, (refused, intruded)
    assert refused["unsigned"] <= intruded["published"]["unsigned"]
    assert refused["unknown_key"] <= intruded["published"]["unknown_key"]
    assert refused["bad_signature"] <= intruded["published"]["wrong_secret"] + intruded["published"]["tampered"]
    assert refused.get("replayed", 0) + refused.get("stale", 0) <= intruded["published"]["replay"]
    assert all(refused.get(kind, 0) > 0 for kind in ("unsigned", "unknown_key", "bad_signature", "replayed")), refused
    # ... so nothing but the policy's own chunks was accepted (the policy node logs how many it
    # published per trial; the intruder's own count can miss the first ones, before DDS matched it),
    log = graph.stdout + graph.stderr
    published_by_policy = {m[1]: int(m[2]) for m in re.finditer(r"trial (\S+) ended: (\d+) action chunks published", log)}
    assert sorted(published_by_policy) == ["Touch-0000-0", "Touch-0001-0", "Touch-0002-0"], log[-3000:]
    assert 0 < status["chunks_accepted"] <= sum(published_by_policy.values()), (status, published_by_policy)
    assert intruded["policy_chunks"] <= sum(published_by_policy.values())
    # and the trials are the scripted policy's: right card each time, no rejected chunk on record.
    records = ResultsFile(out).read()
    assert [r.trial_id for r in records] == ["Touch-0000-0", "Touch-0001-0", "Touch-0002-0"]
    for r in records:
        assert r.success and r.placed_card == r.target_index and r.chunks_rejected == 0, r
    assert "refused unauthenticated action chunk" in log  # logged ...
    assert log.count("refused unauthenticated action chunk") < 50  # ... summarised, not once per chunk


def test_the_robot_network_refuses_to_start_an_unsigned_driver(fresh_domain):
    """GF_NETWORK=robot without a key file: the driver names the two ways out and does not start.

    The loopback DDS profile and localhost discovery are kept explicitly: only the driver's
    notion of the network mode changes, nothing leaves the machine.
    """
    import os

    from gf_bringup.runtime import profile_path

    env = {**os.environ, "GF_NETWORK": "robot", "FASTDDS_DEFAULT_PROFILES_FILE": str(profile_path("loopback")),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.run([str(BIN / "gf-realman-driver"), "--ros-args", "-p", "dry_run:=true"],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "no key_file is given" in text and "require_signed:=false" in text
