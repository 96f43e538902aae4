"""``RealmanArm``: the RM75 over Realman's vendor SDK (PyPI ``robotic-arm``, module ``Robotic_Arm``).

The SDK is ctypes over a bundled C library that speaks JSON over TCP to the controller (default
address 192.168.1.18:8080). Facts this module relies on (checked against robotic-arm 1.1.6):

- ``rm_create_robot_arm(ip, port)`` returns a handle whose ``id`` is -1 when the TCP connection or
  the handshake (a series of queries about the arm) fails; a refused port fails at once, an
  unanswered TCP connect after ~3 s, a silent peer after one receive timeout (``rm_set_timeout``,
  default 500 ms). Create calls are serialised inside the SDK: while one is blocked, the next
  waits. ``connect()`` therefore runs it in a thread, gives up at ``connect_timeout``, and refuses
  to start a second attempt while an abandoned one is still inside the SDK.
- Joint angles are in degrees at the Python API (0.001 deg on the wire); poses are metres and
  radians (micrometres and mrad on the wire), orientation as extrinsic XYZ roll/pitch/yaw.
- ``rm_movep_canfd`` is fire-and-forget (no reply, so it cannot report refusal); high-follow
  mode needs a set-point every <= 10 ms.
- ``rm_set_arm_emergency_stop`` answers -4 without sending on 3rd-generation controllers, and after
  that call every later ``rm_set_arm_stop`` on the handle blocks forever (SDK 1.1.6). So the
  hardware e-stop command is only used on controllers that report generation >= 4 at connect;
  on 3rd-gen controllers ``emergency_stop()`` is ``rm_set_arm_stop`` plus the software latch.
- The gripper API uses a dimensionless 1..1000 opening scale, 1..1000 speed and 50..1000 force.

All SDK calls on one handle are serialised by a lock (the C library matches replies per handle),
blocking waits (connect, joint moves) never hold it, so ``emergency_stop()`` can always get in.
Two handles (two TCP connections) keep queries off the set-point path: the *motion* handle carries
only ``movep_canfd``, stop, e-stop and ``movej``; the *query* handle carries state, gripper, frame,
push-config and error-clearing calls, so a slow or unanswered query (up to the receive timeout)
never delays a set-point.

State comes from the controller's UDP real-time push (``rm_set_realtime_push``, every 5 ms, JSON
``realtime_arm_joint_state`` as documented in Realman's JSON protocol: ``joint_status.joint_position``
in 0.001 deg, ``waypoint.position`` in micrometres, ``waypoint.euler`` in mrad, errors in ``err`` /
``arm_err`` / ``sys_err``). The SDK's own push callback needs its triple-thread mode, whose receive
thread this driver avoids (see ``load_sdk``), so this module listens on its own UDP socket. When no
push arrived for ``push_timeout`` s, ``state()`` falls back to ``rm_get_current_arm_state`` on the
query handle and flags the state ``push_stale``.

At connect the active tool and work frames (``rm_get_current_tool_frame`` /
``rm_get_current_work_frame``) are compared with the configured ones; a mismatch raises
``ArmFrameMismatch`` and nothing streams, since every pose (and so every limit) is in those frames.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .arm import (
    DEFAULT_GRIPPER_MAX_OPENING,
    ArmBackend,
    ArmCommandRefused,
    ArmConnectionError,
    ArmEmergencyStopped,
    ArmError,
    ArmFrameMismatch,
    ArmState,
    ArmTimeoutError,
    check_code,
    describe_controller_error,
    error_for_code,
)
from .kinematics import NUM_JOINTS

log = logging.getLogger(__name__)

REALMAN_DEFAULT_IP = "192.168.1.18"  # factory address of the controller's LAN port (for configs)
REALMAN_DEFAULT_PORT = 8080


class FairLock:
    """A lock granted in the order it was asked for. ``threading.Lock`` is not: a thread that
    releases and asks again at once (the state reader, polling a gripper that answers slowly) can
    win it every time while another (the gripper worker, with a command to send) waits on."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[object] = collections.deque()
        self._held = False

    def __enter__(self) -> FairLock:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._held or self._queue[0] is not ticket:
                self._cond.wait()
            self._queue.popleft()
            self._held = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


_sdk_lock = threading.Lock()
_sdk_module: Any = None
# The SDK connects one arm at a time (a create call blocks the next one); an abandoned attempt
# can stay inside the C library for up to its connect timeout (~3 s) or one receive timeout.
_pending_connect: threading.Thread | None = None


