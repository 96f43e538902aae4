"""The arm backend interface shared by the real RM75 (``RealmanArm``) and its stand-in (``SimulatedArm``).

Units at this interface are SI everywhere: joints in rad and rad/s, positions in m, orientation as
roll/pitch/yaw in rad (extrinsic XYZ, the convention of Realman's controller), gripper opening in m,
in the arm's base frame. Backends convert to vendor units (degrees, micrometres, 1..1000 gripper
scale) at their own boundary.

Every failure is an ``ArmError`` with a message a person can act on. The vendor SDK's numeric return
codes are translated by ``check_code`` (0 ok, 1 refused, -1 send failed, -2 no reply, -3 unparsable
reply, -4/-5 timeouts, with per-command meanings where the SDK documents them); nothing is dropped.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .kinematics import NUM_JOINTS, RM75_JOINT_LOWER, RM75_JOINT_UPPER

# Realman's own ROS 2 driver names the joints this way (and publishes radians).
JOINT_NAMES: tuple[str, ...] = tuple(f"joint{i}" for i in range(1, NUM_JOINTS + 1))
DEFAULT_GRIPPER_MAX_OPENING = 0.08  # m; the sim's proprio divides the opening by this value


# --------------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------------


class ArmError(RuntimeError):
    """Any arm failure. ``command`` and ``code`` name the SDK call and its return code when known."""

    def __init__(self, message: str, *, command: str | None = None, code: int | None = None):
        super().__init__(message)
        self.command = command
        self.code = code


class ArmConnectionError(ArmError):
    """No (or no longer a) working link to the controller: connect failed, send/receive failed."""


class ArmCommandRefused(ArmError):
    """The controller answered "false": bad parameters or the arm is in a state that forbids it."""


class ArmEmergencyStopped(ArmCommandRefused):
    """A motion command while the emergency stop is latched; call ``clear_emergency()`` first."""


class ArmTimeoutError(ArmError):
    """The controller or device did not finish in time (SDK -4/-5, or a motion that did not arrive)."""


class ArmProtocolError(ArmError):
    """The controller's reply could not be parsed (SDK -3): version mismatch or corrupted data."""


class ArmFrameMismatch(ArmError):
    """The controller's active tool or work frame is not the configured one: poses (and so every
    workspace and floor check) would be in another frame, so the driver refuses to stream."""


class ArmUnsupportedError(ArmError):
    """The controller does not implement this command (e.g. emergency stop on 3rd-gen controllers)."""


# --------------------------------------------------------------------------------------------
# SDK return codes -> messages and exceptions
# --------------------------------------------------------------------------------------------

# Generic meaning of the Robotic_Arm SDK's return codes (its docstrings; docs/architecture.md, "Facts about the platform").
SDK_CODE_MEANINGS: dict[int, str] = {
    0: "success",
    1: "the controller returned false: parameters rejected or the arm's state does not allow it",
    -1: "sending to the controller failed: the connection is down",
    -2: "no reply from the controller: receive failed or it timed out",
    -3: "the controller's reply could not be parsed (incomplete or unexpected format)",
    -4: "timed out",
    -5: "timed out waiting for the reply (single-thread mode)",
}

# Where one SDK call gives a code its own meaning, it wins over the generic table.
_COMMAND_CODE_MEANINGS: dict[tuple[str, int], str] = {
    ("movej", -4): "arrival check failed: the device that reported arrival is not the arm's joints",
    ("set_arm_emergency_stop", -4): "this controller generation (3rd) does not support the command",
    ("set_gripper_release", -4): "the gripper did not reach its position in time",
    ("set_gripper_pick", -4): "the gripper did not finish closing in time",
    ("set_gripper_pick_on", -4): "the gripper did not finish closing in time",
    ("set_gripper_position", -4): "the gripper did not reach its position in time",
}

_CODE_EXCEPTIONS: dict[int, type[ArmError]] = {
    1: ArmCommandRefused,
    -1: ArmConnectionError,
    -2: ArmConnectionError,
    -3: ArmProtocolError,
    -4: ArmTimeoutError,
    -5: ArmTimeoutError,
}
_COMMAND_CODE_EXCEPTIONS: dict[tuple[str, int], type[ArmError]] = {
    ("movej", -4): ArmError,
    ("set_arm_emergency_stop", -4): ArmUnsupportedError,
}


