"""Teleoperation input devices behind one small interface, and the operator's command state.

``TeleopDevice.read(now)`` returns a ``DeviceReading``: the 6-D motion the operator asks for
(x, y, z, roll, pitch, yaw in the robot base frame, each in [-1, 1] of full speed) and discrete
events (gripper toggle, speed up/down, recorder commands, quit). Devices:

* ``KeyboardDevice``: the terminal in cbreak mode (termios; works over SSH, no display). A
  terminal reports key presses, not releases, so a key moves its axis for ``hold_s`` after its
  last press; the terminal's auto-repeat keeps a held key alive (dead-man: release -> stop).
* ``SpaceMouseDevice``: 3Dconnexion SpaceMouse through ``pyspacemouse`` (HID).
* ``GamepadDevice``: any Linux joystick/gamepad through ``evdev``.

``TeleopState`` turns readings into ee_delta_pose actions: gripper as a toggle, a speed scale,
and zero motion whenever the device reports nothing (the dead-man rule).
"""

from __future__ import annotations

import os
import select
import sys
import termios
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from gf_eval.action_space import EE_DELTA_POSE

# Events a device can report.
GRIPPER, FASTER, SLOWER = "gripper", "faster", "slower"
RECORD_START, RECORD_SUCCESS, RECORD_FAILURE, RECORD_DISCARD = "record_start", "record_success", "record_failure", "record_discard"
QUIT, HELP = "quit", "help"
EVENTS = (GRIPPER, FASTER, SLOWER, RECORD_START, RECORD_SUCCESS, RECORD_FAILURE, RECORD_DISCARD, QUIT, HELP)


@dataclass
class DeviceReading:
    motion: np.ndarray = field(default_factory=lambda: np.zeros(6))  # x y z roll pitch yaw in [-1, 1]
    events: list[str] = field(default_factory=list)


