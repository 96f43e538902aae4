"""The RM75 driver's safety rules (ROS-free): limits, chunk -> set-point planning, and the watchdog.

Flow. A policy chunk that already passed ``gf_eval.action_space.validate_chunk`` holds K actions in
the benchmark's ``ee_delta_pose`` space, one per 20 Hz control step. ``TargetPlanner.plan`` turns it
into EE targets, one per control step, composed on the previous *target* (target-delta control, as
in the simulated task), and interpolates them into set-points every ``stream_period`` (<= 10 ms, the
period ``movep_canfd`` needs). Before anything runs, every target and set-point is checked; one bad
step rejects the whole chunk with ``SafetyViolation`` (a ``ChunkRejected``) and produces no
set-point. Nothing is ever clamped into motion. ``ChunkExecutor`` queues accepted plans and hands
out the set-point due at each streaming tick; ``Watchdog`` says when no valid chunk came in time.

Frame mapping (sim action -> RM75 base frame). The sim's action is a delta in the simulated
robot's base frame: ``t_sim = 0.1 m * action[0:3]`` and ``dR_sim = R_xyz(0.1 rad * action[3:6])``
(extrinsic XYZ, see ``gf_eval.action_space``). On the RM75 (``FrameMapping``, defaults = identity):

    t_rm  = translation_scale * M @ t_sim
    dR_rm = M @ R_xyz(rotation_scale * 0.1 rad * action[3:6]) @ M^T
    target_k.position = target_{k-1}.position + t_rm
    target_k.rotation = dR_rm @ target_{k-1}.rotation   (rotation about the EE point, base axes)

``M`` is a proper 3x3 rotation from the sim's base axes to the RM75's base axes (x forward, y left,
z up on both by default: identity). Use it when the real arm is mounted turned relative to the
camera/table layout the policy was trained on; use the scales to slow the real arm down relative
to the sim. The gripper value passes through unchanged (1 open, -1 closed).

Limits (``SafetyLimits``) are in the RM75 base frame. The workspace box and the floor apply to the
fingertip: ``tcp_offset`` is the fingertip in the controller's active tool frame (whose name and
pose the driver checks at connect), so with the flange frame ("Arm_Tip") it is the gripper length
along the flange z axis, and with a fingertip tool frame it is zero. Every set-point's fingertip,
rotation included, is checked. The defaults are deliberately slower
than the sim allows: a full-scale action (0.1 m per 50 ms step = 2 m/s) is refused; 3 cm per step
and 0.3 m/s averaged over any second are allowed (BridgeData-style policies move a few mm to 1 cm
per step). The default box is one the RM75 reaches everywhere with the gripper pointing down:
its reach is small (0.61 m from the shoulder to the flange), so the box is too.

Joint checks (``JointChecks``, on by default). After the Cartesian rules pass, every set-point is
solved by the RM75's inverse kinematics (``ArmKinematics.solve_ik``), each seeded from the previous
set-point's solution and the first from the measured joints (or, without them, the IK of the start
pose), so the solutions follow one continuous joint path. The chunk is refused at the first
set-point that lies near a singularity (``singularity``: the smallest singular value of the flange
Jacobian below ``MIN_SINGULAR_VALUE``), has no joint solution keeping every joint
``JOINT_LIMIT_MARGIN`` inside its limits (``joint_limit`` when a joint ends at that margin,
``unreachable`` otherwise), or needs a joint to turn faster than ``JOINT_VELOCITY_FACTOR`` times its
maximum speed since the previous set-point (``joint_velocity``). An arm standing inside the margin
can therefore not be streamed out of it (``~/home`` can). ``JointChecks.check_workspace`` tells at
start-up whether every corner of the workspace box passes the same checks.

Tracking (``TrackingMonitor``). The arm follows its set-points late (controller latency, the age
of the pushed state), so the measured pose is compared with the path of the set-points sent during
the last ``tracking_latency`` seconds before the measurement (and the newest one sent before that,
which it has had time to reach), not with the newest set-point: a moving arm that tracks well is
never more than ``max_tracking_error`` / ``max_tracking_rotation`` from that path, and a stuck or
lagging one soon is. The streaming controller checks every fresh state while it streams (a
violation stops the arm) and ``ChunkExecutor.submit`` refuses chunks while the arm is off.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial.transform import Rotation

from gf_eval.action_space import EE_DELTA_POSE, ActionSpace, ChunkRejected, ValidChunk

from .kinematics import RM75_HOME, ArmKinematics, IKResult, rm75_kinematics, rpy_to_matrix

_EPS = 1e-9
MEASURED_POSE_TOLERANCE = 0.001  # m: a measured pose this close outside the box is planned from inside it


class SafetyViolation(ChunkRejected):
    """A chunk refused by a safety rule. ``reason`` is one of: workspace, floor, step_translation,
    step_rotation, translation_rate, rotation_rate, unreachable, joint_limit, singularity,
    joint_velocity, tracking_error, bad_chunk, stale_plan (``ChunkExecutor.commit``); ``step`` is the
    offending control step within the chunk (or -1)."""

    def __init__(self, reason: str, detail: str, step: int = -1):
        super().__init__(reason, detail)
        self.step = step


@dataclass(frozen=True)
class SafetyLimits:
    """Where and how fast the EE may be commanded (RM75 base frame, metres / radians / seconds).

    ``max_translation_per_second`` / ``max_rotation_per_second`` bound the path length commanded
    within any window of ``rate_window`` seconds (including steps of earlier chunks), so a
    policy cannot reach a high average speed with steps that are each just under the per-step limit.
    ``max_tracking_error`` (m) / ``max_tracking_rotation`` (rad): how far the measured pose may be
    from the path its set-points could have taken it along, given that it may follow them up to
    ``tracking_latency`` seconds late (``TrackingMonitor``); beyond that the arm is blocked, lagging
    badly, or was moved by hand, and the driver stops it and re-syncs from the measured pose.
    3 degrees is about what 5 mm of fingertip error is at a 10 cm lever, and 10x the rounding of
    the controller's pushed orientation (1 mrad). ``tracking_latency`` covers the controller's
    command latency plus the age of the pushed state (the moving fake controller: 10 ms latency,
    5 ms push and physics cycles) with room for scheduling delays; raise it if normal motion trips
    the check on a real arm.
    """

    workspace_min: tuple[float, float, float] = (0.20, -0.20, 0.0)
    workspace_max: tuple[float, float, float] = (0.36, 0.20, 0.28)
    floor_z: float = 0.02
    max_step_translation: float = 0.03
    max_translation_per_second: float = 0.30
    max_step_rotation: float = 0.15
    max_rotation_per_second: float = 1.0
    max_tracking_error: float = 0.005
    max_tracking_rotation: float = math.radians(3.0)
    tracking_latency: float = 0.1
    rate_window: float = 1.0
    tcp_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        tcp = np.asarray(self.tcp_offset, float)
        if tcp.shape != (3,) or not np.all(np.isfinite(tcp)):
            raise ValueError("tcp_offset needs 3 finite numbers (the fingertip in the tool frame, m)")
        lo, hi = np.asarray(self.workspace_min, float), np.asarray(self.workspace_max, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            raise ValueError("workspace_min/workspace_max need 3 finite numbers each")
        if np.any(lo >= hi):
            raise ValueError(f"workspace_min {tuple(lo)} must be below workspace_max {tuple(hi)} on every axis")
        if not (lo[2] <= self.floor_z < hi[2]):
            raise ValueError(f"floor_z {self.floor_z} must lie inside the workspace's z range [{lo[2]}, {hi[2]})")
        for name in (
            "max_step_translation",
            "max_translation_per_second",
            "max_step_rotation",
            "max_rotation_per_second",
            "max_tracking_error",
            "max_tracking_rotation",
            "tracking_latency",
            "rate_window",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> SafetyLimits:
        """Build from a parameter dict (e.g. a YAML section); unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown safety limit(s) {sorted(unknown)}; known: {sorted(known)}")
        kwargs = {k: (tuple(float(x) for x in v) if k.startswith("workspace") or k == "tcp_offset" else float(v))
                  for k, v in values.items()}
        return cls(**kwargs)

    def fingertip(self, xyz, rpy) -> np.ndarray:
        """The fingertip position for a tool pose (xyz m, roll/pitch/yaw rad)."""
        return np.asarray(xyz, dtype=np.float64) + rpy_to_matrix(rpy) @ np.asarray(self.tcp_offset, dtype=np.float64)

    def pulled_inside(self, xyz, rpy, tolerance: float = MEASURED_POSE_TOLERANCE) -> np.ndarray:
        """``xyz`` (a measured tool pose) moved by the least that puts its fingertip inside the box
        and above the floor, when that is at most ``tolerance`` on every axis; unchanged otherwise.
        An arm resting against a wall reads a hair outside it (encoder noise, the IK of its joints):
        planned from that, even a chunk that holds still would be refused, and the arm stuck there."""
        xyz = np.asarray(xyz, dtype=np.float64)
        tip = self.fingertip(xyz, rpy)
        lo = np.array(self.workspace_min, dtype=np.float64)
        lo[2] = max(lo[2], self.floor_z)
        shift = np.clip(tip, lo, np.asarray(self.workspace_max, dtype=np.float64)) - tip
        return xyz + shift if np.all(np.abs(shift) <= tolerance) else xyz

    def check_pose(self, xyz, rpy, step: int = -1) -> None:
        """``check_position`` for the fingertip of a tool pose."""
        self.check_position(self.fingertip(xyz, rpy), step)

    def check_position(self, xyz, step: int = -1) -> None:
        """Raise ``SafetyViolation`` if the fingertip ``xyz`` is below the floor or outside the box."""
        xyz = np.asarray(xyz, dtype=np.float64)
        if xyz[2] < self.floor_z - _EPS:
            raise SafetyViolation("floor", f"fingertip z {xyz[2]:.4f} m below the table floor {self.floor_z} m", step)
        lo, hi = np.asarray(self.workspace_min), np.asarray(self.workspace_max)
        outside = np.flatnonzero((xyz < lo - _EPS) | (xyz > hi + _EPS))
        if outside.size:
            axis = "xyz"[int(outside[0])]
            i = int(outside[0])
            raise SafetyViolation(
                "workspace",
                f"target {axis}={xyz[i]:.4f} m outside the workspace [{lo[i]}, {hi[i]}] m",
                step,
            )