def load_sdk() -> Any:
    """Import the vendor SDK and initialise its C library once per process, in single-thread mode.

    Dual-thread mode (a receive thread, needed only for the SDK's blocking moves, which this
    driver does not use) is not safe here: when the controller closes the link, that thread can
    die, and every later ``rm_create_robot_arm`` in the process then fails its handshake, so the
    driver could never reconnect (robotic-arm 1.1.6: within 3 to 115 drops against the fake
    controller; ``rm_destroy`` + ``rm_init`` does not bring the thread back)."""
    global _sdk_module
    with _sdk_lock:
        if _sdk_module is None:
            try:
                from Robotic_Arm import rm_robot_interface as sdk
            except Exception as exc:  # ImportError, or OSError from loading the bundled .so
                raise ArmError(
                    f"the Realman SDK is not usable ({exc}); install it with `pip install robotic-arm==1.1.6`"
                ) from exc
            sdk.rm_init(sdk.rm_thread_mode_e.RM_SINGLE_MODE_E)
            _sdk_module = sdk
        return _sdk_module


def _delete_quietly(arm: Any, address: str) -> None:
    """Free an SDK handle on a cleanup path, where a failure must not hide the error being raised."""
    try:
        arm.rm_delete_robot_arm()
    except Exception:  # logged; the caller is already reporting the real problem
        log.debug("rm_delete_robot_arm failed for %s", address, exc_info=True)


def wait_for_pending_connect(timeout: float) -> bool:
    """Wait up to ``timeout`` s for an abandoned connection attempt to leave the SDK; True if none is left."""
    with _sdk_lock:
        pending = _pending_connect
    if pending is not None:
        pending.join(timeout)
        return not pending.is_alive()
    return True


