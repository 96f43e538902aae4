"""A fake Realman controller on 127.0.0.1 for tests, demos and ``gf-bench arm``: enough of the
JSON-over-TCP protocol for the real vendor SDK (robotic-arm 1.1.6) to connect, read the state and
send commands, and a simulated arm behind it, so ``RealmanArm`` (and a driver built on it) can be
exercised end to end without an arm.

Replies were worked out from Realman's published JSON protocol and the SDK's parser messages; the
SDK's connect handshake queries software info, current trajectory, UDP push config, work/tool
frames, install pose, joint limits/speeds/accelerations and DH data. Binds to loopback only.

The simulated arm (``moving=True``, the default) follows ``movep_canfd`` set-points after
``latency`` seconds, at most ``max_linear_speed`` m/s and ``max_angular_speed`` rad/s, stepped every
5 ms; ``movej`` moves the joints at its speed fraction of ``joint_speed``; ``set_arm_stop`` holds.
Joints follow the pose by the RM75 inverse kinematics. Like the real controller, a system error
stops the arm and a new motion command clears it (so does ``clear_system_err``).

Faults to inject: ``inject_error(code)`` (e.g. 0x100D collision, 0x1007 joint over-speed),
``drop_push`` (the UDP state push stops), ``reply_delay[command] = seconds`` (slow replies).
UDP push (``set_realtime_push``) goes only to a loopback address; the cycle is in 5 ms units.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from .kinematics import RM75_HOME, matrix_to_rpy, rm75_kinematics, rotation_error, rpy_to_matrix

_CUSTOM_PUSH = {
    "joint_speed": False, "lift_state": False, "expand_state": False, "hand_state": False,
    "arm_current_status": False, "aloha_state": False, "plus_base": False, "plus_state": False,
}
_VERSION = {"build_time": "2024", "version": "1.0"}
PHYSICS_PERIOD = 0.005  # s; the controller's own cycle (and the push cycle unit)
_MOTION_COMMANDS = frozenset({"movep_canfd", "movej", "movel", "movej_p"})


class FakeRealmanController:
    """Serves one or more SDK connections (each on its own thread). ``joints_deg``/``pose`` are
    what the arm reports (and, with ``moving``, where the simulated arm is); ``overrides`` replace
    (dict) or suppress (None) the reply to a command; ``received`` logs every command in arrival
    order and ``received_at`` its ``time.monotonic()``. See the module docstring for the motion
    model and the faults that can be injected."""

    def __init__(
        self,
        *,
        respond: bool = True,
        generation: int = 3,
        moving: bool = False,
        latency: float = 0.01,
        max_linear_speed: float = 1.0,
        max_angular_speed: float = 3.0,
        joint_speed_deg: float = 180.0,
    ):
        self.respond = respond
        self.generation = generation  # controller generation the SDK is told (3 or 4)
        self.moving = moving
        self.latency = float(latency)
        self.max_linear_speed = float(max_linear_speed)
        self.max_angular_speed = float(max_angular_speed)
        self.joint_speed_deg = float(joint_speed_deg)
        self.joints_deg = [0.0, 20.0, 0.0, 90.0, 0.0, 70.0, 0.0]
        self.pose = [0.285, 0.0, 0.265, 3.1416, 0.0, 3.1416]
        self.errors = [0]
        self.arm_stop_ok = True
        self.gripper_actpos = 1000  # 0..1000 opening scale
        self.gripper_ok = True
        self.tool_name, self.tool_pose = "Arm_Tip", [0.0] * 6  # m and rad
        self.work_name, self.work_pose = "Base", [0.0] * 6
        self.overrides: dict[str, Any] = {}
        self.reply_delay: dict[str, float] = {}  # command -> seconds before its reply
        self.drop_push = False
        self.push_config: dict[str, Any] = {"cycle": 1, "enable": False, "port": 8089, "ip": "127.0.0.1"}
        self.pushes_sent = 0
        self.received: list[dict] = []
        self.received_at: list[float] = []
        self._kin = rm75_kinematics()
        self._pending: list[tuple[float, list[float]]] = []  # (arrival time, pose) of set-points
        self._pose_target: list[float] | None = None
        self._joint_target: list[float] | None = None
        self._joint_speed_fraction = 0.2
        self._clients: list[socket.socket] = []
        self._lock = threading.RLock()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        self._push_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._physics, name="fake-controller-physics", daemon=True).start()

    # -- inspection and fault injection ---------------------------------------------------------

    def commands(self) -> list[str]:
        """Names of all commands received so far, in order."""
        with self._lock:
            return [m.get("command", "") for m in self.received]

    def last(self, command: str) -> dict | None:
        """The most recent message for ``command`` (None if never received)."""
        with self._lock:
            for message in reversed(self.received):
                if message.get("command") == command:
                    return message
        return None

    def messages(self, command: str) -> list[dict]:
        """Every message received for ``command``, oldest first."""
        with self._lock:
            return [m for m in self.received if m.get("command") == command]

    def arrivals(self, command: str) -> list[float]:
        """``time.monotonic()`` of every arrival of ``command``."""
        with self._lock:
            return [t for m, t in zip(self.received, self.received_at) if m.get("command") == command]

    def inject_error(self, code: int) -> None:
        """Raise a system error (e.g. 0x100D collision): the arm stops where it is."""
        with self._lock:
            self.errors = [int(code)]
            self._hold()

    def _hold(self) -> None:
        self._pending.clear()
        self._pose_target = None
        self._joint_target = None

    # -- the simulated arm ----------------------------------------------------------------------

    def _physics(self) -> None:
        next_tick = time.monotonic()
        last_push = -math.inf
        while not self._closed.is_set():
            now = time.monotonic()
            with self._lock:
                if self.moving:
                    self._step(now, PHYSICS_PERIOD)
                cycle = max(1, int(self.push_config.get("cycle", 1))) * PHYSICS_PERIOD
                push_due = self.push_config.get("enable") and now - last_push >= cycle - 1e-4
                message = self._push_message() if push_due and not self.drop_push else None
                target = (str(self.push_config.get("ip", "")), int(self.push_config.get("port", 0)))
            if push_due:
                last_push = now
            if message is not None and target[0].startswith("127."):  # loopback only, never a LAN address
                try:
                    self._push_socket.sendto(message, target)
                    self.pushes_sent += 1
                except OSError:
                    pass
            next_tick += PHYSICS_PERIOD
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._closed.wait(delay)
            else:
                next_tick = time.monotonic()

    def _step(self, now: float, dt: float) -> None:
        if any(self.errors):
            self._hold()
            return
        while self._pending and self._pending[0][0] + self.latency <= now:
            self._pose_target = self._pending.pop(0)[1]
        if self._joint_target is not None:
            q = np.asarray(self.joints_deg, dtype=np.float64)
            goal = np.asarray(self._joint_target, dtype=np.float64)
            step = self.joint_speed_deg * self._joint_speed_fraction * dt
            q = q + np.clip(goal - q, -step, step)
            self.joints_deg = [float(v) for v in q]
            p, rot = self._kin.forward(np.radians(q))
            self.pose = [*map(float, p), *map(float, matrix_to_rpy(rot))]
            if np.allclose(q, goal):
                self._joint_target = None
        elif self._pose_target is not None:
            p = np.asarray(self.pose[:3], dtype=np.float64)
            target = np.asarray(self._pose_target, dtype=np.float64)
            dp = target[:3] - p
            distance = float(np.linalg.norm(dp))
            if distance > self.max_linear_speed * dt:
                dp *= self.max_linear_speed * dt / distance
            rot = rpy_to_matrix(self.pose[3:])
            turn = rotation_error(rpy_to_matrix(target[3:]), rot)
            angle = float(np.linalg.norm(turn))
            if angle > self.max_angular_speed * dt:
                turn *= self.max_angular_speed * dt / angle
            rot = Rotation.from_rotvec(turn).as_matrix() @ rot
            p = p + dp
            self.pose = [*map(float, p), *map(float, matrix_to_rpy(rot))]
            result = self._kin.solve_ik(p, rot, np.radians(self.joints_deg), max_iterations=3, posture=RM75_HOME)
            self.joints_deg = [float(v) for v in np.degrees(result.q)]

    def _motion_command(self, message: dict) -> None:
        """Like the real controller: a new motion command clears a system error."""
        cmd = message.get("command")
        self.errors = [0]
        if cmd == "movep_canfd":
            pose = message.get("pose", [])
            if len(pose) == 6:
                self._joint_target = None
                values = [v / 1e6 for v in pose[:3]] + [v / 1e3 for v in pose[3:]]
                self._pending.append((time.monotonic(), values))
        elif cmd == "movej":
            joint = message.get("joint", [])
            if len(joint) == 7:
                self._pending.clear()
                self._pose_target = None
                self._joint_target = [v / 1000.0 for v in joint]
                self._joint_speed_fraction = max(0.01, min(1.0, float(message.get("v", 20)) / 100.0))

    def _push_message(self) -> bytes:
        """One UDP state report in the documented ``realtime_arm_joint_state`` format."""
        code = next((int(e) for e in self.errors if e), 0)
        status = "idle"
        if code:
            status = "stop"
        elif self._pose_target is not None or self._pending:
            status = "move_through_pose"
        elif self._joint_target is not None:
            status = "move_J"
        report = {
            "state": "realtime_arm_joint_state",
            "arm_current_status": status,
            "arm_err": 0,
            "sys_err": code,
            "joint_status": {
                "joint_position": [round(a * 1000) for a in self.joints_deg],
                "joint_err_code": [0] * 7,
                "joint_en_flag": [1] * 7,
            },
            "waypoint": {
                "position": [round(v * 1e6) for v in self.pose[:3]],
                "euler": [round(v * 1e3) for v in self.pose[3:]],
            },
        }
        return json.dumps(report).encode()

    # -- the protocol ---------------------------------------------------------------------------

    @staticmethod
    def _wire_pose(pose) -> list[int]:
        return [round(v * 1e6) for v in pose[:3]] + [round(v * 1e3) for v in pose[3:]]

    def _reply(self, message: dict) -> dict | None:
        cmd = message.get("command")
        if cmd in _MOTION_COMMANDS:
            self._motion_command(message)
        elif cmd == "set_arm_stop" and self.arm_stop_ok:
            self._hold()
        elif cmd == "clear_system_err":
            self.errors = [0]
        elif cmd == "set_realtime_push":
            self.push_config = {k: message[k] for k in ("cycle", "enable", "port", "ip") if k in message}
        if cmd in self.overrides:
            return self.overrides[cmd]
        mdeg = [round(a * 1000) for a in self.joints_deg]
        limits = [178000, 130000, 178000, 135000, 178000, 128000, 360000]
        table: dict[str, dict] = {
            "get_arm_software_info": {
                "state": "arm_software_info", "Product_version": "RM75-B",
                "robot_controller_version": f"{self.generation}.0",
                "algorithm_info": {"version": "1.0"}, "ctrl_info": _VERSION, "dynamic_info": {"model_version": "1.0"},
                "plan_info": _VERSION, "communication_info": _VERSION, "program_info": _VERSION,
            },
            "get_arm_current_trajectory": {"state": "arm_current_trajectory", "trajectory_type": "none", "data": mdeg},
            "get_realtime_push": {
                "command": "get_realtime_push", "cycle": 1, "enable": False, "port": 8089, "ip": "127.0.0.1",
                "force_coordinate": 0, "custom": _CUSTOM_PUSH, **self.push_config,
            },
            "set_realtime_push": {"command": "set_realtime_push", "state": True},
            "get_current_work_frame": {
                "state": "current_work_frame", "frame_name": self.work_name, "pose": self._wire_pose(self.work_pose),
                "payload": 0,
            },
            "get_current_tool_frame": {
                "state": "current_tool_frame", "tool_name": self.tool_name, "pose": self._wire_pose(self.tool_pose),
                "payload": 0, "center_of_mass": [0, 0, 0], "position": [0, 0, 0],
            },
            "get_install_pose": {"state": "install_pose", "pose": [0, 0, 0]},
            "get_joint_min_pos": {"state": "joint_min_pos", "min_pos": [-v for v in limits]},
            "get_joint_max_pos": {"state": "joint_max_pos", "max_pos": limits},
            "get_joint_max_speed": {"state": "joint_max_speed", "joint_speed": [180000] * 2 + [225000] * 5},
            "get_joint_max_acc": {"state": "joint_max_acc", "joint_acc": [600000] * 7},
            "get_DH_data": {"command": "get_DH_data", **{f"joint_{i}": [0, 0, 0, 0] for i in range(1, 8)}},
            "get_current_arm_state": {
                "state": "current_arm_state",
                "arm_state": {
                    "joint": mdeg,
                    # wire units: micrometres and milliradians
                    "pose": self._wire_pose(self.pose),
                    "err": list(self.errors),
                },
            },
            "clear_system_err": {"command": "clear_system_err", "clear_state": True},
            "set_arm_stop": {"command": "set_arm_stop", "arm_stop": self.arm_stop_ok},
            # gen-4 reply as the SDK parses it ("set_state"; one published page says "emergency_stop")
            "set_arm_emergency_stop": {"command": "set_arm_emergency_stop", "set_state": True},
            "movej": {"command": "movej", "receive_state": True},
            "get_gripper_state": {
                "command": "get_gripper_state", "enable": True, "status": 1, "error": 0, "mode": 3,
                "current_force": 0, "temperature": 30, "actpos": self.gripper_actpos,
            },
            "set_gripper_position": {"command": "set_gripper", "state": self.gripper_ok},
            "set_gripper_release": {"command": "set_gripper", "state": self.gripper_ok},
            "set_gripper_pick": {"command": "set_gripper", "state": self.gripper_ok},
        }
        return table.get(cmd)

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        while not self._closed.is_set():
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                with self._lock:
                    self.received.append(message)
                    self.received_at.append(time.monotonic())
                    reply = self._reply(message) if self.respond else None
                    delay = self.reply_delay.get(message.get("command"), 0.0)
                if reply is not None:
                    if delay > 0:
                        time.sleep(delay)  # only this connection waits, as with a busy controller
                    try:
                        conn.sendall(json.dumps(reply).encode() + b"\r\n")
                    except OSError:
                        return

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def drop_clients(self) -> None:
        """Close every client connection (the controller 'goes away'); keep listening."""
        with self._lock:
            clients, self._clients = self._clients, []
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        """Stop serving and close every socket."""
        self._closed.set()
        self.drop_clients()
        self._server.close()
        self._push_socket.close()