@dataclass(frozen=True)
class FrameMapping:
    """Sim ``ee_delta_pose`` action -> metric delta in the RM75 base frame (module docstring)."""

    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    translation_scale: float = 1.0
    rotation_scale: float = 1.0

    def __post_init__(self) -> None:
        M = np.asarray(self.rotation, dtype=np.float64)
        if M.shape != (3, 3) or not np.allclose(M @ M.T, np.eye(3), atol=1e-6) or not np.isclose(np.linalg.det(M), 1.0, atol=1e-6):
            raise ValueError("FrameMapping.rotation must be a proper 3x3 rotation matrix (orthonormal, det +1)")
        if not (self.translation_scale > 0 and self.rotation_scale > 0):
            raise ValueError("translation_scale and rotation_scale must be positive")

    @property
    def matrix(self) -> np.ndarray:
        """``rotation`` as a 3x3 array."""
        return np.asarray(self.rotation, dtype=np.float64)

    def map_action(self, action, space: ActionSpace = EE_DELTA_POSE) -> tuple[np.ndarray, np.ndarray, float]:
        """One action -> (translation (3,) m, rotation increment (3, 3), gripper in [-1, 1])."""
        action = np.asarray(action, dtype=np.float64)
        M = self.matrix
        translation = self.translation_scale * (M @ (action[:3] * space.translation_scale_m))
        dR_sim = rpy_to_matrix(self.rotation_scale * action[3:6] * space.rotation_scale_rad)
        return translation, M @ dR_sim @ M.T, float(action[6])

    def map_actions(self, actions, space: ActionSpace = EE_DELTA_POSE) -> tuple[np.ndarray, np.ndarray]:
        """(K, 7) actions -> translations (K, 3) m and rotation vectors (K, 3) rad, RM75 base frame.

        Uses rotvec(M dR M^T) = M rotvec(dR), the batched equivalent of ``map_action``.
        """
        actions = np.asarray(actions, dtype=np.float64)
        M = self.matrix
        translations = self.translation_scale * (actions[:, :3] * space.translation_scale_m) @ M.T
        euler = self.rotation_scale * actions[:, 3:6] * space.rotation_scale_rad
        rotvecs = Rotation.from_euler("xyz", euler).as_rotvec() @ M.T
        return translations, rotvecs


