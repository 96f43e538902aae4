"""teleop node: an input device -> horizon-1 action chunks on /gf/action_chunk at the control rate.

Modes:

* ``lockstep`` (simulation): the simulated arm waits for each chunk, so the node answers every
  /gf/episode_status of the running trial with exactly one chunk carrying that trial id and
  step index, paced at ``rate_hz`` so the operator sees real time.
* ``stream`` (real arm): one chunk every 1/``rate_hz`` s, stamped with the current trial (if
  any) and a running step counter.

No input means zero motion (the arm holds its pose; the gripper keeps its state). Recorder keys
(start / stop as success or failure / discard) call the recorder's ``~/control`` service.
The keyboard needs the node's terminal: run ``gf-teleop`` in its own terminal (over SSH is fine).
What the camera sees is shown in a window, or rewritten as a PNG when there is no display
(``preview``; gf_teleop.preview).
"""

from __future__ import annotations

import array
import sys
import time
from dataclasses import dataclass

from rclpy.node import Node
from sensor_msgs.msg import Image

from gf_bringup import names
from gf_bringup.images import msg_to_image
from gf_bringup.rosutil import (
    config_field,
    config_help,
    create_publisher,
    create_subscription,
    declare_config,
    latched_qos,
    reliable_qos,
    run_node,
    sensor_qos,
    status_qos,
)
from gf_bringup.signing import load_signer, sign_message
from gf_eval.action_space import EE_DELTA_POSE
from gf_interfaces.msg import ActionChunk, EpisodeStatus, Trial
from gf_teleop.devices import (
    HELP,
    QUIT,
    RECORD_DISCARD,
    RECORD_FAILURE,
    RECORD_START,
    RECORD_SUCCESS,
    TeleopState,
    open_device,
)
from gf_teleop.preview import FramePreview, default_preview_file

RECORDER_COMMANDS = {RECORD_START: "start", RECORD_SUCCESS: "success", RECORD_FAILURE: "failure", RECORD_DISCARD: "discard"}


@dataclass
class TeleopNodeConfig:
    device: str = config_field("keyboard", "input device: keyboard (this terminal), spacemouse, gamepad")
    device_path: str = config_field("", "gamepad: /dev/input/eventN ('' = the first gamepad found)")
    mode: str = config_field("lockstep", "lockstep: one chunk per episode status (simulation); stream: chunks at rate_hz (real arm)")
    rate_hz: float = config_field(20.0, "control rate (chunks per second)")
    speed: float = config_field(0.5, "initial speed scale (0.1 .. 1.0; +/- keys change it)")
    max_translation_m: float = config_field(0.025, "end-effector translation per control step at full speed (m)")
    max_rotation_rad: float = config_field(0.1, "end-effector rotation per control step at full speed (rad)")
    gripper_closed: float = config_field(-0.2, "gripper command when closed (-1 .. 1; 1 = open)")
    key_hold_s: float = config_field(0.25, "keyboard: an axis moves this long after its key's last press (auto-repeat keeps it alive)")
    recorder: str = config_field("recorder", "node name of the episode recorder whose ~/control the record keys call (relative: same namespace)")
    frame_id: str = config_field("base_link", "frame of the action deltas")
    key_file: str = config_field("", "sign every action chunk with this key file (gf-keys create; '' = unsigned), "
                                     "for a driver that requires signed chunks")
    status_line: bool = config_field(True, "print a live status line to the terminal")
    preview: str = config_field("auto", "camera preview: auto (a window with a display, else a PNG file), window, file, off")
    preview_file: str = config_field("", "PNG the file preview rewrites ('' = gf-teleop-preview-<uid>.png in the temp directory)")
    preview_hz: float = config_field(4.0, "camera preview refreshes per second")


class TeleopNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("teleop", **node_kwargs)
        self.cfg = declare_config(self, TeleopNodeConfig)
        if self.cfg.mode not in ("lockstep", "stream"):
            raise ValueError(f"mode must be lockstep or stream, got {self.cfg.mode!r}")
        kwargs = {}
        if self.cfg.device == "keyboard":
            kwargs["hold_s"] = self.cfg.key_hold_s
        elif self.cfg.device == "gamepad" and self.cfg.device_path:
            kwargs["path"] = self.cfg.device_path
        self.device = open_device(self.cfg.device, **kwargs)
        self.signer = load_signer(self.cfg.key_file)
        self.state = TeleopState(max_translation_m=self.cfg.max_translation_m, max_rotation_rad=self.cfg.max_rotation_rad,
                                 speed=self.cfg.speed, gripper_closed_value=self.cfg.gripper_closed)
        self.trial_id = ""
        self.pending: EpisodeStatus | None = None
        self.acted: tuple[str, int, int] | None = None  # (trial, step, rejections) answered last
        self.step_counter = 0
        self.published = 0
        self.last_motion_norm = 0.0
        self.recording = "?"
        self._last_line = 0.0
        self.pub = create_publisher(self, ActionChunk, names.ACTION_CHUNK, reliable_qos())
        create_subscription(self, Trial, names.TRIAL, self._on_trial, latched_qos(1))
        create_subscription(self, EpisodeStatus, names.EPISODE_STATUS, self._on_status, status_qos())
        from gf_interfaces.srv import Command

        self.recorder_client = self.create_client(Command, f"{self.cfg.recorder.rstrip('/')}/control")
        self.create_timer(1.0 / self.cfg.rate_hz, self._tick)
        self.preview = FramePreview(self.cfg.preview, self.cfg.preview_file or default_preview_file(), self.cfg.preview_hz)
        if self.preview.mode != "off":
            create_subscription(self, Image, names.IMAGE, self._on_image, sensor_qos())
        self._say(f"teleop ready: {self.device.name}, {self.cfg.mode} mode at {self.cfg.rate_hz:g} Hz\n{self.device.help_text}"
                  + (f"\n{self.preview.note}" if self.preview.note else ""))

    # --- inputs -------------------------------------------------------------------------------

    def _on_trial(self, msg: Trial) -> None:
        if msg.trial_id != self.trial_id:
            self.trial_id = msg.trial_id
            self.step_counter = 0
            self._say(f"trial {msg.trial_id}: {msg.instruction}")

    def _on_status(self, msg: EpisodeStatus) -> None:
        if msg.done:
            if self.pending is not None and self.pending.trial_id == msg.trial_id:
                self.pending = None
            if self.acted != (msg.trial_id, -1, -1):
                self.acted = (msg.trial_id, -1, -1)
                self._say(f"episode {msg.trial_id} ended: {msg.reason} after {msg.step} steps")
            return
        # A rejected chunk comes back as a status of the same step with one more rejection:
        # answer that too, or the lock-step sim would wait for us forever.
        if self.acted != (msg.trial_id, int(msg.step), int(msg.chunks_rejected)):
            self.pending = msg

    def _on_image(self, msg: Image) -> None:
        now = time.monotonic()
        if self.preview.due(now):
            self.preview.update(msg_to_image(msg), now)

    # --- the control loop -----------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        reading = self.device.read(now)
        for event in self.state.apply(reading.events):
            if event == QUIT:
                self._say("quit")
                self.context.try_shutdown()
                return
            if event == HELP:
                self._say(self.device.help_text)
            elif event in RECORDER_COMMANDS:
                self._recorder(RECORDER_COMMANDS[event])
        action = self.state.action(reading.motion)
        self.last_motion_norm = float(abs(action[:6]).max())
        if self.cfg.mode == "lockstep":
            status = self.pending
            if status is None:
                self._status_line(now)
                return
            self.pending = None
            self.acted = (status.trial_id, int(status.step), int(status.chunks_rejected))
            self._publish(action, status.trial_id, int(status.step))
        else:
            self._publish(action, self.trial_id, self.step_counter)
            self.step_counter += 1
        self._status_line(now)

    def _publish(self, action, trial_id: str, step: int) -> None:
        msg = ActionChunk()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.cfg.frame_id
        msg.trial_id = trial_id
        msg.step_index = step
        msg.horizon = 1
        msg.execute_steps = 1
        msg.action_dim = EE_DELTA_POSE.dim
        msg.action_space = EE_DELTA_POSE.name
        msg.data = array.array("f", action.tobytes())
        if self.signer is not None:
            sign_message(self.signer, msg)
        self.pub.publish(msg)
        self.published += 1

    def _recorder(self, command: str) -> None:
        from gf_interfaces.srv import Command

        if not self.recorder_client.service_is_ready():
            self._say(f"no recorder at {self.cfg.recorder} (start gf-recorder or a graph with one)")
            return
        request = Command.Request()
        request.command = command
        future = self.recorder_client.call_async(request)

        def done(f) -> None:
            ok = f.result() is not None and f.result().success
            self.recording = {"start": "recording", "discard": "idle"}.get(command, "idle") if ok else self.recording
            self._say(f"recorder {command}: {'ok' if ok else 'refused'}")

        future.add_done_callback(done)

    # --- terminal ---------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        # The keyboard puts the terminal in cbreak mode; "\r\n" keeps lines aligned either way.
        sys.stdout.write("\r\x1b[K" + text.replace("\n", "\r\n") + "\r\n")
        sys.stdout.flush()

    def _status_line(self, now: float) -> None:
        if not self.cfg.status_line or now - self._last_line < 0.25 or not sys.stdout.isatty():
            return
        self._last_line = now
        sys.stdout.write(f"\r\x1b[K[teleop] {self.state.describe()}  motion {self.last_motion_norm:.2f}  "
                         f"trial {self.trial_id or '-'}  chunks {self.published}  recorder {self.recording}")
        sys.stdout.flush()

    def close(self) -> None:
        self.device.close()
        self.preview.close()


def main(args=None) -> int:
    return run_node(TeleopNode, args, help_text=f"gf-teleop --ros-args [-p name:=value ...]\n\n{__doc__}\nparameters:\n{config_help(TeleopNodeConfig)}")
