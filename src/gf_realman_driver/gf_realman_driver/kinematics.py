"""RM75 kinematics: forward kinematics, geometric Jacobian and damped-least-squares IK (ROS-free).

Source of the numbers: the vendor SDK's own algorithm library (``Robotic_Arm`` 1.1.6,
``Algo(RM_MODEL_RM_75_E, RM_MODEL_RM_B_E).rm_algo_get_dh()`` and ``rm_algo_get_joint_*_limit`` /
``rm_algo_get_joint_max_speed``), which agrees with the joint origins and limits of ``rm_75.urdf`` in
Realman's ROS 2 driver (``RealManRobot/ros2_rm_robot``, ``rm_description``). Standard DH, all a = 0:

    joint   d (m)    alpha (deg)   limits (deg)   max speed (deg/s)
    1       0.2405   -90           +-178          180
    2       0        +90           +-130          180
    3       0.256    -90           +-178          225
    4       0        +90           +-135          225
    5       0.21     -90           +-178          225
    6       0        +90           +-128          225
    7       0.144      0           +-360          225

All joints straight (q = 0) put the flange 0.8505 m above the base; reach from the shoulder is
0.61 m. The test suite checks this forward kinematics against the SDK's ``rm_algo_forward_kinematics``.

Orientation as roll/pitch/yaw is the extrinsic XYZ convention (R = Rz(yaw) Ry(pitch) Rx(roll)), the
one Realman's controller and SDK use (checked against ``rm_algo_euler2matrix``) and the one the
benchmark's ``ee_delta_pose`` action space names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

NUM_JOINTS = 7

RM75_DH_D = (0.2405, 0.0, 0.256, 0.0, 0.21, 0.0, 0.144)
RM75_DH_A = (0.0,) * NUM_JOINTS
RM75_DH_ALPHA = tuple(math.radians(a) for a in (-90.0, 90.0, -90.0, 90.0, -90.0, 90.0, 0.0))
RM75_DH_OFFSET = (0.0,) * NUM_JOINTS
RM75_JOINT_UPPER = tuple(math.radians(a) for a in (178.0, 130.0, 178.0, 135.0, 178.0, 128.0, 360.0))
RM75_JOINT_LOWER = tuple(-u for u in RM75_JOINT_UPPER)
RM75_JOINT_MAX_VELOCITY = tuple(math.radians(v) for v in (180.0, 180.0, 225.0, 225.0, 225.0, 225.0, 225.0))
# A comfortable "ready" posture: flange pointing straight down, ~0.29 m in front of the base,
# ~0.27 m above it, elbow bent well away from the joint limits (redundancy resolved with q3 = 0).
RM75_HOME = tuple(math.radians(a) for a in (0.0, 20.0, 0.0, 90.0, 0.0, 70.0, 0.0))


def rpy_to_matrix(rpy) -> np.ndarray:
    """Roll/pitch/yaw (extrinsic XYZ, rad) -> 3x3 rotation matrix."""
    return Rotation.from_euler("xyz", np.asarray(rpy, dtype=np.float64)).as_matrix()


def matrix_to_rpy(rotation: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> roll/pitch/yaw (extrinsic XYZ, rad)."""
    return Rotation.from_matrix(rotation).as_euler("xyz")


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector (base frame) that turns ``current`` into ``target``."""
    R = target @ current.T
    cos_angle = min(1.0, max(-1.0, (R[0, 0] + R[1, 1] + R[2, 2] - 1.0) * 0.5))
    angle = math.acos(cos_angle)
    if angle > math.pi - 1e-3:
        # Near a half turn the skew part vanishes; let scipy pick the axis robustly.
        return Rotation.from_matrix(R).as_rotvec()
    skew = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    # angle / sin(angle) -> 1 as angle -> 0 (written this way to stay finite at zero).
    scale = 0.5 if angle < 1e-8 else angle / (2.0 * math.sin(angle))
    return skew * scale


@dataclass(frozen=True)
class IKResult:
    """Outcome of an IK solve: joints (always within limits), whether it met the tolerances, residuals,
    and the tool pose and geometric Jacobian at ``q`` (computed anyway by the last iteration)."""

    q: np.ndarray
    converged: bool
    position_error: float
    rotation_error: float
    iterations: int
    jacobian: np.ndarray | None = None
    pose: tuple[np.ndarray, np.ndarray] | None = None  # (position, rotation) at q


class ArmKinematics:
    """A serial revolute chain described by standard DH parameters, plus a fixed tool offset.

    ``tool_offset`` is the tool centre point in the flange frame (m); zero means the flange, which is
    what Realman's controller reports while its default tool frame ("Arm_Tip") is active.
    """

    def __init__(
        self,
        d,
        a,
        alpha,
        offset,
        lower,
        upper,
        max_velocity,
        tool_offset=(0.0, 0.0, 0.0),
    ):
        self.d = np.asarray(d, dtype=np.float64)
        self.a = np.asarray(a, dtype=np.float64)
        self.alpha = np.asarray(alpha, dtype=np.float64)
        self.offset = np.asarray(offset, dtype=np.float64)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.max_velocity = np.asarray(max_velocity, dtype=np.float64)
        self.tool_offset = np.asarray(tool_offset, dtype=np.float64)
        n = self.d.size
        for name in ("a", "alpha", "offset", "lower", "upper", "max_velocity"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} needs {n} values, got {getattr(self, name).shape}")
        if self.tool_offset.shape != (3,):
            raise ValueError("tool_offset needs 3 values (x, y, z in the flange frame, m)")
        if np.any(self.lower >= self.upper):
            raise ValueError("every joint's lower limit must be below its upper limit")
        self.dof = n
        self._ca, self._sa = np.cos(self.alpha), np.sin(self.alpha)

    def within_limits(self, q, tolerance: float = 1e-9) -> bool:
        """True when every joint is inside its position limits."""
        q = np.asarray(q, dtype=np.float64)
        return bool(np.all(q >= self.lower - tolerance) and np.all(q <= self.upper + tolerance))

    def _frames(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Origins (n+1, 3) and z axes (n+1, 3) of frames 0..n, and the flange transform (4, 4)."""
        theta = q + self.offset
        ct, st = np.cos(theta), np.sin(theta)
        # Standard DH: A_i = Rz(theta) Tz(d) Tx(a) Rx(alpha), all n built at once (the planner's
        # joint checks run this for every set-point, so it is written for speed).
        A = np.zeros((self.dof, 4, 4))
        A[:, 0, 0], A[:, 0, 1], A[:, 0, 2], A[:, 0, 3] = ct, -st * self._ca, st * self._sa, self.a * ct
        A[:, 1, 0], A[:, 1, 1], A[:, 1, 2], A[:, 1, 3] = st, ct * self._ca, -ct * self._sa, self.a * st
        A[:, 2, 1], A[:, 2, 2], A[:, 2, 3] = self._sa, self._ca, self.d
        A[:, 3, 3] = 1.0
        T = np.empty((self.dof + 1, 4, 4))
        T[0] = np.eye(4)
        for i in range(self.dof):
            T[i + 1] = T[i] @ A[i]
        return T[:, :3, 3], T[:, :3, 2], T[self.dof]

    def forward(self, q) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions (rad) -> tool position (3,) in m and rotation (3, 3), base frame."""
        _, _, T = self._frames(np.asarray(q, dtype=np.float64))
        R = T[:3, :3]
        return T[:3, 3] + R @ self.tool_offset, R

    def forward_rpy(self, q) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions (rad) -> tool xyz (m) and roll/pitch/yaw (rad)."""
        p, R = self.forward(q)
        return p, matrix_to_rpy(R)

    def jacobian(self, q) -> np.ndarray:
        """Geometric Jacobian (6, n) of the tool point: rows are linear then angular velocity."""
        return self._pose_and_jacobian(np.asarray(q, dtype=np.float64))[2]

    def _pose_and_jacobian(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        origins, axes, T = self._frames(q)
        R = T[:3, :3]
        p = T[:3, 3] + R @ self.tool_offset
        J = np.empty((6, self.dof))
        z = axes[: self.dof]
        r = p - origins[: self.dof]
        # z x r written out: np.cross costs more than the whole product for 7 rows.
        J[0] = z[:, 1] * r[:, 2] - z[:, 2] * r[:, 1]
        J[1] = z[:, 2] * r[:, 0] - z[:, 0] * r[:, 2]
        J[2] = z[:, 0] * r[:, 1] - z[:, 1] * r[:, 0]
        J[3:] = z.T
        return p, R, J

    def solve_ik(
        self,
        target_position,
        target_rotation,
        q_init,
        *,
        max_iterations: int = 30,
        position_tolerance: float = 1e-4,
        rotation_tolerance: float = 1e-3,
        damping: float = 0.02,
        max_step: float = 0.3,
        posture=None,
        posture_gain: float = 0.05,
        limit_margin: float = 1e-3,
        previous: IKResult | None = None,
    ) -> IKResult:
        """Damped-least-squares IK from ``q_init``; the answer never leaves the joint limits.

        Each iteration takes dq = J^T (J J^T + damping^2 I)^-1 e (e = position error and rotation
        vector, base frame), limits its size to ``max_step`` rad, adds a null-space pull towards
        ``posture`` (uses the 7th degree of freedom to stay near a comfortable elbow; applied on the
        first iteration only, since with damping the projector is inexact, and over a stream of
        nearby targets that still steers the elbow), and clamps to the limits shrunk by
        ``limit_margin``. A target that needs a joint beyond its limit therefore ends unconverged
        at the limit, never past it. ``previous``: the result whose ``q`` is ``q_init`` (following a
        path), whose pose and Jacobian then stand in for the first forward kinematics.
        """
        target_position = np.asarray(target_position, dtype=np.float64)
        target_rotation = np.asarray(target_rotation, dtype=np.float64)
        # (Written for speed as well: the planner's joint checks solve every streamed set-point.)
        lo, hi = self.lower + limit_margin, self.upper - limit_margin
        q = np.minimum(np.maximum(np.asarray(q_init, dtype=np.float64), lo), hi)
        posture = None if posture is None else np.asarray(posture, dtype=np.float64)
        damping_matrix = (damping**2) * np.eye(6)
        pos_err = rot_err = float("inf")
        reuse = previous is not None and previous.pose is not None and np.array_equal(previous.q, q)
        for iteration in range(max_iterations + 1):
            if iteration == 0 and reuse:
                (p, R), J = previous.pose, previous.jacobian
            else:
                p, R, J = self._pose_and_jacobian(q)
            e_pos = target_position - p
            e_rot = rotation_error(target_rotation, R)
            pos_err, rot_err = math.sqrt(e_pos @ e_pos), math.sqrt(e_rot @ e_rot)
            if pos_err <= position_tolerance and rot_err <= rotation_tolerance:
                return IKResult(q, True, pos_err, rot_err, iteration, J, (p, R))
            if iteration == max_iterations:
                break
            JJt_inv = np.linalg.inv(J @ J.T + damping_matrix)
            J_pinv = J.T @ JJt_inv
            dq = J_pinv @ np.concatenate([e_pos, e_rot])
            if iteration == 0 and posture is not None and posture_gain > 0.0:
                null = np.eye(self.dof) - J_pinv @ J
                dq += null @ (posture_gain * (posture - q))
            largest = float(np.max(np.abs(dq)))
            if largest > max_step:
                dq *= max_step / largest
            q = np.minimum(np.maximum(q + dq, lo), hi)
        return IKResult(q, False, pos_err, rot_err, max_iterations, J, (p, R))


def rm75_kinematics(tool_offset=(0.0, 0.0, 0.0), lower=None, upper=None, max_velocity=None) -> ArmKinematics:
    """The RM75 chain (see the module docstring), optionally with a tool offset or narrower limits."""
    return ArmKinematics(
        RM75_DH_D,
        RM75_DH_A,
        RM75_DH_ALPHA,
        RM75_DH_OFFSET,
        RM75_JOINT_LOWER if lower is None else lower,
        RM75_JOINT_UPPER if upper is None else upper,
        RM75_JOINT_MAX_VELOCITY if max_velocity is None else max_velocity,
        tool_offset=tool_offset,
    )
