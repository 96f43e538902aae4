"""A fake Realman controller on 127.0.0.1 for tests and demos: just enough of the JSON-over-TCP
protocol for the real vendor SDK (robotic-arm 1.1.6) to connect, read the state and send commands,
so ``RealmanArm`` (and a driver built on it) can be exercised end to end without an arm.

Replies were worked out from Realman's published JSON protocol and the SDK's parser messages; the
SDK's connect handshake queries software info, current trajectory, UDP push config, work/tool
frames, install pose, joint limits/speeds/accelerations and DH data. Binds to loopback only.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

_CUSTOM_PUSH = {
    "joint_speed": False, "lift_state": False, "expand_state": False, "hand_state": False,
    "arm_current_status": False, "aloha_state": False, "plus_base": False, "plus_state": False,
}
_VERSION = {"build_time": "2024", "version": "1.0"}


class FakeRealmanController:
    """Serves one or more SDK connections. ``joints_deg``/``pose`` set what the arm reports;
    ``overrides`` replace (dict) or suppress (None) the reply to a command; ``received`` logs
    every command in arrival order."""

    def __init__(self, *, respond: bool = True, generation: int = 3):
        self.respond = respond
        self.generation = generation  # controller generation the SDK is told (3 or 4)
        self.joints_deg = [0.0, 20.0, 0.0, 90.0, 0.0, 70.0, 0.0]
        self.pose = [0.285, 0.0, 0.265, 3.1416, 0.0, 3.1416]
        self.errors = [0]
        self.arm_stop_ok = True
        self.gripper_actpos = 1000  # 0..1000 opening scale
        self.gripper_ok = True
        self.overrides: dict[str, Any] = {}
        self.received: list[dict] = []
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

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

    def _reply(self, message: dict) -> dict | None:
        cmd = message.get("command")
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
                "command": "get_realtime_push", "cycle": 5, "enable": False, "port": 8089, "ip": "127.0.0.1",
                "force_coordinate": 0, "custom": _CUSTOM_PUSH,
            },
            "get_current_work_frame": {"state": "current_work_frame", "frame_name": "Base", "pose": [0] * 6, "payload": 0},
            "get_current_tool_frame": {
                "state": "current_tool_frame", "tool_name": "Arm_Tip", "pose": [0] * 6, "payload": 0,
                "center_of_mass": [0, 0, 0], "position": [0, 0, 0],
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
                    "pose": [round(v * 1e6) for v in self.pose[:3]] + [round(v * 1e3) for v in self.pose[3:]],
                    "err": list(self.errors),
                },
            },
            "set_arm_stop": {"command": "set_arm_stop", "arm_stop": self.arm_stop_ok},
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
                reply = self._reply(message) if self.respond else None
                if reply is not None:
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
