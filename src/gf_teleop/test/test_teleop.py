"""Teleoperation: the devices, the command state, and the keyboard driving the simulated arm."""

from __future__ import annotations

import os
import subprocess
import termios
import time
from types import SimpleNamespace

import numpy as np
import pytest

from gf_teleop import devices as dv


def test_keyboard_moves_while_keys_repeat_and_stops_without_input():
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    keyboard = dv.KeyboardDevice(hold_s=0.2, fd=slave)
    try:
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # keys arrive one by one
        os.write(master, b"w")
        t0 = time.monotonic()
        time.sleep(0.05)
        assert keyboard.read(t0).motion.tolist() == [1, 0, 0, 0, 0, 0]
        assert keyboard.read(t0 + 0.1).motion[0] == 1  # still held (auto-repeat would refresh it)
        assert not keyboard.read(t0 + 0.25).motion.any()  # dead-man: no new press -> no motion
        os.write(master, b"f\x1b[Dj")  # z down, arrow left (+y), yaw +
        time.sleep(0.05)
        assert keyboard.read(t0 + 1).motion.tolist() == [0, 1, -1, 0, 0, 1]
        os.write(master, b" +-bnmxqh")
        time.sleep(0.05)
        assert keyboard.read(t0 + 2).events == [dv.GRIPPER, dv.FASTER, dv.SLOWER, dv.RECORD_START, dv.RECORD_SUCCESS,
                                                dv.RECORD_FAILURE, dv.RECORD_DISCARD, dv.QUIT, dv.HELP]
    finally:
        keyboard.close()
        assert termios.tcgetattr(slave) == before  # the terminal is restored
        os.close(master)
        os.close(slave)


def test_state_maps_motion_to_bounded_ee_delta_actions():
    state = dv.TeleopState(max_translation_m=0.025, max_rotation_rad=0.1, speed=0.5)
    np.testing.assert_allclose(state.action([1, -1, 0, 0, 0, 0.5]), [0.125, -0.125, 0, 0, 0, 0.25, 1.0])
    assert state.action(np.zeros(6)).tolist() == [0, 0, 0, 0, 0, 0, 1.0]  # no input: hold, gripper unchanged
    assert state.apply([dv.GRIPPER, dv.QUIT]) == [dv.QUIT]
    assert state.action(np.zeros(6))[6] == pytest.approx(-0.2) and not state.gripper_open
    for _ in range(10):
        state.apply([dv.FASTER])
    assert state.speed == 1.0 and np.abs(state.action(np.ones(6))).max() <= 1.0
    for _ in range(10):
        state.apply([dv.SLOWER])
    assert state.speed == dv.SPEEDS[0]


class FakeEvdev:
    """An evdev InputDevice stand-in: absinfo ranges and queued events."""

    def __init__(self):
        info = SimpleNamespace(min=-32768, max=32767)
        self.caps = {dv.EV_ABS: [(dv.ABS_X, info), (dv.ABS_Y, info), (dv.ABS_RY, info), (dv.ABS_RX, info),
                                 (dv.ABS_HAT0X, SimpleNamespace(min=-1, max=1))]}
        self.queue: list = []
        self.unplugged = False

    def capabilities(self, absinfo=False):  # noqa: ARG002
        return self.caps

    def read(self):
        if self.unplugged:
            raise OSError(19, "No such device")
        if not self.queue:
            raise BlockingIOError
        events, self.queue = self.queue, []
        return iter(events)

    def push(self, etype, code, value):
        self.queue.append(SimpleNamespace(type=etype, code=code, value=value))


def test_gamepad_axes_buttons_deadband_and_unplugging():
    fake = FakeEvdev()
    pad = dv.GamepadDevice(device=fake, deadband=0.1)
    fake.push(dv.EV_ABS, dv.ABS_Y, -32768)  # left stick fully up -> +x
    fake.push(dv.EV_ABS, dv.ABS_X, 1000)  # inside the deadband
    fake.push(dv.EV_ABS, dv.ABS_HAT0X, 1)  # d-pad right -> roll
    fake.push(dv.EV_KEY, dv.BTN_SOUTH, 1)
    fake.push(dv.EV_KEY, dv.BTN_SOUTH, 0)
    reading = pad.read(0.0)
    np.testing.assert_allclose(reading.motion, [1, 0, 0, 1, 0, 0], atol=1e-4)
    assert reading.events == [dv.GRIPPER]
    assert pad.read(0.1).motion[0] == pytest.approx(1.0, abs=1e-4)  # a held stick sends no events
    fake.push(dv.EV_ABS, dv.ABS_Y, 0)
    fake.push(dv.EV_ABS, dv.ABS_HAT0X, 0)
    assert not pad.read(0.2).motion.any()  # centred -> no motion
    fake.push(dv.EV_ABS, dv.ABS_RY, -32768)
    assert pad.read(0.3).motion[2] == pytest.approx(1.0, abs=1e-4)
    fake.unplugged = True
    assert not pad.read(0.4).motion.any()  # unplugged mid-motion -> stop