# Joint checks (module docstring). Margins are deliberately modest: the controller follows the
# set-points along its own joint path, which these checks can only predict.
JOINT_LIMIT_MARGIN = math.radians(3.0)
"""Every set-point's joint solution keeps this far (rad) inside each joint's limits."""
JOINT_VELOCITY_FACTOR = 0.8
"""A joint may turn at most this fraction of its maximum speed between consecutive set-points; the
rest is headroom for the controller catching up after its latency (over-speed is a controller error)."""
MIN_SINGULAR_VALUE = 0.03
"""Smallest singular value of the flange's geometric Jacobian (6 x 7; linear rows m/rad, angular
rows rad/rad) below which a pose counts as near a singularity. Near the stretched-arm singularity
at the edge of the reach it is about 0.09 x the elbow angle (joint4, rad): 0.03 is the elbow ~18 deg
from straight; the home posture has 0.13."""
START_IK_ITERATIONS = 200
"""IK iterations for a start pose or a workspace corner (solved from afar, unlike set-points)."""


class JointChecks:
    """Joint-space checks of planned set-points (module docstring): IK of every set-point along one
    continuous joint path, refused when unreachable, near a joint limit or a singularity, or too fast.

    ``kinematics`` is the arm's chain up to the flange (tool offset zero; default the RM75).
    ``tool_frame_pose`` is the controller's active tool frame in the flange frame (x, y, z m and
    rx, ry, rz rad, as set on the teach pendant; zero for "Arm_Tip", the flange): set-points are
    poses of that frame, so the checks solve for the flange pose that puts the tool frame there.
    ``posture`` seeds the IK of a start pose when no measured joints are given (default RM75_HOME),
    and its flange orientation is "gripper pointing down" for ``check_workspace``.
    """

    def __init__(
        self,
        kinematics: ArmKinematics | None = None,
        tool_frame_pose=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        *,
        posture=RM75_HOME,
        limit_margin: float = JOINT_LIMIT_MARGIN,
        velocity_factor: float = JOINT_VELOCITY_FACTOR,
        min_singular_value: float = MIN_SINGULAR_VALUE,
    ):
        self.kinematics = kinematics or rm75_kinematics()
        if np.any(self.kinematics.tool_offset):
            raise ValueError("JointChecks needs the flange chain (tool_offset zero); give the tool frame as tool_frame_pose")
        pose = np.asarray(tool_frame_pose, dtype=np.float64)
        if pose.shape != (6,) or not np.all(np.isfinite(pose)):
            raise ValueError("tool_frame_pose needs 6 finite numbers (x, y, z m, rx, ry, rz rad in the flange frame)")
        self.tool_frame_pose = tuple(float(v) for v in pose)
        self._tool_t = pose[:3].copy()
        self._tool_R = rpy_to_matrix(pose[3:])
        self.posture = np.asarray(posture, dtype=np.float64)
        if self.posture.shape != (self.kinematics.dof,):
            raise ValueError(f"posture needs {self.kinematics.dof} joint values")
        if not (0.0 <= limit_margin and 0.0 < velocity_factor and 0.0 <= min_singular_value):
            raise ValueError("need limit_margin >= 0, velocity_factor > 0 and min_singular_value >= 0")
        self.limit_margin = float(limit_margin)
        self.velocity_factor = float(velocity_factor)
        self.min_singular_value = float(min_singular_value)

    def flange_poses(self, xyz, rotations) -> tuple[np.ndarray, np.ndarray]:
        """Tool-frame poses (N, 3) and (N, 3, 3) -> the flange poses that put the tool frame there."""
        R_flange = np.asarray(rotations, dtype=np.float64) @ self._tool_R.T
        return np.asarray(xyz, dtype=np.float64) - R_flange @ self._tool_t, R_flange

    def _problem(self, result: IKResult) -> tuple[str, str] | None:
        """Why a solved pose is refused ((reason, detail)), or None when it passes."""
        kin, margin = self.kinematics, self.limit_margin
        smallest = float(np.linalg.svd(result.jacobian, compute_uv=False)[-1])
        singular = smallest < self.min_singular_value
        detail = (f"near a singularity (smallest singular value of the Jacobian {smallest:.3f}, "
                  f"limit {self.min_singular_value:g})")
        if singular and result.converged:
            return "singularity", detail
        if not result.converged:
            if singular:
                return "singularity", detail + ", no joint solution"
            # The IK stops at the limits shrunk by the margin: a joint resting there is what it lacks.
            stuck = np.flatnonzero((result.q <= kin.lower + margin + 1e-6) | (result.q >= kin.upper - margin - 1e-6))
            if stuck.size:
                j = int(stuck[0])
                return "joint_limit", (f"needs joint{j + 1} beyond its limit "
                                       f"[{math.degrees(kin.lower[j]):.0f}, {math.degrees(kin.upper[j]):.0f}] deg "
                                       f"less the {math.degrees(margin):.0f} deg margin")
            return "unreachable", (f"no joint solution (closest {result.position_error * 1000:.1f} mm, "
                                   f"{math.degrees(result.rotation_error):.1f} deg away)")
        return None

    def start_joints(self, xyz, rotation, measured=None) -> np.ndarray:
        """Joints at a start pose (tool frame): solved from the measured joints when given (the
        start may be a queued target ahead of the arm; the arm's own elbow is kept), otherwise from
        ``posture``. ``SafetyViolation`` (step 0) when the start pose itself fails the checks."""
        p, R = self.flange_poses(np.asarray(xyz, dtype=np.float64)[None], np.asarray(rotation, dtype=np.float64)[None])
        kin = self.kinematics
        if measured is None:
            seed, posture = self.posture, self.posture
        else:
            seed, posture = np.asarray(measured, dtype=np.float64), None
            if seed.shape != (kin.dof,) or not np.all(np.isfinite(seed)):
                raise SafetyViolation("bad_chunk", f"measured joints must be {kin.dof} finite values")
        result = kin.solve_ik(p[0], R[0], seed, max_iterations=START_IK_ITERATIONS, posture=posture,
                              limit_margin=self.limit_margin)
        problem = self._problem(result)
        if problem is not None:
            reason, detail = problem
            raise SafetyViolation(reason, f"start pose: {detail}", 0)
        return result.q

    def check_path(self, xyz, rotations, q_start, period: float, substeps: int = 1, *,
                   pause: Callable[[], None] | None = None) -> np.ndarray:
        """Joint solutions (N, dof) of the set-points (tool-frame poses, ``period`` s apart, the
        first one period after the start at ``q_start``); ``SafetyViolation`` naming the control step
        (set-point index // ``substeps``) of the first set-point that fails. ``pause`` is called
        before every set-point's solve (a caller's chance to let another thread run first)."""
        kin = self.kinematics
        p, R = self.flange_poses(xyz, rotations)
        step_limit = kin.max_velocity * self.velocity_factor * period  # rad per set-point
        out = np.empty((p.shape[0], kin.dof))
        previous = np.asarray(q_start, dtype=np.float64)
        solved = None
        for i in range(p.shape[0]):
            if pause is not None:
                pause()
            # No posture pull: the minimum-norm joint motion from the previous set-point, the least
            # any controller has to move (a pull would add joint speed of its own).
            solved = result = kin.solve_ik(p[i], R[i], previous, limit_margin=self.limit_margin, previous=solved)
            problem = self._problem(result)
            k = i // substeps
            if problem is not None:
                reason, detail = problem
                raise SafetyViolation(reason, f"step {k}: {detail}", k)
            moved = np.abs(result.q - previous)
            fast = np.flatnonzero(moved > step_limit + 1e-12)
            if fast.size:
                j = int(fast[np.argmax(moved[fast] / step_limit[fast])])
                raise SafetyViolation(
                    "joint_velocity",
                    f"step {k}: joint{j + 1} would turn at {math.degrees(moved[j] / period):.0f} deg/s "
                    f"(limit {self.velocity_factor:g} x {math.degrees(kin.max_velocity[j]):.0f} deg/s)",
                    k,
                )
            out[i] = previous = result.q
        return out

    def check_workspace(self, limits: SafetyLimits) -> None:
        """``ValueError`` naming every corner of the workspace box that the fingertip cannot reach
        with the gripper pointing down (the flange oriented as at ``posture``) and pass the checks."""
        kin = self.kinematics
        R_flange = kin.forward(self.posture)[1]
        # Fingertip = flange + R_flange (tool frame origin + R_tool tcp_offset).
        reach = R_flange @ (self._tool_t + self._tool_R @ np.asarray(limits.tcp_offset, dtype=np.float64))
        lo, hi = limits.workspace_min, limits.workspace_max
        failures = []
        for corner in ((x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])):
            result = kin.solve_ik(np.asarray(corner) - reach, R_flange, self.posture, max_iterations=START_IK_ITERATIONS,
                                  posture=self.posture, limit_margin=self.limit_margin)
            problem = self._problem(result)
            if problem is not None:
                failures.append(f"({corner[0]:.3f}, {corner[1]:.3f}, {corner[2]:.3f}) m: {problem[1]}")
        if failures:
            raise ValueError(
                f"the arm cannot reach {len(failures)} corner(s) of the workspace box with the fingertip "
                f"(tcp_offset {tuple(limits.tcp_offset)}) and the gripper pointing down: " + "; ".join(failures)
                + ". Shrink workspace_min/workspace_max (or move the box closer to the arm)."
            )


