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
"""

from __future__ import annotations

import ipaddress
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
    ArmConnectionError,
    ArmEmergencyStopped,
    ArmError,
    ArmState,
    ArmTimeoutError,
    check_code,
    error_for_code,
)
from .kinematics import NUM_JOINTS

log = logging.getLogger(__name__)

REALMAN_DEFAULT_IP = "192.168.1.18"  # factory address of the controller's LAN port (for configs)
REALMAN_DEFAULT_PORT = 8080

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
        self._clock = clock
        self._io = threading.Lock()  # one SDK call at a time on this handle
        self._state_lock = threading.Lock()  # velocity estimate and gripper cache
        self._arm: Any = None
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
                arm = sdk.RoboticArm()
                handle = arm.rm_create_robot_arm(self.ip, self.port, level=self.sdk_log_level)
                outcome["arm"], outcome["id"] = arm, int(handle.id)
            except Exception as exc:  # noqa: BLE001 - handed to connect(), which raises it as ArmConnectionError
                outcome["error"] = exc
            done.set()
            if abandoned.is_set() and "arm" in outcome:
                _delete_quietly(outcome["arm"], self.address)

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
        if "error" in outcome:
            raise ArmConnectionError(f"the Realman SDK failed while connecting to {self.address}: {outcome['error']}")
        arm = outcome["arm"]
        if outcome["id"] == -1:
            _delete_quietly(arm, self.address)
            raise ArmConnectionError(
                f"cannot connect to the Realman controller at {self.address}: the SDK returned handle -1 "
                f"(TCP connection failed, or the controller did not complete the handshake; "
                f"check the address, that no other program holds the arm, and the firmware/SDK versions)"
            )
        dof = int(getattr(arm, "arm_dof", 0))
        if dof != NUM_JOINTS:
            arm.rm_delete_robot_arm()
            raise ArmError(f"the controller at {self.address} reports a {dof}-joint arm; this driver drives the 7-joint RM75")
        with self._io:
            self._arm = arm
            self._hw_estop_supported = int(getattr(arm, "robot_controller_version", 0) or 0) >= 4
            self._prev_q = None
            self._gripper_polled_at = -math.inf

    def close(self) -> None:
        """Delete the SDK handle (closes its socket). Idempotent."""
        with self._io:
            arm, self._arm = self._arm, None
        if arm is not None:
            _delete_quietly(arm, self.address)

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

    def _checked(self, command: str, method: str, *args) -> None:
        check_code(command, self._call(command, method, *args), detail=self.address)

    def _require_motion_allowed(self, command: str) -> None:
        self._require_arm(command)
        if self._estop:
            raise ArmEmergencyStopped(
                f"{command} refused: emergency stop is latched (call clear_emergency())", command=command
            )

    # -- ArmBackend ----------------------------------------------------------------------------

    def state(self) -> ArmState:
        """Joints, EE pose and errors from ``rm_get_current_arm_state``; gripper polled at most
        every ``gripper_poll_period``; joint velocities by finite difference between calls."""
        code, data = self._call("get_current_arm_state", "rm_get_current_arm_state")
        check_code("get_current_arm_state", code, detail=self.address)
        now = self._clock()
        q = np.radians(np.asarray(data["joint"][:NUM_JOINTS], dtype=np.float64))
        if q.shape != (NUM_JOINTS,):
            raise ArmError(f"get_current_arm_state returned {q.size} joints, expected {NUM_JOINTS}")
        pose = np.asarray(data["pose"], dtype=np.float64)
        errors = tuple(code for code in (int(e) for e in data.get("err", {}).get("err", [])) if code != 0)
        with self._state_lock:
            if self._prev_q is not None and now - self._prev_t > 1e-4:
                qd = (q - self._prev_q) / (now - self._prev_t)
            else:
                qd = np.zeros(NUM_JOINTS)
            self._prev_q, self._prev_t = q, now
            self._poll_gripper(now)
            gripper_opening, gripper_flag = self._gripper_opening, self._gripper_flag
        flags = []
        if self._estop:
            flags.append("emergency_stop")
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
            timestamp=now,
        )

    def _poll_gripper(self, now: float) -> None:
        if now - self._gripper_polled_at < self.gripper_poll_period:
            return
        self._gripper_polled_at = now
        code, gripper = self._call("get_gripper_state", "rm_get_gripper_state")
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
        self._checked("set_gripper_release", "rm_set_gripper_release", self.gripper_speed, False, 1)
        self._gripper_opening_commanded(self.gripper_max_opening)

    def gripper_close(self, force: float = 0.5) -> None:
        """``rm_set_gripper_pick``: force-controlled close, ``force`` in (0, 1] -> 50..1000."""
        force = self._check_fraction("force", force)
        self._require_motion_allowed("set_gripper_pick")
        level = round(50 + force * 950)
        self._checked("set_gripper_pick", "rm_set_gripper_pick", self.gripper_speed, level, False, 1)
        self._gripper_opening_commanded(0.0)

    def gripper_position(self, opening: float) -> None:
        """``rm_set_gripper_position`` with ``opening`` m mapped onto the 1..1000 scale."""
        opening = self._check_opening(opening)
        self._require_motion_allowed("set_gripper_position")
        position = int(min(1000, max(1, round(opening / self.gripper_max_opening * 1000))))
        self._checked("set_gripper_position", "rm_set_gripper_position", position, False, 1)
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