class TeleopDevice(ABC):
    """An input device polled at the control rate (never blocks)."""

    name = "device"
    help_text = ""

    @abstractmethod
    def read(self, now: float) -> DeviceReading:
        """The operator's current command (zero motion when there is no input)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most devices need nothing
        """Release the device (restore the terminal, close the HID/evdev handle)."""


def _deadband(values: np.ndarray, band: float) -> np.ndarray:
    """Zero inside the band, rescaled to reach 1 at full deflection outside it."""
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    out = np.where(np.abs(v) <= band, 0.0, (np.abs(v) - band) / (1.0 - band) * np.sign(v))
    return out


# --- keyboard -------------------------------------------------------------------------------

KEY_AXES: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),  # x: forward / back (towards the cards / the robot)
    "a": (1, 1.0), "d": (1, -1.0),  # y: left / right
    "r": (2, 1.0), "f": (2, -1.0),  # z: up / down
    "u": (3, 1.0), "o": (3, -1.0),  # roll
    "i": (4, 1.0), "k": (4, -1.0),  # pitch
    "j": (5, 1.0), "l": (5, -1.0),  # yaw
    "\x1b[A": (0, 1.0), "\x1b[B": (0, -1.0), "\x1b[D": (1, 1.0), "\x1b[C": (1, -1.0),  # arrow keys
}
KEY_EVENTS: dict[str, str] = {
    " ": GRIPPER, "+": FASTER, "=": FASTER, "-": SLOWER,
    "b": RECORD_START, "n": RECORD_SUCCESS, "m": RECORD_FAILURE, "x": RECORD_DISCARD,
    "q": QUIT, "\x03": QUIT, "h": HELP, "?": HELP,
}
KEYBOARD_HELP = """keys (hold to move; release = stop):
  w/s  forward/back (x)     a/d  left/right (y)     r/f  up/down (z)     arrows: x/y
  u/o  roll                 i/k  pitch              j/l  yaw
  space  toggle gripper     +/-  speed up/down      h  this help         q  quit
  recorder: b  start   n  stop (success)   m  stop (failure)   x  discard"""


def split_keys(text: str) -> list[str]:
    """Key presses in a chunk of terminal input (arrow keys are 3-character escape sequences)."""
    keys, i = [], 0
    while i < len(text):
        if text.startswith("\x1b[", i) and i + 2 < len(text):
            keys.append(text[i:i + 3])
            i += 3
        else:
            keys.append(text[i])
            i += 1
    return keys


class KeyboardDevice(TeleopDevice):
    """Keys from the controlling terminal (stdin or /dev/tty), read without blocking."""

    name = "keyboard"
    help_text = KEYBOARD_HELP

    def __init__(self, hold_s: float = 0.25, fd: int | None = None):
        self.hold_s = hold_s
        self._own_fd = False
        if fd is None:
            if sys.stdin.isatty():
                fd = sys.stdin.fileno()
            else:
                fd = os.open("/dev/tty", os.O_RDONLY)
                self._own_fd = True
        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        # cbreak without echo: keys arrive one by one, Ctrl-C still raises SIGINT.
        attrs[3] &= ~(termios.ICANON | termios.ECHO)
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._until = np.zeros(6)  # per axis: active until this time
        self._sign = np.zeros(6)

    def feed(self, text: str, now: float) -> list[str]:
        """Apply typed text; returns the events in it (separated for tests)."""
        events = []
        for key in split_keys(text):
            k = key.lower() if len(key) == 1 and key not in "+=-" else key
            if k in KEY_AXES:
                axis, sign = KEY_AXES[k]
                self._sign[axis] = sign
                self._until[axis] = now + self.hold_s
            elif k in KEY_EVENTS:
                events.append(KEY_EVENTS[k])
        return events

    def read(self, now: float) -> DeviceReading:
        text = ""
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 256)
            if not chunk:
                break
            text += chunk.decode("utf-8", "ignore")
        events = self.feed(text, now) if text else []
        motion = np.where(now < self._until, self._sign, 0.0)
        return DeviceReading(motion=motion, events=events)

    def close(self) -> None:
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
        except termios.error:
            pass
        if self._own_fd:
            os.close(self.fd)


# --- SpaceMouse -----------------------------------------------------------------------------


class SpaceMouseDevice(TeleopDevice):
    """A 3Dconnexion SpaceMouse (pyspacemouse, HID). Left button: gripper; right: faster."""

    name = "spacemouse"
    help_text = "SpaceMouse: push/tilt the cap to move; left button toggles the gripper, right button cycles the speed"

    def __init__(self, deadband: float = 0.08, stale_s: float = 0.5, device=None):
        if device is None:
            import pyspacemouse

            try:
                device = pyspacemouse.open(nonblocking=True, axis_convention=pyspacemouse.AxisConvention.ROS)
            except Exception as exc:  # noqa: BLE001 - hidapi missing or no device: say what to do
                raise RuntimeError(f"cannot open a SpaceMouse ({exc}); is it plugged in and is libhidapi installed?") from exc
        self.device = device
        self.deadband = deadband
        self.stale_s = stale_s
        self._buttons: list[int] = []
        self._last_t, self._last_change = None, 0.0

    def read(self, now: float) -> DeviceReading:
        state = self.device.read()
        if state.t != self._last_t:
            self._last_t, self._last_change = state.t, now
        raw = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=np.float64)
        # The HID stream reports while the cap is deflected; silence means the device is gone.
        motion = _deadband(raw, self.deadband) if now - self._last_change <= self.stale_s else np.zeros(6)
        buttons = list(state.buttons)
        events = []
        for i, pressed in enumerate(buttons):
            was = self._buttons[i] if i < len(self._buttons) else 0
            if pressed and not was:
                events.append(GRIPPER if i == 0 else FASTER)
        self._buttons = buttons
        return DeviceReading(motion=motion, events=events)

    def close(self) -> None:
        close = getattr(self.device, "close", None)
        if close is not None:
            close()


# --- gamepad ---------------------------------------------------------------------------------

# evdev codes (linux/input-event-codes.h), kept numeric so the mapping needs no evdev import.
ABS_X, ABS_Y, ABS_RX, ABS_RY, ABS_HAT0X, ABS_HAT0Y = 0x00, 0x01, 0x03, 0x04, 0x10, 0x11
BTN_SOUTH, BTN_EAST, BTN_NORTH, BTN_WEST = 0x130, 0x131, 0x133, 0x134
BTN_TL, BTN_TR, BTN_SELECT, BTN_START = 0x136, 0x137, 0x13A, 0x13B
EV_KEY, EV_ABS = 0x01, 0x03
# axis code -> (motion index, sign): left stick moves in the table plane, right stick z / yaw,
# the d-pad rolls and pitches. Stick "up" reports negative values.
GAMEPAD_AXES = {ABS_Y: (0, -1.0), ABS_X: (1, -1.0), ABS_RY: (2, -1.0), ABS_RX: (5, -1.0),
                ABS_HAT0X: (3, 1.0), ABS_HAT0Y: (4, -1.0)}
GAMEPAD_BUTTONS = {BTN_SOUTH: GRIPPER, BTN_TR: FASTER, BTN_TL: SLOWER, BTN_START: RECORD_START,
                   BTN_NORTH: RECORD_SUCCESS, BTN_WEST: RECORD_FAILURE, BTN_SELECT: RECORD_DISCARD}


class GamepadDevice(TeleopDevice):
    """A gamepad through evdev: left stick x/y, right stick z/yaw, d-pad roll/pitch, A = gripper,
    bumpers = speed, Start/Y/X/Select = recorder start/success/failure/discard."""

    name = "gamepad"
    help_text = "gamepad: left stick x/y, right stick z/yaw, d-pad roll/pitch, A gripper, LB/RB speed, Start record, Y success, X failure, Select discard"

    def __init__(self, path: str = "", deadband: float = 0.12, device=None):
        if device is None:
            device = self._open(path)
        self.device = device
        self.deadband = deadband
        caps = device.capabilities(absinfo=True) if hasattr(device, "capabilities") else {}
        self.ranges: dict[int, tuple[float, float]] = {}
        for code, info in caps.get(EV_ABS, []):
            self.ranges[code] = (float(info.min), float(info.max))
        self.axes = np.zeros(6)
        self.connected = True

    @staticmethod
    def _open(path: str):
        import evdev

        paths = [path] if path else evdev.list_devices()
        for p in paths:
            dev = evdev.InputDevice(p)
            caps = dev.capabilities()
            if EV_ABS in caps and BTN_SOUTH in caps.get(EV_KEY, []):
                return dev
            dev.close()
        raise RuntimeError(f"no gamepad found ({'checked ' + ', '.join(paths) if paths else 'no /dev/input/event* devices readable'})")

    def _normalise(self, code: int, value: int) -> float:
        lo, hi = self.ranges.get(code, (-1.0, 1.0))
        if hi <= lo:
            return 0.0
        return float(np.clip(2.0 * (value - lo) / (hi - lo) - 1.0, -1.0, 1.0))

    def handle(self, etype: int, code: int, value: int) -> list[str]:
        """Apply one input event; returns events (separated for tests)."""
        if etype == EV_ABS and code in GAMEPAD_AXES:
            index, sign = GAMEPAD_AXES[code]
            self.axes[index] = sign * self._normalise(code, value)
        elif etype == EV_KEY and code in GAMEPAD_BUTTONS and value == 1:
            return [GAMEPAD_BUTTONS[code]]
        return []

    def read(self, now: float) -> DeviceReading:  # noqa: ARG002
        events: list[str] = []
        if self.connected:
            try:
                for event in self.device.read():
                    events += self.handle(event.type, event.code, event.value)
            except BlockingIOError:
                pass  # no new events: sticks keep their last position
            except OSError:
                self.connected = False  # unplugged: dead-man stop
        motion = _deadband(self.axes, self.deadband) if self.connected else np.zeros(6)
        return DeviceReading(motion=motion, events=events)

    def close(self) -> None:
        close = getattr(self.device, "close", None)
        if close is not None:
            close()


def open_device(name: str, **kwargs) -> TeleopDevice:
    """``keyboard``, ``spacemouse`` or ``gamepad``."""
    devices = {"keyboard": KeyboardDevice, "spacemouse": SpaceMouseDevice, "gamepad": GamepadDevice}
    if name not in devices:
        raise ValueError(f"unknown teleop device {name!r}; expected one of {sorted(devices)}")
    return devices[name](**kwargs)


# --- the operator's command state -----------------------------------------------------------

SPEEDS = (0.1, 0.25, 0.5, 0.75, 1.0)


@dataclass
class TeleopState:
    """Gripper toggle, speed scale and the mapping from device motion to ee_delta_pose."""

    max_translation_m: float = 0.025  # per control step at full speed (0.5 m/s at 20 Hz)
    max_rotation_rad: float = 0.1  # per control step at full speed
    speed: float = 0.5
    gripper_open: bool = True
    gripper_closed_value: float = -0.2  # squeezes the 3 cm cube without popping it out

    def apply(self, events: list[str]) -> list[str]:
        """Update from device events; returns the events this state does not handle."""
        rest = []
        for e in events:
            if e == GRIPPER:
                self.gripper_open = not self.gripper_open
            elif e in (FASTER, SLOWER):
                i = min(range(len(SPEEDS)), key=lambda j: abs(SPEEDS[j] - self.speed))
                i = min(i + 1, len(SPEEDS) - 1) if e == FASTER else max(i - 1, 0)
                self.speed = SPEEDS[i]
            else:
                rest.append(e)
        return rest

    def action(self, motion: np.ndarray) -> np.ndarray:
        """A 7-D ee_delta_pose action for a device motion (zero motion holds the arm)."""
        motion = np.clip(np.asarray(motion, dtype=np.float64), -1.0, 1.0) * self.speed
        out = np.zeros(EE_DELTA_POSE.dim, dtype=np.float32)
        out[:3] = motion[:3] * self.max_translation_m / EE_DELTA_POSE.translation_scale_m
        out[3:6] = motion[3:6] * self.max_rotation_rad / EE_DELTA_POSE.rotation_scale_rad
        out[6] = 1.0 if self.gripper_open else self.gripper_closed_value
        return EE_DELTA_POSE.clip(out).astype(np.float32)

    def describe(self) -> str:
        return f"speed {int(round(self.speed * 100))}%  gripper {'open' if self.gripper_open else 'closed'}"