def test_spacemouse_deadband_buttons_and_silence():
    states = []
    fake = SimpleNamespace(read=lambda: states[-1])
    mouse = dv.SpaceMouseDevice(device=fake, deadband=0.1, stale_s=0.3)
    states.append(SimpleNamespace(t=1.0, x=0.55, y=-0.05, z=0.0, roll=0.0, pitch=0.0, yaw=-1.0, buttons=[1, 0]))
    reading = mouse.read(10.0)
    np.testing.assert_allclose(reading.motion, [0.5, 0, 0, 0, 0, -1])
    assert reading.events == [dv.GRIPPER]
    states.append(SimpleNamespace(t=1.01, x=0.55, y=0, z=0, roll=0, pitch=0, yaw=0, buttons=[1, 1]))
    assert mouse.read(10.1).events == [dv.FASTER]  # edges only: the held left button is not repeated
    assert not mouse.read(10.5).motion.any()  # no report for longer than stale_s -> stop


@pytest.mark.slow
def test_keyboard_teleop_drives_the_simulated_arm(tmp_path, fresh_domain, helpers):
    """gf-teleop in a pseudo-terminal drives the sim through the ROS graph; the recorder keeps it."""
    import pexpect

    from gf_teleop import episodes as ep

    demos = tmp_path / "teleop"
    graph_log = tmp_path / "graph.log"
    graph = subprocess.Popen(
        [helpers.exe("gf-launch"), "teleop_sim", "trials:=1", "max_steps:=200", f"demo_dir:={demos}", "image_size:=64",
         f"output_dir:={tmp_path / 'eval'}", "operator:=pexpect"],
        stdout=graph_log.open("w"), stderr=subprocess.STDOUT, text=True, start_new_session=True)
    teleop = pexpect.spawn(helpers.exe("gf-teleop"), ["--ros-args", "-p", "speed:=0.25", "-p", "key_hold_s:=0.2"],
                           env=dict(os.environ), encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        teleop.expect("teleop ready: keyboard")
        teleop.expect(r"trial Demo-0000-0: Pick the cube")
        teleop.expect(r"chunks [1-9]")  # the sim is stepping on our chunks (zero motion so far)
        time.sleep(0.5)
        for _ in range(10):  # hold "r" (z up) for 0.5 s like a terminal's auto-repeat
            teleop.send("r")
            time.sleep(0.05)
        time.sleep(0.6)
        teleop.send(" ")  # close the gripper
        teleop.expect(r"episode Demo-0000-0 ended: timeout after 200 steps", timeout=60)
        teleop.send("q")
        teleop.expect(pexpect.EOF, timeout=20)
        assert graph.wait(timeout=60) == 0
    except (pexpect.TIMEOUT, pexpect.EOF, AssertionError) as exc:
        helpers.stop_process(graph)
        raise AssertionError(f"{exc}\n--- teleop screen ---\n{teleop.before}\n--- graph ---\n{graph_log.read_text()[-4000:]}") from None
    finally:
        teleop.terminate(force=True)
        helpers.stop_process(graph)
    [entry] = ep.read_manifest(demos)
    assert entry.complete and entry.length == 200 and entry.operator == "pexpect"
    episode = ep.load_episode(demos, entry)
    dz = episode.actions[:, 2]
    moving = np.flatnonzero(dz > 0)
    assert 8 <= len(moving) <= 30 and np.all(np.diff(moving) == 1)  # one press-and-hold block
    np.testing.assert_allclose(dz[moving], 0.0625, rtol=1e-5)  # speed 0.25 x 2.5 cm per step, in 0.1 m units
    assert not episode.actions[moving[-1] + 1:, :6].any()  # released: zero motion ever after (dead-man)
    rise = episode.proprio[moving[-1] + 10, 2] - episode.proprio[moving[0], 2]
    assert rise > 0.5 * len(moving) * 0.00625, rise  # the arm really went up
    tail = episode.proprio[-50:, :3]
    assert np.abs(tail - tail[-1]).max() < 0.002  # and holds still once released
    closed = np.flatnonzero(episode.actions[:, 6] < 0)
    assert len(closed) and closed[0] > moving[-1] and np.all(episode.actions[closed[0]:, 6] == pytest.approx(-0.2))
