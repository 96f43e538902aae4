"""calibrate node (``gf-calibrate``): jog the arm with the keyboard and record the Touch layout.

Runs next to the driver (``gf-launch robot_calibrate``, or the driver with ``trial_gating:=false``
started any other way). Keys are the teleop keyboard's (gf_teleop.devices: w/s, a/d, r/f move x,
y, z; +/- speed; space toggles the gripper; rotations are disabled so the fingertips keep pointing
down) plus Enter (record the current slot), Backspace (redo the previous slot), q (quit without
saving) and h (help). Motion goes out as horizon-1 chunks on /gf/action_chunk at ``rate_hz``
through the driver's safety limits; positions come from /gf/ee_state. When all three slots are
recorded the layout is written to ``output`` and the node exits (code 0; 1 when quit unsaved).
"""

from __future__ import annotations

import array
import sys
import time
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node

from gf_bringup import names
from gf_bringup.rosutil import (
    config_field,
    config_help,
    create_publisher,
    create_subscription,
    declare_config,
    reliable_qos,
    run_node,
)
from gf_bringup.signing import load_signer, sign_message
from gf_eval.action_space import EE_DELTA_POSE
from gf_interfaces.msg import ActionChunk, EeState
from gf_teleop.devices import HELP, QUIT, KeyboardDevice, TeleopState, split_keys

from .calibration import CalibrationError, CalibrationRoutine

RECORD_POINT, UNDO_POINT = "record_point", "undo_point"
CALIBRATION_HELP = """calibration keys (hold to move; release = stop):
  w/s  forward/back (x)   a/d  left/right (y)   r/f  up/down (z)   arrows: x/y   +/-  speed
  space  toggle the gripper
  Enter  record the current slot     Backspace  redo the previous slot     q  quit without saving"""


class CalibrationKeyboard(KeyboardDevice):
    """The teleop keyboard plus the calibration keys: Enter records, Backspace undoes."""

    def feed(self, text: str, now: float) -> list[str]:
        events = super().feed(text, now)
        for key in split_keys(text):
            if key in ("\n", "\r"):
                events.append(RECORD_POINT)
            elif key in ("\x7f", "\b"):
                events.append(UNDO_POINT)
        return events


@dataclass
class CalibrateConfig:
    output: str = config_field("calibration/touch_layout.yaml", "where to write the layout YAML")
    card_size: float = config_field(0.14, "printed card edge (m), as printed by gf-cards")
    touch_height: float = config_field(0.04, "a gripper close counts as a touch up to this far above the recorded card height (m)")
    max_z_spread: float = config_field(0.02, "refuse touch heights that differ by more than this (m)")
    notes: str = config_field("", "free text stored in the layout file")
    rate_hz: float = config_field(20.0, "jog chunks per second (one control step each)")
    speed: float = config_field(0.25, "initial speed scale (+/- change it)")
    max_translation_m: float = config_field(0.02, "EE translation per control step at full speed (m)")
    key_hold_s: float = config_field(0.25, "an axis moves this long after its key's last press (auto-repeat keeps it alive)")
    frame_id: str = config_field("base_link", "frame of the recorded positions")
    key_file: str = config_field("", "sign the jog chunks with this key file ('' = unsigned; needed when the driver requires signed chunks)")


class CalibrateNode(Node):
    """Keyboard -> jog chunks; Enter -> CalibrationRoutine.record(current EE position)."""

    def __init__(self, **node_kwargs):
        super().__init__("calibrate", **node_kwargs)
        self.cfg = declare_config(self, CalibrateConfig)
        self.signer = load_signer(self.cfg.key_file)
        self.routine = CalibrationRoutine(self.cfg.card_size, self.cfg.touch_height, self.cfg.max_z_spread, self.cfg.frame_id)
        self.state = TeleopState(max_translation_m=self.cfg.max_translation_m, max_rotation_rad=0.0, speed=self.cfg.speed)
        self.device = CalibrationKeyboard(hold_s=self.cfg.key_hold_s)
        self.ee: EeState | None = None
        self.step = 0
        self.exit_code = 1
        self._last_line = 0.0
        self.pub = create_publisher(self, ActionChunk, names.ACTION_CHUNK, reliable_qos())
        create_subscription(self, EeState, names.EE_STATE, self._on_ee, reliable_qos())
        self.create_timer(1.0 / self.cfg.rate_hz, self._tick)
        self._say(f"{CALIBRATION_HELP}\n\n{self.routine.prompt()}")

    def _say(self, text: str) -> None:
        print("\n" + text, flush=True)

    def _on_ee(self, msg: EeState) -> None:
        self.ee = msg

    def _position(self) -> np.ndarray:
        if self.ee is None:
            return np.full(3, np.nan)
        p = self.ee.pose.position
        return np.array([p.x, p.y, p.z])

    def _tick(self) -> None:
        now = time.monotonic()
        reading = self.device.read(now)
        for event in self.state.apply(reading.events):
            if event == RECORD_POINT:
                try:
                    self._say(self.routine.record(self._position()))
                except CalibrationError as exc:
                    self._say(f"not recorded: {exc}")
                if self.routine.done:
                    self._finish()
                    return
                self._say(self.routine.prompt())
            elif event == UNDO_POINT:
                self._say(self.routine.undo() + "\n" + self.routine.prompt())
            elif event == QUIT:
                self._say("calibration aborted; nothing saved")
                self.exit_code = 1
                self.context.try_shutdown()
                return
            elif event == HELP:
                self._say(CALIBRATION_HELP)
        motion = np.asarray(reading.motion, dtype=np.float64).copy()
        motion[3:] = 0.0  # position only: the fingertips keep pointing down
        action = self.state.action(motion)
        msg = ActionChunk(trial_id="calibration", step_index=self.step, horizon=1, execute_steps=0,
                          action_dim=EE_DELTA_POSE.dim, action_space=EE_DELTA_POSE.name)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.cfg.frame_id
        msg.data = array.array("f", action.astype(np.float32).tobytes())
        if self.signer is not None:
            sign_message(self.signer, msg)
        self.pub.publish(msg)
        self.step += 1
        if now - self._last_line > 0.5:
            self._last_line = now
            x, y, z = self._position()
            sys.stdout.write(f"\rEE x={x:+.3f} y={y:+.3f} z={z:+.3f} m | {self.state.describe()} | next: slot {self.routine.slot}   ")
            sys.stdout.flush()

    def _finish(self) -> None:
        layout = self.routine.save(self.cfg.output, self.cfg.notes)
        lines = [f"layout saved to {self.cfg.output} ({layout.created}):"]
        lines += [f"  slot {i}: x={s.x:+.3f} y={s.y:+.3f} z={s.z:+.3f} m" for i, s in enumerate(layout.slots)]
        self._say("\n".join(lines))
        self.exit_code = 0
        self.context.try_shutdown()

    def close(self) -> None:
        """Restore the terminal."""
        self.device.close()


def main(args=None) -> int:
    holder = {}

    def factory():
        holder["node"] = CalibrateNode()
        return holder["node"]

    run_node(factory, args, help_text=f"gf-calibrate --ros-args [-p name:=value ...]\n\n{CALIBRATION_HELP}\n\nparameters:\n{config_help(CalibrateConfig)}")
    node = holder.get("node")
    return node.exit_code if node is not None else 1