DEFAULT_JOINT_CHECKS = JointChecks()  # the RM75 with the flange tool frame ("Arm_Tip")


@dataclass(frozen=True)
class SetPoint:
    """One streaming set-point: absolute time, EE pose, and the gripper command of its control step."""

    time: float
    xyz: np.ndarray
    rpy: np.ndarray
    gripper: float
    step: int
    velocity: np.ndarray | None = None  # reference velocity there (m/s); None: at rest
    angular_velocity: np.ndarray | None = None  # rad/s, base frame


@dataclass(frozen=True)
class Plan:
    """An accepted chunk: its set-points (arrays, one row each) and the per-step EE targets."""

    times: np.ndarray  # (N,)
    xyz: np.ndarray  # (N, 3)
    rpy: np.ndarray  # (N, 3)
    gripper: np.ndarray  # (N,)
    step: np.ndarray  # (N,) control step within the chunk
    velocity: np.ndarray  # (N, 3) reference velocity of each set-point's segment (m/s)
    angular_velocity: np.ndarray  # (N, 3) rad/s
    target_xyz: np.ndarray  # (K, 3)
    target_rotation: np.ndarray  # (K, 3, 3)
    start_time: float
    start_xyz: np.ndarray
    start_rotation: np.ndarray
    joints: np.ndarray | None = None  # (N, dof) joint solution of each set-point (None: joint checks off)
    # Per control step, for the rate history (``TargetPlanner.commit``): time, path length (m), turn (rad).
    step_times: np.ndarray | None = None  # (K,)
    step_translation: np.ndarray | None = None  # (K,)
    step_rotation: np.ndarray | None = None  # (K,)

    @property
    def end_time(self) -> float:
        return float(self.times[-1])

    def shifted(self, dt: float) -> Plan:
        """The same motion ``dt`` s later (set-point and step times; the poses are unchanged)."""
        dt = float(dt)
        return replace(
            self,
            times=self.times + dt,
            start_time=self.start_time + dt,
            step_times=None if self.step_times is None else self.step_times + dt,
        )

    @property
    def final_xyz(self) -> np.ndarray:
        return self.target_xyz[-1]

    @property
    def final_rotation(self) -> np.ndarray:
        return self.target_rotation[-1]

    def __len__(self) -> int:
        return int(self.times.size)

    def setpoint(self, i: int) -> SetPoint:
        """The i-th set-point as a ``SetPoint``."""
        return SetPoint(float(self.times[i]), self.xyz[i], self.rpy[i], float(self.gripper[i]), int(self.step[i]),
                        self.velocity[i], self.angular_velocity[i])