class RealmanArm(ArmBackend):
    """The real RM75 over the vendor SDK.

    ``ip`` has no default on purpose (a test must never reach a real address; the factory address
    is ``REALMAN_DEFAULT_IP``). ``connect_timeout`` bounds ``connect()`` end to end; ``preflight``
    first probes the port with a plain TCP connect for a precise "refused" / "no answer" message.
    ``follow``, ``trajectory_mode`` and ``smoothing`` are ``rm_movep_canfd``'s high-follow flag,
    mode (0 pass-through, 1 curve fitting, 2 filtering) and smoothing ratio. The gripper opening in
    metres maps linearly onto the SDK's 1..1000 scale over ``gripper_max_opening``; its state is
    polled at most every ``gripper_poll_period`` s (a missing gripper shows as a state flag).
    """

    def __init__(
        self,
        ip: str,
        port: int = REALMAN_DEFAULT_PORT,
        *,
        connect_timeout: float = 3.0,
        command_timeout_ms: int = 500,  # the SDK's receive timeout; process-wide (rm_set_timeout)
        follow: bool = True,
        trajectory_mode: int = 0,
        smoothing: int = 0,
        gripper_max_opening: float = DEFAULT_GRIPPER_MAX_OPENING,
        gripper_speed: int = 500,
        gripper_poll_period: float = 0.1,
        arrival_tolerance: float = math.radians(0.2),
        sdk_log_level: int = 3,
        preflight: bool = True,
        tool_frame: str | None = None,
        tool_frame_pose=None,
        work_frame: str | None = None,
        frame_tolerance: float = 1e-3,
        realtime_push: bool = False,
        push_port: int = 0,
        push_cycle: int = 1,
        push_timeout: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise ValueError(f"arm ip must be an IP address literal (the SDK does not resolve names), got {ip!r}") from exc
        if not (0 < int(port) < 65536) or connect_timeout <= 0 or command_timeout_ms <= 0:
            raise ValueError("need a valid port, connect_timeout > 0 and command_timeout_ms > 0")
        if trajectory_mode not in (0, 1, 2):
            raise ValueError("trajectory_mode: 0 pass-through, 1 curve fitting, 2 filtering")
        self.ip, self.port = ip, int(port)
        self.connect_timeout = float(connect_timeout)
        self.command_timeout_ms = int(command_timeout_ms)
        self.follow = bool(follow)
        self.trajectory_mode = int(trajectory_mode)
        self.smoothing = int(smoothing)
        self.gripper_max_opening = float(gripper_max_opening)
        self.gripper_speed = int(min(1000, max(1, gripper_speed)))
        self.gripper_poll_period = float(gripper_poll_period)
        self.arrival_tolerance = float(arrival_tolerance)
        self.sdk_log_level = int(sdk_log_level)
        self.preflight = preflight
        self.tool_frame = tool_frame or None
        self.tool_frame_pose = None if tool_frame_pose is None else [float(v) for v in tool_frame_pose]
        if self.tool_frame_pose is not None and len(self.tool_frame_pose) != 6:
            raise ValueError("tool_frame_pose needs 6 values (x, y, z in m, rx, ry, rz in rad)")
        self.work_frame = work_frame or None
        self.frame_tolerance = float(frame_tolerance)
        self.realtime_push = bool(realtime_push)
        self.push_port = int(push_port)
        self.push_cycle = max(1, int(push_cycle))
        self.push_timeout = float(push_timeout)
        self._clock = clock
        self._io = threading.Lock()  # one SDK call at a time on this handle
        self._state_lock = threading.Lock()  # velocity estimate and gripper cache
        self._arm: Any = None
        self._query_arm: Any = None  # second handle: queries never wait behind (or delay) set-points
        self._qio = FairLock()  # queries and gripper commands take turns: a slow reply delays, never starves
        self._push_socket: socket.socket | None = None
        self._push_thread: threading.Thread | None = None
        self._push: tuple[float, np.ndarray, np.ndarray, tuple[int, ...], np.ndarray] | None = None
        self.pushes_received = 0
        self._estop = False
        self._hw_estop_supported = False  # set at connect from the controller generation
        self._prev_q: np.ndarray | None = None
        self._prev_t = 0.0
        self._gripper_opening = self.gripper_max_opening  # last known (or commanded) opening
        self._gripper_flag: str | None = None
        self._gripper_polled_at = -math.inf

    # -- connection ---------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """'ip:port' of the controller."""
        return f"{self.ip}:{self.port}"

    @property
    def is_connected(self) -> bool:
        """True while an SDK handle is open (a dropped link shows up as ArmConnectionError on calls)."""
        return self._arm is not None

    def _preflight(self, deadline: float) -> None:
        """Plain TCP probe first: tells 'refused' from 'unreachable' and bounds the wait."""
        try:
            probe = socket.create_connection((self.ip, self.port), timeout=max(0.05, deadline - self._clock()))
        except ConnectionRefusedError as exc:
            raise ArmConnectionError(
                f"cannot connect to the Realman controller at {self.address}: connection refused "
                f"(nothing listens there; check the IP and port, default {REALMAN_DEFAULT_PORT})"
            ) from exc
        except TimeoutError as exc:
            raise ArmConnectionError(
                f"cannot connect to the Realman controller at {self.address}: no answer within "
                f"{self.connect_timeout:.1f} s (check power, cable and that this PC is on the arm's subnet)"
            ) from exc
        except OSError as exc:
            raise ArmConnectionError(f"cannot connect to the Realman controller at {self.address}: {exc}") from exc
        probe.close()

    def connect(self) -> None:
        """Connect within ``connect_timeout`` or raise ``ArmConnectionError`` (never hangs longer)."""
        if self._arm is not None:
            return
        sdk = load_sdk()
        start = self._clock()
        deadline = start + self.connect_timeout
        if self.preflight:
            self._preflight(deadline)
        global _pending_connect
        with _sdk_lock:
            pending = _pending_connect
        if pending is not None and pending.is_alive():
            pending.join(max(0.0, deadline - self._clock()))
            if pending.is_alive():
                raise ArmConnectionError(
                    f"cannot connect to {self.address} yet: an earlier connection attempt is still blocked inside "
                    f"the Realman SDK (it connects one arm at a time); retry in a few seconds"
                )
        sdk.rm_set_timeout(self.command_timeout_ms)

        outcome: dict[str, Any] = {}
        done = threading.Event()
        abandoned = threading.Event()

        def worker() -> None:
            # The C call can block for several receive timeouts; it runs here so connect() can give up.
            try:
                for key in ("arm", "query"):
                    arm = sdk.RoboticArm()
                    handle = arm.rm_create_robot_arm(self.ip, self.port, level=self.sdk_log_level)
                    outcome[key], outcome[f"{key}_id"] = arm, int(handle.id)
                    if int(handle.id) == -1:
                        break
            except Exception as exc:  # noqa: BLE001 - handed to connect(), which raises it as ArmConnectionError
                outcome["error"] = exc
            done.set()
            if abandoned.is_set():
                for key in ("arm", "query"):
                    if key in outcome:
                        _delete_quietly(outcome[key], self.address)

        thread = threading.Thread(target=worker, name=f"realman-connect-{self.address}", daemon=True)
        with _sdk_lock:
            _pending_connect = thread
        thread.start()
        if not done.wait(max(0.0, deadline - self._clock())):
            abandoned.set()
            why = (
                "the peer accepted TCP but did not answer the SDK's handshake: is it a Realman controller?"
                if self.preflight
                else "no TCP connection or no handshake reply: check power, cable, IP and port"
            )
            raise ArmConnectionError(
                f"cannot connect to the Realman controller at {self.address}: the SDK did not finish "
                f"within {self.connect_timeout:.1f} s ({why})"
            )
        if "error" in outcome or -1 in (outcome.get("arm_id"), outcome.get("query_id")):
            for key in ("arm", "query"):
                if key in outcome:
                    _delete_quietly(outcome[key], self.address)
        if "error" in outcome:
            raise ArmConnectionError(f"the Realman SDK failed while connecting to {self.address}: {outcome['error']}")
        if -1 in (outcome.get("arm_id"), outcome.get("query_id")):
            raise ArmConnectionError(
                f"cannot connect to the Realman controller at {self.address}: the SDK returned handle -1 "
                f"(TCP connection failed, or the controller did not complete the handshake; "
                f"check the address, that no other program holds the arm, and the firmware/SDK versions)"
            )
        arm, query = outcome["arm"], outcome["query"]
        dof = int(getattr(arm, "arm_dof", 0))
        if dof != NUM_JOINTS:
            _delete_quietly(arm, self.address)
            _delete_quietly(query, self.address)
            raise ArmError(f"the controller at {self.address} reports a {dof}-joint arm; this driver drives the 7-joint RM75")
        with self._io, self._qio:
            self._arm, self._query_arm = arm, query
            self._hw_estop_supported = int(getattr(arm, "robot_controller_version", 0) or 0) >= 4
            self._prev_q = None
            self._push = None
            self._gripper_polled_at = -math.inf
        try:
            self._check_frames()
            if self.realtime_push:
                self._start_push()
        except BaseException:
            self.close()
            raise

    # -- frames and the UDP state push ---------------------------------------------------------

    def active_frames(self) -> dict[str, dict]:
        """The controller's active tool and work frames: {"tool"|"work": {"name", "pose" (m, rad)}}."""
        frames = {}
        for kind, command in (("tool", "get_current_tool_frame"), ("work", "get_current_work_frame")):
            code, frame = self._query(command, f"rm_{command}")
            check_code(command, code, detail=self.address)
            frames[kind] = {"name": str(frame.get("name", "")), "pose": [float(v) for v in frame.get("pose", [0.0] * 6)]}
        return frames

    def _check_frames(self) -> None:
        if self.tool_frame is None and self.work_frame is None and self.tool_frame_pose is None:
            return
        frames = self.active_frames()
        problems = []
        for kind, expected in (("tool", self.tool_frame), ("work", self.work_frame)):
            if expected is not None and frames[kind]["name"] != expected:
                problems.append(f"active {kind} frame is {frames[kind]['name']!r}, configured {expected!r}")
        if self.tool_frame_pose is not None:
            got = np.asarray(frames["tool"]["pose"])
            if np.max(np.abs(got - np.asarray(self.tool_frame_pose))) > self.frame_tolerance:
                problems.append(f"tool frame pose is {np.round(got, 4).tolist()}, configured {self.tool_frame_pose}")
        if problems:
            raise ArmFrameMismatch(
                f"frame mismatch on the controller at {self.address}: {'; '.join(problems)}. Poses, the workspace and "
                f"the floor would be in another frame: select the configured frames on the teach pendant (or fix the "
                f"configuration); nothing is streamed until they match", command="get_current_tool_frame")

    def _start_push(self) -> None:
        """Listen for the controller's UDP state push on the local address that routes to it."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect((self.ip, self.port))  # UDP connect only picks a route: nothing is sent
            local_ip = probe.getsockname()[0]
        finally:
            probe.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((local_ip, self.push_port))
        sock.settimeout(0.2)
        self._push_socket = sock
        port = sock.getsockname()[1]
        sdk = load_sdk()
        config = sdk.rm_realtime_push_config_t(self.push_cycle, True, port, -1, local_ip, sdk.rm_udp_custom_config_t())
        code = self._query("set_realtime_push", "rm_set_realtime_push", config)
        check_code("set_realtime_push", code, detail=self.address)
        thread = threading.Thread(target=self._receive_push, args=(sock,), name=f"realman-push-{self.address}", daemon=True)
        self._push_thread = thread
        thread.start()

    def _receive_push(self, sock: socket.socket) -> None:
        while self._push_socket is sock:
            try:
                data, sender = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if sender[0] != self.ip:
                continue  # only the controller's reports
            parsed = parse_push(data)
            if parsed is None:
                continue
            q, pose, errors = parsed
            now = self._clock()
            with self._state_lock:
                previous = self._push
                if previous is not None and now - previous[0] > 1e-4:
                    qd = (q - previous[1]) / (now - previous[0])
                else:
                    qd = np.zeros(NUM_JOINTS)
                self._push = (now, q, pose, errors, qd)
                self.pushes_received += 1

    @property
    def push_active(self) -> bool:
        """Whether a push report arrived within ``push_timeout``."""
        push = self._push
        return push is not None and self._clock() - push[0] <= self.push_timeout

    def close(self) -> None:
        """Delete the SDK handles (closes their sockets) and the push listener. Idempotent."""
        with self._io, self._qio:
            arm, self._arm = self._arm, None
            query, self._query_arm = self._query_arm, None
            sock, self._push_socket = self._push_socket, None
            self._push = None
        if sock is not None:
            sock.close()
        for handle in (arm, query):
            if handle is not None:
                _delete_quietly(handle, self.address)

    # -- helpers -------------------------------------------------------------------------------

    def _require_arm(self, command: str) -> Any:
        arm = self._arm
        if arm is None:
            raise ArmConnectionError(f"{command}: not connected to the Realman controller at {self.address}", command=command)
        return arm

    def _call(self, command: str, method: str, *args) -> Any:
        """Run one SDK method under the I/O lock; returns its raw result."""
        with self._io:
            arm = self._require_arm(command)
            return getattr(arm, method)(*args)

    def _query(self, command: str, method: str, *args) -> Any:
        """Run one SDK method on the query handle (never on the set-point path)."""
        with self._qio:
            arm = self._query_arm
            if arm is None:
                raise ArmConnectionError(f"{command}: not connected to the Realman controller at {self.address}",
                                         command=command)
            return getattr(arm, method)(*args)

    def _checked(self, command: str, method: str, *args) -> None:
        check_code(command, self._call(command, method, *args), detail=self.address)

    def _query_checked(self, command: str, method: str, *args) -> None:
        check_code(command, self._query(command, method, *args), detail=self.address)

    def _require_motion_allowed(self, command: str) -> None:
        self._require_arm(command)
        if self._estop:
            raise ArmEmergencyStopped(
                f"{command} refused: emergency stop is latched (call clear_emergency())", command=command
            )

    # -- ArmBackend ----------------------------------------------------------------------------

    def state(self) -> ArmState:
        """Joints, EE pose and errors from the latest UDP push (or, when none is fresh,
        ``rm_get_current_arm_state`` on the query handle); gripper polled at most every
        ``gripper_poll_period``; joint velocities by finite difference between samples."""
        push = self._push
        now = self._clock()
        flags = []
        if push is not None and now - push[0] <= self.push_timeout:
            stamp, q, pose, errors, qd = push
        else:
            code, data = self._query("get_current_arm_state", "rm_get_current_arm_state")
            check_code("get_current_arm_state", code, detail=self.address)
            stamp = self._clock()
            q = np.radians(np.asarray(data["joint"][:NUM_JOINTS], dtype=np.float64))
            if q.shape != (NUM_JOINTS,):
                raise ArmError(f"get_current_arm_state returned {q.size} joints, expected {NUM_JOINTS}")
            pose = np.asarray(data["pose"], dtype=np.float64)
            errors = _nonzero_codes(data.get("err", {}))
            with self._state_lock:
                if self._prev_q is not None and stamp - self._prev_t > 1e-4:
                    qd = (q - self._prev_q) / (stamp - self._prev_t)
                else:
                    qd = np.zeros(NUM_JOINTS)
                self._prev_q, self._prev_t = q, stamp
            if self.realtime_push and self._push_socket is not None:
                flags.append("push_stale")
        self._poll_gripper(now)
        with self._state_lock:
            gripper_opening, gripper_flag = self._gripper_opening, self._gripper_flag
        if self._estop:
            flags.insert(0, "emergency_stop")
        if gripper_flag:
            flags.append(gripper_flag)
        return ArmState(
            joint_positions=q,
            joint_velocities=qd,
            ee_xyz=pose[:3].copy(),
            ee_rpy=pose[3:6].copy(),
            gripper_opening=float(gripper_opening),
            error_codes=errors,
            flags=tuple(flags),
            emergency_stopped=self._estop,
            timestamp=stamp,
        )

    def _poll_gripper(self, now: float) -> None:
        # The query runs outside the state lock: the push listener takes that lock for every
        # report, and a slow gripper reply must not hold reports back (they would be stamped late,
        # and an arm that tracks well would look as if it lagged).
        with self._state_lock:
            if now - self._gripper_polled_at < self.gripper_poll_period:
                return
            self._gripper_polled_at = now  # this caller polls; others use the cache meanwhile
        code, gripper = self._query("get_gripper_state", "rm_get_gripper_state")
        error = error_for_code("get_gripper_state", code, self.address)
        if isinstance(error, ArmConnectionError):
            raise error  # the command link is gone, although the state push may still arrive
        with self._state_lock:
            if code == 0:
                self._gripper_opening = float(np.clip(gripper["actpos"], 0, 1000)) / 1000.0 * self.gripper_max_opening
                self._gripper_flag = None
            else:
                # Keep the last commanded opening, and say so in the state instead of failing it.
                self._gripper_flag = f"gripper_state_unavailable(code {code})"

    def stream_ee_target(self, xyz, rpy) -> None:
        """One ``rm_movep_canfd`` set-point (base frame, m and rad, extrinsic XYZ)."""
        xyz, rpy = self._check_pose(xyz, rpy)
        self._require_motion_allowed("movep_canfd")
        push = self._push
        if push is not None and push[3]:
            # A set-point would clear the controller's error and move on: the driver must decide.
            raise ArmCommandRefused(f"movep_canfd withheld: the controller reports {describe_controller_error(push[3][0])}",
                                    command="movep_canfd")
        pose = [float(v) for v in (*xyz, *rpy)]
        self._checked("movep_canfd", "rm_movep_canfd", pose, self.follow, self.trajectory_mode, self.smoothing)

    def move_joints(self, q, speed: float = 0.2, timeout: float = 30.0) -> None:
        """``rm_movej`` (sent non-blocking), then wait for arrival by polling the state."""
        q = self._check_joint_target(q)
        speed = self._check_fraction("speed", speed)
        self._require_motion_allowed("movej")
        v = int(min(100, max(1, round(speed * 100))))
        self._checked("movej", "rm_movej", [float(a) for a in np.degrees(q)], v, 0, 0, 0)
        deadline = self._clock() + timeout
        while True:
            state = self.state()
            if self._estop:
                raise ArmEmergencyStopped("movej interrupted by emergency stop", command="movej")
            settled = np.max(np.abs(state.joint_velocities)) < math.radians(0.5)
            if np.max(np.abs(state.joint_positions - q)) <= self.arrival_tolerance and settled:
                return
            if self._clock() > deadline:
                self.stop()
                raise ArmTimeoutError(
                    f"movej did not arrive within {timeout:.1f} s (max joint error "
                    f"{math.degrees(np.max(np.abs(state.joint_positions - q))):.2f} deg); arm stopped",
                    command="movej",
                )
            time.sleep(0.02)

    def gripper_open(self) -> None:
        """``rm_set_gripper_release`` (waits for the controller's acknowledgement, not the motion)."""
        self._require_motion_allowed("set_gripper_release")
        self._query_checked("set_gripper_release", "rm_set_gripper_release", self.gripper_speed, False, 1)
        self._gripper_opening_commanded(self.gripper_max_opening)

    def gripper_close(self, force: float = 0.5) -> None:
        """``rm_set_gripper_pick``: force-controlled close, ``force`` in (0, 1] -> 50..1000."""
        force = self._check_fraction("force", force)
        self._require_motion_allowed("set_gripper_pick")
        level = round(50 + force * 950)
        self._query_checked("set_gripper_pick", "rm_set_gripper_pick", self.gripper_speed, level, False, 1)
        self._gripper_opening_commanded(0.0)

    def gripper_position(self, opening: float) -> None:
        """``rm_set_gripper_position`` with ``opening`` m mapped onto the 1..1000 scale."""
        opening = self._check_opening(opening)
        self._require_motion_allowed("set_gripper_position")
        position = int(min(1000, max(1, round(opening / self.gripper_max_opening * 1000))))
        self._query_checked("set_gripper_position", "rm_set_gripper_position", position, False, 1)
        self._gripper_opening_commanded(opening)

    def _gripper_opening_commanded(self, opening: float) -> None:
        with self._state_lock:
            if self._gripper_flag:  # no gripper feedback: report what was commanded
                self._gripper_opening = opening

    def stop(self) -> None:
        """``rm_set_arm_stop``: fastest trajectory stop; the stream/trajectory cannot resume."""
        self._checked("set_arm_stop", "rm_set_arm_stop")

    @property
    def hardware_estop_supported(self) -> bool:
        """Whether ``emergency_stop()`` also puts the controller in its e-stop state (generation >= 4)."""
        return self._hw_estop_supported

    def emergency_stop(self) -> None:
        """Latch first, then ``rm_set_arm_stop`` and, on 4th-gen controllers, ``rm_set_arm_emergency_stop``.

        The latch holds even if the calls fail (the error is raised after both were tried).
        """
        self._estop = True
        if self._arm is None:
            raise ArmConnectionError(
                f"emergency stop latched, but not connected to {self.address}: use the hardware e-stop",
                command="set_arm_stop",
            )
        errors: list[ArmError] = []
        error = error_for_code("set_arm_stop", self._call("set_arm_stop", "rm_set_arm_stop"), self.address)
        if error is not None:
            errors.append(error)
        if self._hw_estop_supported:
            error = error_for_code(
                "set_arm_emergency_stop",
                self._call("set_arm_emergency_stop", "rm_set_arm_emergency_stop", True),
                self.address,
            )
            if error is not None:
                errors.append(error)
        if errors:
            raise errors[0]

    def clear_emergency(self) -> None:
        """Release the controller's e-stop state (where supported) and the software latch."""
        if self._hw_estop_supported:
            code = self._call("set_arm_emergency_stop", "rm_set_arm_emergency_stop", False)
            check_code("set_arm_emergency_stop", code, detail=self.address)
        else:
            self._require_arm("clear_emergency")
        self._estop = False

    def clear_controller_error(self) -> None:
        """``rm_clear_system_err``: clear the controller's system error (then read back by the caller)."""
        self._query_checked("clear_system_err", "rm_clear_system_err")


def _nonzero_codes(field: Any) -> tuple[int, ...]:
    """Non-zero error codes from an ``err`` field: an int, a list, or the SDK's {"err": [...]} dict."""
    if isinstance(field, dict):
        field = field.get("err", [])
    values = field if isinstance(field, (list, tuple)) else [field]
    codes = []
    for value in values:
        try:
            code = int(value)
        except (TypeError, ValueError):
            continue
        if code != 0:
            codes.append(code)
    return tuple(codes)


def parse_push(data: bytes) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None:
    """One ``realtime_arm_joint_state`` UDP report -> (joints rad, pose (6,) m/rad, non-zero error codes),
    or None when it is not a complete arm-state report. Errors are read from ``err`` (gen 4),
    ``arm_err`` and ``sys_err`` (gen 3), whichever the controller sends."""
    try:
        report = json.loads(data)
        if report.get("state") != "realtime_arm_joint_state":
            return None
        joints = report["joint_status"]["joint_position"][:NUM_JOINTS]
        waypoint = report["waypoint"]
        q = np.radians(np.asarray(joints, dtype=np.float64) / 1000.0)
        pose = np.concatenate([np.asarray(waypoint["position"], dtype=np.float64) / 1e6,
                               np.asarray(waypoint["euler"], dtype=np.float64) / 1e3])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if q.shape != (NUM_JOINTS,) or pose.shape != (6,) or not (np.all(np.isfinite(q)) and np.all(np.isfinite(pose))):
        return None
    errors: list[int] = []
    for key in ("err", "arm_err", "sys_err"):
        for code in _nonzero_codes(report.get(key, 0)):
            if code not in errors:
                errors.append(code)
    return q, pose, tuple(errors)