def describe_code(command: str, code: int) -> str:
    """Plain-language meaning of an SDK return code for ``command`` (e.g. "movep_canfd")."""
    meaning = _COMMAND_CODE_MEANINGS.get((command, code)) or SDK_CODE_MEANINGS.get(code)
    return meaning if meaning is not None else "unknown return code (not in the SDK's documented table)"


def error_for_code(command: str, code: int, detail: str = "") -> ArmError | None:
    """The exception an SDK return code stands for, or None for success (0)."""
    code = int(code)
    if code == 0:
        return None
    meaning = describe_code(command, code)
    if code == 1:
        message = f"controller refused {command} (code 1): {meaning}"
    else:
        message = f"{command} failed (code {code}): {meaning}"
    if detail:
        message += f" [{detail}]"
    cls = _COMMAND_CODE_EXCEPTIONS.get((command, code)) or _CODE_EXCEPTIONS.get(code, ArmError)
    return cls(message, command=command, code=code)


def check_code(command: str, code: int, detail: str = "") -> None:
    """Raise the matching ``ArmError`` unless ``code`` is 0."""
    error = error_for_code(command, code, detail)
    if error is not None:
        raise error


# Controller system error codes reported in the arm state (Realman's published table).
CONTROLLER_ERRORS: dict[int, str] = {
    0x0000: "normal",
    0x1001: "abnormal joint communication",
    0x1002: "target angle out of limit",
    0x1003: "point unreachable (singularity)",
    0x1004: "real-time kernel communication error",
    0x1005: "joint communication bus error",
    0x1006: "planning layer kernel error",
    0x1007: "joint overspeed",
    0x1008: "end interface board disconnected",
    0x1009: "speed out of limit",
    0x100A: "acceleration out of limit",
    0x100B: "joint brake release failed",
    0x100C: "overspeed during drag teaching",
    0x100D: "robotic arm collision",
    0x100E: "null work frame",
    0x100F: "null tool frame",
    0x1010: "joint disabling error",
    0x1011: "circular planning error",
    0x1012: "self-collision error",
    0x1013: "electronic fence collision error",
    0x5003: "controller over-temperature",
    0x5005: "controller overcurrent",
    0x5006: "controller undercurrent",
    0x5007: "controller overvoltage",
    0x5008: "controller undervoltage",
    0x5009: "real-time layer communication error",
}


def describe_controller_error(code: int) -> str:
    """'0x1003 point unreachable (singularity)' for a controller system error code."""
    return f"0x{int(code):04X} {CONTROLLER_ERRORS.get(int(code), 'unknown controller error')}"


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmState:
    """One snapshot of the arm, in SI units and the base frame.

    ``error_codes`` are controller system error codes (non-zero only; see ``CONTROLLER_ERRORS``);
    ``flags`` are short backend notes such as "emergency_stop" or "setpoint_ignored".
    ``timestamp`` is the backend's clock (time.monotonic for real time, sim time otherwise).
    """

    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    ee_xyz: np.ndarray
    ee_rpy: np.ndarray
    gripper_opening: float
    error_codes: tuple[int, ...] = ()
    flags: tuple[str, ...] = ()
    emergency_stopped: bool = False
    timestamp: float = 0.0
    joint_names: tuple[str, ...] = field(default=JOINT_NAMES)

    @property
    def has_error(self) -> bool:
        """True when the controller reports any system error."""
        return any(code != 0 for code in self.error_codes)

    def describe_errors(self) -> list[str]:
        """Human-readable controller errors."""
        return [describe_controller_error(code) for code in self.error_codes if code != 0]

    def proprio(self, gripper_max_opening: float = DEFAULT_GRIPPER_MAX_OPENING) -> np.ndarray:
        """The benchmark's 7-D proprio: EE xyz, roll/pitch/yaw, gripper opening / max opening."""
        out = np.empty(7, dtype=np.float32)
        out[:3] = self.ee_xyz
        out[3:6] = self.ee_rpy
        out[6] = self.gripper_opening / gripper_max_opening
        return out


# --------------------------------------------------------------------------------------------
# Backend interface
# --------------------------------------------------------------------------------------------


if TYPE_CHECKING:  # only for annotations (lazy), so Python 3.10 (ROS 2 Humble) still imports this
    from typing import Self