class TargetPlanner:
    """Checks a chunk against ``SafetyLimits`` and interpolates it into streaming set-points.

    Keeps the translation/rotation of recently planned steps so the per-second limits span
    chunk boundaries. Call ``reset_history()`` after a long pause if you want (old steps also
    age out of the window by themselves).

    ``plan`` checks and records in one call. For planning outside the lock of whoever owns the
    planner (the joint checks take milliseconds), split it: take a ``history()`` snapshot under the
    lock, ``draft`` from it without the lock (``draft`` changes nothing), then ``commit`` the draft
    under the lock, which re-checks the rates against the history as it is by then and only then
    records the steps. A draft that is never committed leaves no trace.
    """

    def __init__(
        self,
        limits: SafetyLimits,
        mapping: FrameMapping | None = None,
        *,
        control_period: float = 0.05,
        stream_period: float = 0.01,
        space: ActionSpace = EE_DELTA_POSE,
        joint_checks: JointChecks | None = DEFAULT_JOINT_CHECKS,
    ):
        if not (0 < stream_period <= control_period):
            raise ValueError("need 0 < stream_period <= control_period")
        substeps = control_period / stream_period
        if abs(substeps - round(substeps)) > 1e-6:
            raise ValueError(f"control_period {control_period} s must be a whole multiple of stream_period {stream_period} s")
        self.limits = limits
        self.mapping = mapping or FrameMapping()
        self.control_period = float(control_period)
        self.stream_period = float(stream_period)
        self.substeps = round(substeps)
        self.space = space
        self.joint_checks = joint_checks  # None: Cartesian rules only
        self._history: deque[tuple[float, float, float]] = deque()  # (time, translation, rotation)

    def reset_history(self) -> None:
        """Forget earlier steps (the rate windows restart empty)."""
        self._history.clear()

    def history(self) -> tuple[tuple[float, float, float], ...]:
        """A snapshot of the rate history ((time, translation, rotation) per recorded step) for ``draft``."""
        return tuple(self._history)

    def _actions(self, chunk) -> np.ndarray:
        actions = chunk.actions if isinstance(chunk, ValidChunk) else chunk
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.space.dim or actions.shape[0] == 0:
            raise SafetyViolation("bad_chunk", f"expected (steps, {self.space.dim}) actions, got shape {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise SafetyViolation("bad_chunk", "NaN or infinite action values")
        lo, hi = np.asarray(self.space.low), np.asarray(self.space.high)
        if np.any(actions < lo - 1e-3) or np.any(actions > hi + 1e-3):
            raise SafetyViolation("bad_chunk", "action values outside the action space (validate_chunk first)")
        return actions

    def plan(self, chunk, start_xyz, start_rotation, start_time: float, start_joints=None) -> Plan:
        """Plan ``chunk`` (a ``ValidChunk`` or (K, 7) array) from the given EE pose at ``start_time``.

        ``start_rotation`` is a 3x3 matrix or roll/pitch/yaw; ``start_joints`` the measured joints
        (rad), which seed the joint checks (None: the IK of the start pose). Raises
        ``SafetyViolation`` without side effects if any step or set-point breaks a limit (the
        earliest offending step of the Cartesian rules, then of the rates, then of the joint
        checks); on success the steps enter the rate history. (``draft`` then ``commit``.)
        """
        plan = self.draft(chunk, start_xyz, start_rotation, start_time, start_joints)
        self.commit(plan)
        return plan

    def draft(self, chunk, start_xyz, start_rotation, start_time: float, start_joints=None, *,
              history: tuple[tuple[float, float, float], ...] | None = None,
              pause: Callable[[], None] | None = None) -> Plan:
        """``plan`` without recording anything: every check, the rates against ``history`` (a
        ``history()`` snapshot; default the current history). Changes no state, so it may run
        outside the lock that guards the planner; ``commit`` records the result. ``pause`` is called
        before each joint solve (``JointChecks.check_path``), e.g. to let a periodic thread run."""
        actions = self._actions(chunk)
        limits = self.limits
        p0 = np.asarray(start_xyz, dtype=np.float64).copy()
        R0 = np.asarray(start_rotation, dtype=np.float64)
        R0 = rpy_to_matrix(R0) if R0.shape == (3,) else R0.copy()
        if p0.shape != (3,) or R0.shape != (3, 3) or not (np.all(np.isfinite(p0)) and np.all(np.isfinite(R0))):
            raise SafetyViolation("bad_chunk", "start pose must be a finite xyz (3,) and rotation (3, 3) or rpy (3,)")
        K, n = actions.shape[0], self.substeps

        dp, rotvecs = self.mapping.map_actions(actions, self.space)
        trans = np.linalg.norm(dp, axis=1)
        angles = np.linalg.norm(rotvecs, axis=1)
        target_xyz = p0 + np.cumsum(dp, axis=0)
        prev_xyz = np.vstack([p0, target_xyz[:-1]])
        frac = np.arange(1, n + 1, dtype=np.float64) / n
        points = prev_xyz[:, None, :] + frac[None, :, None] * dp[:, None, :]  # (K, n, 3)

        problems: list[tuple[int, int, str, str]] = []  # (step, priority, reason, detail)
        bad = np.flatnonzero(trans > limits.max_step_translation + _EPS)
        if bad.size:
            k = int(bad[0])
            detail = f"step {k} moves {trans[k] * 1000:.1f} mm, limit {limits.max_step_translation * 1000:.1f} mm per control step"
            problems.append((k, 0, "step_translation", detail))
        bad = np.flatnonzero(angles > limits.max_step_rotation + _EPS)
        if bad.size:
            k = int(bad[0])
            detail = f"step {k} turns {angles[k]:.3f} rad, limit {limits.max_step_rotation} rad per control step"
            problems.append((k, 1, "step_rotation", detail))
        # Orientation targets compose on the left (base-frame increments about the EE point).
        dR = Rotation.from_rotvec(rotvecs).as_matrix()
        target_rot = np.empty((K, 3, 3))
        R = R0
        for k in range(K):
            R = dR[k] @ R
            target_rot[k] = R
        prev_rot = np.concatenate([R0[None], target_rot[:-1]])
        partial = Rotation.from_rotvec((frac[None, :, None] * rotvecs[:, None, :]).reshape(-1, 3))
        rotations = partial * Rotation.from_matrix(np.repeat(prev_rot, n, axis=0))

        # Every set-point's fingertip is checked (the tool point moves on straight lines, but the
        # fingertip also swings with the rotation).
        flat = points.reshape(-1, 3)
        tips = flat + rotations.apply(np.asarray(limits.tcp_offset, dtype=np.float64)) if any(limits.tcp_offset) else flat
        lo, hi = np.asarray(limits.workspace_min), np.asarray(limits.workspace_max)
        outside = (tips[:, 2] < limits.floor_z - _EPS) | np.any((tips < lo - _EPS) | (tips > hi + _EPS), axis=1)
        bad = np.flatnonzero(outside)
        if bad.size:
            k = int(bad[0]) // n
            try:
                limits.check_position(tips[int(bad[0])], k)
            except SafetyViolation as exc:
                problems.append((k, 2, exc.reason, f"step {k}: {exc.detail}"))
        if problems:
            k, _, reason, detail = min(problems)
            raise SafetyViolation(reason, detail, k)

        step_times = start_time + self.control_period * np.arange(1, K + 1)
        self._check_rates(step_times, trans, angles, self.history() if history is None else history)

        joints = None
        if self.joint_checks is not None:  # the costly part last: only for chunks that pass the rest
            if pause is not None:
                pause()
            q0 = self.joint_checks.start_joints(p0, R0, start_joints)
            joints = self.joint_checks.check_path(flat, rotations.as_matrix(), q0, self.stream_period, n, pause=pause)

        rpy = rotations.as_euler("xyz")
        return Plan(
            times=start_time + self.stream_period * np.arange(1, K * n + 1),
            xyz=flat.copy(),
            rpy=rpy,
            gripper=np.repeat(actions[:, 6], n),
            step=np.repeat(np.arange(K), n),
            velocity=np.repeat(dp / self.control_period, n, axis=0),
            angular_velocity=np.repeat(rotvecs / self.control_period, n, axis=0),
            target_xyz=target_xyz,
            target_rotation=target_rot,
            start_time=float(start_time),
            start_xyz=p0,
            start_rotation=R0,
            joints=joints,
            step_times=step_times,
            step_translation=trans,
            step_rotation=angles,
        )

    def commit(self, plan: Plan) -> None:
        """Enter a drafted plan's steps in the rate history, after checking them against the history
        as it is now (it may have changed since the draft's snapshot; this part is cheap).
        ``SafetyViolation`` (translation_rate / rotation_rate; nothing recorded) when they no longer fit."""
        if plan.step_times is None or plan.step_translation is None or plan.step_rotation is None:
            raise ValueError("commit needs a plan made by this planner (draft or plan)")
        self._check_rates(plan.step_times, plan.step_translation, plan.step_rotation, self.history())
        for t, tr, ro in zip(plan.step_times, plan.step_translation, plan.step_rotation):
            self._history.append((float(t), float(tr), float(ro)))
        self._prune(float(plan.step_times[-1]))

    def _prune(self, now: float) -> None:
        while self._history and self._history[0][0] <= now - self.limits.rate_window:
            self._history.popleft()

    def _check_rates(self, times: np.ndarray, trans: np.ndarray, rot: np.ndarray, history) -> None:
        """Path length / turn angle within (t - window, t] for each new step t, ``history`` included."""
        window = self.limits.rate_window
        past = [h for h in history if h[0] > times[0] - window]
        all_t = np.concatenate([[h[0] for h in past], times])
        order = np.argsort(all_t, kind="stable")
        all_t = all_t[order]
        cum_tr = np.concatenate([[0.0], np.cumsum(np.concatenate([[h[1] for h in past], trans])[order])])
        cum_ro = np.concatenate([[0.0], np.cumsum(np.concatenate([[h[2] for h in past], rot])[order])])
        upper = np.searchsorted(all_t, times + _EPS, side="right")
        lower = np.searchsorted(all_t, times - window + _EPS, side="right")
        paths = cum_tr[upper] - cum_tr[lower]
        turns = cum_ro[upper] - cum_ro[lower]
        bad_tr = np.flatnonzero(paths > self.limits.max_translation_per_second * window + _EPS)
        bad_ro = np.flatnonzero(turns > self.limits.max_rotation_per_second * window + _EPS)
        if bad_tr.size and (not bad_ro.size or bad_tr[0] <= bad_ro[0]):
            k = int(bad_tr[0])
            raise SafetyViolation(
                "translation_rate",
                f"step {k} would make the EE travel {paths[k]:.3f} m within {window} s "
                f"(limit {self.limits.max_translation_per_second} m/s)",
                k,
            )
        if bad_ro.size:
            k = int(bad_ro[0])
            raise SafetyViolation(
                "rotation_rate",
                f"step {k} would turn the EE {turns[k]:.3f} rad within {window} s "
                f"(limit {self.limits.max_rotation_per_second} rad/s)",
                k,
            )


class TrackingMonitor:
    """Is the arm where its set-points could have taken it? (module docstring, "Tracking").

    ``record`` every set-point sent (time, pose); ``deviation`` of a pose measured at time t is its
    distance to the path through the set-points sent in (t - L, t] preceded by the newest one sent
    at or before t - L (which the arm has had L = ``limits.tracking_latency`` to reach), and its
    rotation to the nearest of their orientations. A perfect follower with up to L of delay is on
    that path; one that lags by more than L, is stuck or was pushed away is not.
    """

    def __init__(self, limits: SafetyLimits):
        self.limits = limits
        self._sent: deque[tuple[float, np.ndarray, np.ndarray]] = deque()  # (time, xyz, rotation matrix)

    @property
    def active(self) -> bool:
        """True once a set-point was recorded since the last ``clear``."""
        return bool(self._sent)

    def clear(self) -> None:
        """Forget the set-points (stop, re-sync: the arm is no longer expected anywhere)."""
        self._sent.clear()

    def record(self, when: float, xyz, rpy) -> None:
        """A set-point was sent at ``when`` (the streaming clock, the clock of the arm's states)."""
        self._sent.append((float(when), np.asarray(xyz, dtype=np.float64).copy(), rpy_to_matrix(rpy)))
        # Keep enough history for states up to a second older than the newest set-point.
        horizon = float(when) - self.limits.tracking_latency - 1.0
        while len(self._sent) > 1 and self._sent[1][0] <= horizon:
            self._sent.popleft()

    def deviation(self, xyz, rpy, when: float) -> tuple[float, float] | None:
        """(m, rad) from a pose measured at ``when`` to where the set-points allow it to be, or None
        when nothing can be said (no set-point, measured before the first one could arrive, or a
        state older than the history)."""
        if not self._sent:
            return None
        times = np.fromiter((e[0] for e in self._sent), dtype=np.float64, count=len(self._sent))
        first = int(np.searchsorted(times, when - self.limits.tracking_latency, side="right")) - 1
        if first < 0:
            return None  # the arm may still be on its way from where the motion started
        last = max(first + 1, int(np.searchsorted(times, when, side="right")))
        entries = [self._sent[i] for i in range(first, last)]
        xyz = np.asarray(xyz, dtype=np.float64)
        points = np.array([e[1] for e in entries])
        if len(points) == 1:
            distance = float(np.linalg.norm(xyz - points[0]))
        else:  # distance to the polyline: the arm moves continuously between set-points
            a, b = points[:-1], points[1:]
            ab = b - a
            length2 = np.einsum("ij,ij->i", ab, ab)
            u = np.clip(np.einsum("ij,ij->i", xyz - a, ab) / np.maximum(length2, 1e-18), 0.0, 1.0)
            distance = float(np.min(np.linalg.norm(a + u[:, None] * ab - xyz, axis=1)))
        rotations = np.array([e[2] for e in entries])
        cos = (np.einsum("ij,nij->n", rpy_to_matrix(rpy), rotations) - 1.0) * 0.5  # trace(R_m^T R_i)
        angle = float(np.arccos(np.clip(np.max(cos), -1.0, 1.0)))
        return distance, angle

    def check(self, xyz, rpy, when: float) -> None:
        """``SafetyViolation`` (tracking_error) when the pose measured at ``when`` is off by more than the limits."""
        off = self.deviation(xyz, rpy, when)
        if off is None:
            return
        distance, angle = off
        limits = self.limits
        if distance > limits.max_tracking_error or angle > limits.max_tracking_rotation:
            raise SafetyViolation(
                "tracking_error",
                f"arm is {distance * 1000:.1f} mm / {math.degrees(angle):.1f} deg from where its set-points could have "
                f"taken it within {limits.tracking_latency * 1000:.0f} ms (limits {limits.max_tracking_error * 1000:.1f} mm, "
                f"{math.degrees(limits.max_tracking_rotation):.1f} deg): blocked, lagging or moved by hand; stop and re-sync",
            )


@dataclass(frozen=True)
class PlanRequest:
    """What ``ChunkExecutor.prepare`` says a chunk is planned from: a snapshot of the executor and
    of the planner's rate history, so that the costly planning can run outside the lock that
    guards them. ``generation`` and ``queued`` tell ``commit`` whether the executor moved on."""

    start_xyz: np.ndarray
    start_rotation: np.ndarray
    start_time: float
    start_joints: np.ndarray | None
    history: tuple[tuple[float, float, float], ...]
    generation: int
    queued: int


class ChunkExecutor:
    """Queues accepted plans and yields the set-point due at each streaming tick.

    A chunk that arrives while another runs is appended after it (its step indices follow on),
    starting from the previous plan's last target. When idle, a new chunk starts from the last
    target if one is known (target-delta control) and otherwise from the measured pose;
    ``cancel()`` (stop, watchdog, e-stop, reconnect) forgets the last target. ``tracking`` holds
    the set-points sent (``next_setpoint`` records what it hands out unless the caller records what
    it really sent); a chunk is refused while the measured pose is off their path.

    Not thread-safe: the owner guards it with a lock. ``submit`` plans and queues in one call. To
    keep the joint checks (milliseconds per chunk) out of that lock, the owner splits it:
    ``prepare`` (under the lock: tracking check and a snapshot of where the chunk starts), ``plan``
    (without it: reads nothing of the executor but the snapshot), ``commit`` (under the lock: refuses
    with ``stale_plan`` if the queued motion was cancelled or another chunk was queued since
    ``prepare``, re-checks the rates, queues). A plan that is not committed leaves no trace.
    """

    def __init__(self, planner: TargetPlanner):
        self.planner = planner
        self.tracking = TrackingMonitor(planner.limits)
        self._plans: deque[Plan] = deque()
        self._index = 0  # next set-point of _plans[0]
        self._last_target: tuple[np.ndarray, np.ndarray] | None = None
        self._last_sent: SetPoint | None = None
        self.generation = 0  # counts cancel() calls, so a follower of the set-points can tell
        self._queued = 0  # counts committed plans (a plan prepared before another was queued is stale)

    @property
    def active(self) -> bool:
        """True while set-points remain to be streamed."""
        return bool(self._plans)

    @property
    def last_sent(self) -> SetPoint | None:
        """The most recent set-point handed out (None after ``cancel()``)."""
        return self._last_sent

    @property
    def end_time(self) -> float | None:
        """When the queued motion ends (None when idle)."""
        return self._plans[-1].end_time if self._plans else None

    def submit(self, chunk, measured_xyz, measured_rpy, now: float, *, measured_joints=None,
               measured_time: float | None = None) -> Plan:
        """Plan a chunk after whatever is queued; raise ``SafetyViolation`` (nothing queued) if unsafe.

        ``measured_*``: the arm's latest state (joints in rad seed the joint checks; its time, default
        ``now``, places it against the set-points sent)."""
        request = self.prepare(measured_xyz, measured_rpy, now, measured_joints=measured_joints,
                               measured_time=measured_time)
        return self.commit(request, self.plan(chunk, request), now)

    def prepare(self, measured_xyz, measured_rpy, now: float, *, measured_joints=None,
                measured_time: float | None = None) -> PlanRequest:
        """The cheap first part of ``submit``: refuse while the arm is off its set-points' path, and
        snapshot where a chunk queued now starts (the last target, or the measured pose when idle)."""
        measured_xyz = np.asarray(measured_xyz, dtype=np.float64)
        self.tracking.check(measured_xyz, measured_rpy, float(now) if measured_time is None else float(measured_time))
        if self._last_target is not None:
            start_xyz, start_rot = self._last_target
        else:
            start_xyz, start_rot = self.planner.limits.pulled_inside(measured_xyz, measured_rpy), rpy_to_matrix(measured_rpy)
        start_time = max(float(now), self._plans[-1].end_time) if self._plans else float(now)
        joints = None if measured_joints is None else np.array(measured_joints, dtype=np.float64)
        return PlanRequest(np.array(start_xyz, dtype=np.float64), np.array(start_rot, dtype=np.float64), start_time,
                           joints, self.planner.history(), self.generation, self._queued)

    def plan(self, chunk, request: PlanRequest, pause: Callable[[], None] | None = None) -> Plan:
        """The costly part of ``submit`` (every check, joint checks included), from ``request`` only:
        safe to run outside the lock that guards the executor. Raises ``SafetyViolation``.
        ``pause``: see ``TargetPlanner.draft``."""
        return self.planner.draft(chunk, request.start_xyz, request.start_rotation, request.start_time,
                                  request.start_joints, history=request.history, pause=pause)

    def commit(self, request: PlanRequest, plan: Plan, now: float | None = None) -> Plan:
        """Queue ``plan`` (from ``plan(chunk, request)``) and return it as queued. Refused
        (``SafetyViolation`` ``stale_plan``, nothing queued) when the queued motion was cancelled or
        another chunk was queued since ``prepare``: the plan starts where the arm is no longer
        going. The rates are checked again against the history as it is now. With ``now`` (the time
        of the commit), a plan whose start has passed meanwhile is moved to start at ``now``, so its
        first set-point is due one period after it is queued, as with ``submit``."""
        if self.generation != request.generation:
            raise SafetyViolation("stale_plan", "the queued motion was dropped (stop, e-stop, watchdog, safety stop or "
                                                "reconnect) while the chunk was being planned; it is not run")
        if self._queued != request.queued:
            raise SafetyViolation("stale_plan", "another chunk was queued while this one was being planned from the "
                                                "same start; it is not run")
        if plan.start_time != request.start_time or not np.array_equal(plan.start_xyz, request.start_xyz):
            raise ValueError("commit needs the plan made from this request")
        if now is not None and float(now) > plan.start_time:
            # Nothing queued ends later than the request's start (the queue is as it was, or ran out).
            plan = plan.shifted(float(now) - plan.start_time)
        self.planner.commit(plan)
        self._plans.append(plan)
        self._last_target = (plan.final_xyz.copy(), plan.final_rotation.copy())
        self._queued += 1
        return plan

    def next_setpoint(self, now: float, *, record: bool = True) -> SetPoint | None:
        """The newest not-yet-sent set-point whose time has come (older ones are skipped), or None.
        ``record``: enter it in ``tracking`` at its due time (False: the caller records what it sends)."""
        found: SetPoint | None = None
        while self._plans:
            plan = self._plans[0]
            while self._index < len(plan) and plan.times[self._index] <= now + 1e-9:
                found = plan.setpoint(self._index)
                self._index += 1
            if self._index >= len(plan):
                self._plans.popleft()
                self._index = 0
                continue
            break
        if found is not None and not self._plans:  # the end of all queued motion: arrive at rest
            found = SetPoint(found.time, found.xyz, found.rpy, found.gripper, found.step)
        if found is not None:
            self._last_sent = found
            if record:
                self.tracking.record(found.time, found.xyz, found.rpy)
        return found

    def cancel(self) -> None:
        """Drop all queued motion and forget the last target (next chunk starts from the measured pose)."""
        self._plans.clear()
        self._index = 0
        self._last_target = None
        self._last_sent = None
        self.tracking.clear()
        self.generation += 1


class Watchdog:
    """Fires when no valid chunk was fed for ``timeout`` seconds.

    Disarmed until the first ``feed()``; ``poll()`` returns True exactly once per expiry and then
    disarms until the next ``feed()``. ``clock`` (or the ``now`` arguments) make it testable.
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic):
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"watchdog timeout must be a positive number of seconds, got {timeout}")
        self.timeout = float(timeout)
        self._clock = clock
        self._last_feed: float | None = None
        self.fired_count = 0

    @property
    def armed(self) -> bool:
        """True between a ``feed()`` and the next expiry or ``disarm()``."""
        return self._last_feed is not None

    def feed(self, now: float | None = None) -> None:
        """A valid chunk arrived: (re)arm and restart the timeout."""
        self._last_feed = self._clock() if now is None else float(now)

    def disarm(self) -> None:
        """Stop watching (e.g. after a deliberate stop or while e-stopped)."""
        self._last_feed = None

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until expiry (negative once expired), None when disarmed."""
        if self._last_feed is None:
            return None
        now = self._clock() if now is None else float(now)
        return self._last_feed + self.timeout - now

    def expired(self, now: float | None = None) -> bool:
        """True when armed and the timeout has passed."""
        remaining = self.remaining(now)
        return remaining is not None and remaining < 0.0

    def poll(self, now: float | None = None) -> bool:
        """True once when the timeout passes (then disarmed)."""
        if self.expired(now):
            self._last_feed = None
            self.fired_count += 1
            return True
        return False


@dataclass
class GripperCommander:
    """Turns the per-step gripper action (1 open .. -1 closed) into sparse gripper commands.

    Near the ends it uses the arm's open / force-controlled close; in between a position. A
    command is sent only when it differs from the last one (by ``deadband`` of the full range for
    positions), so a 20 Hz policy does not flood the gripper bus.
    """

    max_opening: float
    force: float = 0.5
    end_threshold: float = 0.9
    deadband: float = 0.1
    _last: tuple[str, float] | None = field(default=None, init=False)

    def command_for(self, value: float) -> tuple[str, float] | None:
        """("open"|"close"|"position", opening m) to send now, or None when nothing changes."""
        value = float(np.clip(value, -1.0, 1.0))
        if value >= self.end_threshold:
            cmd = ("open", self.max_opening)
        elif value <= -self.end_threshold:
            cmd = ("close", 0.0)
        else:
            cmd = ("position", (value + 1.0) * 0.5 * self.max_opening)
        last = self._last
        unchanged = last is not None and last[0] == cmd[0]
        if unchanged and (cmd[0] != "position" or abs(last[1] - cmd[1]) < self.deadband * self.max_opening):
            return None
        self._last = cmd
        return cmd

    def reset(self) -> None:
        """Forget the last command (the next one is always sent)."""
        self._last = None


__all__ = [
    "ChunkExecutor",
    "FrameMapping",
    "GripperCommander",
    "JointChecks",
    "Plan",
    "PlanRequest",
    "SafetyLimits",
    "SafetyViolation",
    "SetPoint",
    "TargetPlanner",
    "TrackingMonitor",
    "Watchdog",
]
