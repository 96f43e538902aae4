"""The driver node with the real SDK backend and no arm: clear errors, retries with backoff, no hang,
clean exit; with a fake controller on 127.0.0.1: state on the topics and reconnection after a drop.
Every address used is 127.0.0.1."""

from __future__ import annotations

import math
import re
import socket
import time

import pytest

pytest.importorskip("Robotic_Arm.rm_robot_interface")

from gf_bringup import names
from gf_realman_driver.fake_controller import FakeRealmanController  # noqa: E402

pytestmark = pytest.mark.slow
LOCALHOST = "127.0.0.1"
RETRY = re.compile(r"\[(\d+\.\d+)\] \[realman_driver\]: arm connection failed \(attempt (\d+)\): (.*); retrying in ([0-9.]+) s")


def closed_port() -> int:
    s = socket.socket()
    s.bind((LOCALHOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def driver_at(ros_tools, port: int, *extra: str):
    return ros_tools.NodeProcess(
        "gf-realman-driver", "-p", f"arm_ip:={LOCALHOST}", "-p", f"arm_port:={port}", "-p", "connect_timeout_s:=1.0",
        "-p", "reconnect_initial_s:=0.2", "-p", "reconnect_max_s:=0.8", *extra,
    )


def retries(output: str) -> list[tuple[int, str, float, float]]:
    """(attempt, reason, retry delay, log time) of every failed connection attempt."""
    return [(int(a), why, float(d), float(t)) for t, a, why, d in RETRY.findall(output)]


def test_nothing_listening_fails_clearly_retries_with_backoff_and_exits_cleanly(module_domain, ros_tools):
    driver = driver_at(ros_tools, closed_port())
    try:
        assert driver.wait_for_output("(attempt 5)", 15.0), driver.output[-3000:]
        found = retries(driver.output)
        assert [a for a, _, _, _ in found[:5]] == [1, 2, 3, 4, 5]
        assert [d for _, _, d, _ in found[:5]] == [0.2, 0.4, 0.8, 0.8, 0.8]  # doubling, capped
        assert all("connection refused" in why and f"{LOCALHOST}:" in why for _, why, _, _ in found)
    finally:
        started = time.monotonic()
        code = driver.stop(timeout=10.0)
    assert code == 0 and time.monotonic() - started < 5.0, driver.output[-2000:]


def test_a_silent_peer_is_given_up_within_the_connect_timeout(module_domain, ros_tools):
    server = socket.socket()
    server.bind((LOCALHOST, 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname(), timeout=1.0)  # accept queue full: no answer
    driver = driver_at(ros_tools, server.getsockname()[1])
    try:
        assert driver.wait_for_output("(attempt 3)", 20.0), driver.output[-3000:]
        found = retries(driver.output)
        assert all("no answer within 1.0 s" in why for _, why, _, _ in found), found
        # Each attempt gives up after the 1 s connect timeout: attempt k+1 ends one backoff
        # delay plus at most one timeout after attempt k (log time stamps).
        for (_, _, delay, t), (_, _, _, t_next) in zip(found, found[1:]):
            assert delay + 0.9 <= t_next - t <= delay + 1.0 + 0.4, found
    finally:
        code = driver.stop(timeout=10.0)
        filler.close()
        server.close()
    assert code == 0, driver.output[-2000:]


def test_with_a_fake_controller_the_state_is_published_and_a_dropped_link_reconnects(module_domain, ros_tools):
    fake = FakeRealmanController()
    driver = driver_at(ros_tools, fake.port)
    probe = None
    try:
        from sensor_msgs.msg import JointState

        from gf_bringup.rosutil import reliable_qos

        probe = ros_tools.Probe()
        joints = []
        probe.node.create_subscription(JointState, names.JOINT_STATES, joints.append, reliable_qos())
        probe.wait(lambda: probe.status.get("connected") and len(probe.ee) > 2, 20.0, "the fake arm's state")
        deadline = time.monotonic() + 5
        while not joints and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(joints[-1].name) == [f"joint{i}" for i in range(1, 8)]
        assert joints[-1].position[1] == pytest.approx(math.radians(20.0), abs=1e-4)  # radians on the topic
        assert joints[-1].position[3] == pytest.approx(math.radians(90.0), abs=1e-4)
        assert probe.xyz() == pytest.approx(fake.pose[:3], abs=1e-5)

        fake.drop_clients()  # the controller goes away and comes back
        probe.wait(lambda: probe.status.get("connects", 0) >= 2 and probe.status.get("connected"), 20.0, "a reconnect")
        assert "lost the arm" in driver.output
        # The state comes from the UDP push (queried only while no push is fresh, which may or may not
        # happen around a connect), so the new link shows as the push set up on it again, and states
        # read after the reconnect reaching the topic.
        assert fake.commands().count("set_realtime_push") >= 2
        reconnected = probe.now()
        probe.wait(lambda: sum(1 for e in probe.ee if e[0] >= reconnected) > 2, 10.0, "states after the reconnect")
    finally:
        if probe is not None:
            probe.close()
        code = driver.stop(timeout=10.0)
        fake.close()
    assert code == 0, driver.output[-2000:]
    assert "set_arm_stop" in fake.commands()  # the clean shutdown stopped the arm