class ArmBackend(abc.ABC):
    """What the driver needs from an arm. Implementations must be safe to call from two threads
    (a streaming loop and a state publisher). Motion commands raise ``ArmEmergencyStopped`` while an
    emergency stop is latched; ``stop()`` and ``emergency_stop()`` always work when connected."""

    joint_lower: np.ndarray = np.asarray(RM75_JOINT_LOWER)
    joint_upper: np.ndarray = np.asarray(RM75_JOINT_UPPER)
    gripper_max_opening: float = DEFAULT_GRIPPER_MAX_OPENING

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the link to the arm; raise ``ArmConnectionError`` (within the configured timeout)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the link. Safe to call twice or when never connected."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether commands can currently be sent."""

    @abc.abstractmethod
    def state(self) -> ArmState:
        """A fresh snapshot of joints, EE pose, gripper and errors."""

    @abc.abstractmethod
    def stream_ee_target(self, xyz, rpy) -> None:
        """Send one streaming EE set-point (base frame, m / rad), like the SDK's ``rm_movep_canfd``.

        Set-points are meant to come every <= 10 ms and lie close together; the controller
        follows them without its own trajectory planning.
        """

    @abc.abstractmethod
    def move_joints(self, q, speed: float = 0.2, timeout: float = 30.0) -> None:
        """Planned joint move (rad) at ``speed`` in (0, 1] of the maximum; block until it arrives."""

    @abc.abstractmethod
    def gripper_open(self) -> None:
        """Open the gripper fully."""

    @abc.abstractmethod
    def gripper_close(self, force: float = 0.5) -> None:
        """Close the gripper, stopping at ``force`` in (0, 1] of its maximum grip force."""

    @abc.abstractmethod
    def gripper_position(self, opening: float) -> None:
        """Move the gripper to ``opening`` m (0 closed .. ``gripper_max_opening``)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop arm motion now (the current trajectory/stream is dropped; the arm holds)."""

    @abc.abstractmethod
    def emergency_stop(self) -> None:
        """Stop now and latch: every motion command is refused until ``clear_emergency()``."""

    @abc.abstractmethod
    def clear_emergency(self) -> None:
        """Release the emergency-stop latch (the arm does not move by itself afterwards)."""

    def clear_controller_error(self) -> None:
        """Clear the controller's system error (an operator decision: the arm stopped for a reason)."""
        raise ArmUnsupportedError(f"{type(self).__name__} cannot clear controller errors", command="clear_system_err")

    # -- shared argument checks (same rule for every backend) --------------------------------

    def _check_joint_target(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (NUM_JOINTS,):
            raise ValueError(f"need {NUM_JOINTS} joint positions, got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("joint target contains NaN or infinity")
        outside = np.flatnonzero((q < self.joint_lower) | (q > self.joint_upper))
        if outside.size:
            i = int(outside[0])
            raise ValueError(
                f"{JOINT_NAMES[i]} target {math.degrees(q[i]):.1f} deg is outside its limits "
                f"[{math.degrees(self.joint_lower[i]):.1f}, {math.degrees(self.joint_upper[i]):.1f}] deg"
            )
        return q

    @staticmethod
    def _check_pose(xyz, rpy) -> tuple[np.ndarray, np.ndarray]:
        xyz = np.asarray(xyz, dtype=np.float64)
        rpy = np.asarray(rpy, dtype=np.float64)
        if xyz.shape != (3,) or rpy.shape != (3,):
            raise ValueError(f"EE target needs xyz (3,) and rpy (3,), got {xyz.shape} and {rpy.shape}")
        if not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(rpy))):
            raise ValueError("EE target contains NaN or infinity")
        return xyz, rpy

    @staticmethod
    def _check_fraction(name: str, value: float) -> float:
        value = float(value)
        if not (0.0 < value <= 1.0):
            raise ValueError(f"{name} must be in (0, 1], got {value}")
        return value

    def _check_opening(self, opening: float) -> float:
        opening = float(opening)
        if not (0.0 <= opening <= self.gripper_max_opening + 1e-9) or not math.isfinite(opening):
            raise ValueError(f"gripper opening {opening} m outside [0, {self.gripper_max_opening}] m")
        return min(opening, self.gripper_max_opening)

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
