"""``SimulatedArm``: a kinematic RM75 stand-in for tests and the driver's dry-run mode.

What it models (see ``kinematics`` for the numbers): the RM75's 7-joint chain, its joint position
and velocity limits, a controller that follows streamed EE set-points by inverse kinematics
(damped least squares, warm-started from the previous solution, null-space pull to the home
posture), a command latency, planned joint moves for homing, and a gripper that opens 0..0.08 m at
a finite speed. Like Realman's controller in ``movep_canfd`` mode it ignores a set-point whose IK
fails or whose joint solution jumps too far from the current joints (and flags it in the state)
instead of planning a long move. There are no dynamics, contacts or collisions.

Time: with ``realtime=True`` a background thread advances the simulation at ``rate_hz`` against
``time.monotonic``; with ``realtime=False`` nothing moves until the caller calls ``advance(dt)``,
which makes tests deterministic (blocking calls such as ``move_joints`` then advance the
simulation themselves).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from .arm import (
    DEFAULT_GRIPPER_MAX_OPENING,
    ArmBackend,
    ArmConnectionError,
    ArmEmergencyStopped,
    ArmState,
    ArmTimeoutError,
)
from .kinematics import RM75_HOME, matrix_to_rpy, rm75_kinematics, rpy_to_matrix

# Controller error the real arm raises for unreachable targets; the sim reports the same code.
ERR_UNREACHABLE = 0x1003


class SimulatedArm(ArmBackend):
    """A thread-safe kinematic RM75. See the module docstring for what is (not) modelled."""

    def __init__(
        self,
        *,
        realtime: bool = True,
        rate_hz: float = 500.0,
        latency_s: float = 0.005,
        initial_joints=RM75_HOME,
        tool_offset=(0.0, 0.0, 0.0),
        joint_lower=None,
        joint_upper=None,
        joint_max_velocity=None,
        velocity_scale: float = 1.0,
        gripper_max_opening: float = DEFAULT_GRIPPER_MAX_OPENING,
        gripper_speed: float = 0.1,
        initial_gripper_opening: float | None = None,
        max_joint_jump: float = 0.35,
        ik_position_tolerance: float = 5e-5,
        ik_rotation_tolerance: float = 5e-4,
        clock: Callable[[], float] = time.monotonic,
    ):
        if rate_hz <= 0 or latency_s < 0 or gripper_speed <= 0 or not (0 < velocity_scale <= 1):
            raise ValueError("rate_hz and gripper_speed must be > 0, latency_s >= 0, velocity_scale in (0, 1]")
        self.kin = rm75_kinematics(tool_offset, joint_lower, joint_upper, joint_max_velocity)
        self.joint_lower = self.kin.lower
        self.joint_upper = self.kin.upper
        self.max_velocity = self.kin.max_velocity * velocity_scale
        self.realtime = realtime
        self.dt = 1.0 / rate_hz
        self.latency_s = float(latency_s)
        self.gripper_max_opening = float(gripper_max_opening)
        self.gripper_speed = float(gripper_speed)
        self.max_joint_jump = float(max_joint_jump)
        self._ik_tol = (ik_position_tolerance, ik_rotation_tolerance)
        self._clock = clock
        self._home = np.asarray(RM75_HOME, dtype=np.float64)

        q0 = np.asarray(initial_joints, dtype=np.float64)
        if q0.shape != (7,) or not self.kin.within_limits(q0):
            raise ValueError("initial_joints must be 7 values inside the joint limits")
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._q = q0.copy()
        self._qd = np.zeros(7)
        self._q_goal = q0.copy()  # where the joints are heading
        self._goal_speed = 1.0  # fraction of max velocity for the current goal
        self._gripper = self.gripper_max_opening if initial_gripper_opening is None else float(initial_gripper_opening)
        self._gripper_goal = self._gripper
        self._pending: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
        self._t = 0.0  # simulation time, s
        self._t0 = 0.0  # clock() at sim time zero (real-time mode)
        self._connected = False
        self._estop = False
        self._flags: set[str] = set()
        self._errors: set[int] = set()
        self.setpoints_received = 0
        self.setpoints_ignored = 0
        self._thread: threading.Thread | None = None
        self._stop_thread = threading.Event()

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Start the (simulated) link; in real-time mode also start the stepping thread."""
        with self._lock:
            if self._connected:
                return
            self._connected = True
            if self.realtime and self._thread is None:
                self._t0 = self._clock() - self._t
                self._stop_thread.clear()
                self._thread = threading.Thread(target=self._run, name="simulated-arm", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the stepping thread and drop the link (state is kept for a later connect)."""
        with self._lock:
            self._connected = False
            thread, self._thread = self._thread, None
            self._stop_thread.set()
            self._arrived.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    @property
    def is_connected(self) -> bool:
        """True between ``connect()`` and ``close()``/``simulate_disconnect()``."""
        return self._connected

    def simulate_disconnect(self) -> None:
        """Make every following call fail as if the cable were pulled (until ``connect()``)."""
        self.close()

    def _require_connection(self) -> None:
        if not self._connected:
            raise ArmConnectionError("simulated arm is not connected (call connect() first)")

    def _require_motion_allowed(self, command: str) -> None:
        self._require_connection()
        if self._estop:
            raise ArmEmergencyStopped(
                f"{command} refused: emergency stop is latched (call clear_emergency())", command=command
            )

    # -- time ----------------------------------------------------------------------------------

    @property
    def sim_time(self) -> float:
        """Seconds of simulated time since construction."""
        return self._t

    def _now(self) -> float:
        """Time used to stamp commands: wall clock in real-time mode, sim time otherwise."""
        return self._clock() - self._t0 if self.realtime else self._t

    def advance(self, duration: float) -> None:
        """Advance the simulation by ``duration`` s in steps of at most 1 / rate_hz (manual mode)."""
        if self.realtime:
            raise RuntimeError("advance() is for realtime=False; a background thread steps this arm")
        with self._lock:
            self._advance_locked(duration)

    def _advance_locked(self, duration: float) -> None:
        remaining = float(duration)
        while remaining > 1e-12:
            h = min(self.dt, remaining)
            self._step(h)
            remaining -= h

    def _run(self) -> None:
        next_tick = self._clock()
        while not self._stop_thread.is_set():
            with self._lock:
                target_t = self._clock() - self._t0
                # Catch up in fixed steps; if the thread was starved, do not try to replay seconds.
                if target_t - self._t > 0.1:
                    self._t = target_t - 0.1
                while self._t + self.dt <= target_t:
                    self._step(self.dt)
            next_tick += self.dt
            delay = next_tick - self._clock()
            if delay > 0:
                self._stop_thread.wait(delay)
            else:
                next_tick = self._clock()

    # -- the simulation step -------------------------------------------------------------------

    def _step(self, h: float) -> None:
        self._t += h
        # Deliver set-points whose latency has elapsed; each one is solved like the controller
        # would, so ignored ones are visible in the counters even if a newer one follows.
        while self._pending and self._pending[0][0] + self.latency_s <= self._t + 1e-12:
            _, xyz, R = self._pending.popleft()
            self._accept_setpoint(xyz, R)
        # Joints move towards the goal along a straight joint-space line at <= speed * vmax.
        delta = self._q_goal - self._q
        limit = self.max_velocity * self._goal_speed * h
        ratio = float(np.max(np.abs(delta) / limit)) if np.any(delta) else 0.0
        if ratio > 1.0:
            q_new = np.clip(self._q + delta / ratio, self.joint_lower, self.joint_upper)
        else:
            q_new = self._q_goal.copy()  # exact arrival (goals are always inside the limits)
        self._qd = (q_new - self._q) / h
        self._q = q_new
        if not np.any(self._q_goal - self._q):
            self._arrived.notify_all()
        # Gripper moves at a finite speed.
        g_delta = self._gripper_goal - self._gripper
        g_step = self.gripper_speed * h
        self._gripper += float(np.clip(g_delta, -g_step, g_step))

    def _accept_setpoint(self, xyz: np.ndarray, R: np.ndarray) -> None:
        result = self.kin.solve_ik(
            xyz,
            R,
            self._q_goal,
            position_tolerance=self._ik_tol[0],
            rotation_tolerance=self._ik_tol[1],
            posture=self._home,
        )
        jump = float(np.max(np.abs(result.q - self._q)))
        if not result.converged or jump > self.max_joint_jump:
            self.setpoints_ignored += 1
            self._flags.add("setpoint_ignored")
            if not result.converged:
                self._errors.add(ERR_UNREACHABLE)
            return
        self._flags.discard("setpoint_ignored")
        self._errors.discard(ERR_UNREACHABLE)
        self._q_goal = result.q
        self._goal_speed = 1.0

    # -- ArmBackend ----------------------------------------------------------------------------

    def state(self) -> ArmState:
        """Snapshot of the simulated arm (FK of the current joints)."""
        with self._lock:
            self._require_connection()
            q = self._q.copy()
            p, R = self.kin.forward(q)
            flags = set(self._flags)
            if self._estop:
                flags.add("emergency_stop")
            return ArmState(
                joint_positions=q,
                joint_velocities=self._qd.copy(),
                ee_xyz=p,
                ee_rpy=matrix_to_rpy(R),
                gripper_opening=float(self._gripper),
                error_codes=tuple(sorted(self._errors)),
                flags=tuple(sorted(flags)),
                emergency_stopped=self._estop,
                timestamp=self._clock() if self.realtime else self._t,
            )

    def stream_ee_target(self, xyz, rpy) -> None:
        """Queue one set-point; it takes effect ``latency_s`` later (newer ones follow it)."""
        xyz, rpy = self._check_pose(xyz, rpy)
        R = rpy_to_matrix(rpy)
        with self._lock:
            self._require_motion_allowed("movep_canfd")
            self.setpoints_received += 1
            self._pending.append((self._now(), xyz, R))

    def move_joints(self, q, speed: float = 0.2, timeout: float = 30.0) -> None:
        """Joint-space move at ``speed`` x max velocity; blocks until arrival (sim or wall time)."""
        q = self._check_joint_target(q)
        speed = self._check_fraction("speed", speed)
        with self._lock:
            self._require_motion_allowed("movej")
            self._pending.clear()
            self._q_goal = q.copy()
            self._goal_speed = speed
            if self.realtime:
                deadline = self._clock() + timeout
                while np.any(self._q != self._q_goal):
                    remaining = deadline - self._clock()
                    if remaining <= 0 or not self._connected:
                        break
                    self._arrived.wait(min(remaining, 0.05))
                    if self._estop:
                        raise ArmEmergencyStopped("movej interrupted by emergency stop", command="movej")
            else:
                end = self._t + timeout
                while np.any(self._q != self._q_goal) and self._t < end:
                    self._step(self.dt)
            if np.any(self._q != self._q_goal):
                self._hold()
                raise ArmTimeoutError(f"movej did not arrive within {timeout:.1f} s; arm stopped", command="movej")

    def gripper_open(self) -> None:
        """Open fully at the gripper speed."""
        with self._lock:
            self._require_motion_allowed("set_gripper_release")
            self._gripper_goal = self.gripper_max_opening

    def gripper_close(self, force: float = 0.5) -> None:
        """Close fully (the kinematic sim has no object to stop on, so force is only checked)."""
        self._check_fraction("force", force)
        with self._lock:
            self._require_motion_allowed("set_gripper_pick")
            self._gripper_goal = 0.0

    def gripper_position(self, opening: float) -> None:
        """Move the gripper to ``opening`` m."""
        opening = self._check_opening(opening)
        with self._lock:
            self._require_motion_allowed("set_gripper_position")
            self._gripper_goal = opening

    def _hold(self, gripper: bool = False) -> None:
        self._pending.clear()
        self._q_goal = self._q.copy()
        self._qd = np.zeros(7)
        if gripper:
            self._gripper_goal = self._gripper
        self._arrived.notify_all()

    def stop(self) -> None:
        """Drop queued set-points and hold the current joints (a kinematic arm stops instantly)."""
        with self._lock:
            self._require_connection()
            self._hold()

    def emergency_stop(self) -> None:
        """Stop and latch until ``clear_emergency()``."""
        with self._lock:
            self._require_connection()
            self._estop = True
            self._hold(gripper=True)

    def clear_emergency(self) -> None:
        """Release the latch."""
        with self._lock:
            self._require_connection()
            self._estop = False

    def inject_error(self, code: int) -> None:
        """Raise a controller system error (e.g. 0x100D collision): the arm holds where it is."""
        with self._lock:
            self._errors.add(int(code))
            self._hold()

    def clear_controller_error(self) -> None:
        """Forget every system error (``rm_clear_system_err`` on the real controller)."""
        with self._lock:
            self._require_connection()
            self._errors.clear()
            self._flags.discard("setpoint_ignored")
