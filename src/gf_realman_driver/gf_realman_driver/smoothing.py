"""Jerk- and acceleration-limited set-points (ROS-free): ``SetpointSmoother`` follows the safety
core's reference set-points with the online trajectory generator ``ruckig`` (PyPI), one control
period at a time.

Why. The planner's reference is piecewise linear (a straight line per 50 ms control step) and,
after a stall, jumps to the newest due point; ``movep_canfd`` in pass-through mode would follow
such corners and jumps with unbounded acceleration. The smoother turns the reference into motion
whose per-axis velocity, acceleration and jerk stay within ``MotionLimits``.

Axes. Six: x, y, z of the tool point (m, base frame) and the orientation as a rotation vector in
the tangent space at the current commanded orientation (re-centred every step; at the centre the
rate of that rotation vector is the base-frame angular velocity, so velocity and acceleration carry
over between steps). Each step asks ruckig for the state one ``period`` ahead on its time-optimal
trajectory towards the current reference point and velocity.

Restart. ``reset`` starts from a measured pose at rest; the stream controller calls it whenever the
previous set-point is older than ``MotionLimits.stall_after`` (a stall, an idle arm, a reconnect), so
motion always restarts from where the arm is, not from where a stale plan was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ruckig
from scipy.spatial.transform import Rotation

from .kinematics import rotation_error, rpy_to_matrix

_AXES = 6
_OK = (ruckig.Result.Working, ruckig.Result.Finished)


@dataclass(frozen=True)
class MotionLimits:
    """Per-axis limits of the commanded set-points (linear: m/s, m/s^2, m/s^3; angular: rad/...)."""

    max_linear_velocity: float = 0.6
    max_linear_acceleration: float = 5.0
    max_linear_jerk: float = 100.0
    max_angular_velocity: float = 3.0
    max_angular_acceleration: float = 10.0
    max_angular_jerk: float = 200.0
    stall_after: float = 0.03  # s without a set-point after which motion restarts from the measured pose

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")

    def vectors(self) -> tuple[list[float], list[float], list[float]]:
        """Per-axis (velocity, acceleration, jerk) limits in ruckig's axis order."""
        return ([self.max_linear_velocity] * 3 + [self.max_angular_velocity] * 3,
                [self.max_linear_acceleration] * 3 + [self.max_angular_acceleration] * 3,
                [self.max_linear_jerk] * 3 + [self.max_angular_jerk] * 3)


class SetpointSmoother:
    """See the module docstring. Not thread-safe (the streaming tick owns it)."""

    def __init__(self, period: float, limits: MotionLimits | None = None):
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"period must be a positive number of seconds, got {period}")
        self.period = float(period)
        self.limits = limits or MotionLimits()
        self._otg = ruckig.Ruckig(_AXES, self.period)
        self._input = ruckig.InputParameter(_AXES)
        self._output = ruckig.OutputParameter(_AXES)
        self._vmax, amax, jmax = self.limits.vectors()
        self._input.max_velocity = self._vmax
        self._input.max_acceleration = amax
        self._input.max_jerk = jmax
        self.xyz: np.ndarray | None = None
        self.rotation: np.ndarray | None = None
        self.velocity = np.zeros(_AXES)
        self.acceleration = np.zeros(_AXES)

    @property
    def started(self) -> bool:
        """True after ``reset`` (there is a commanded pose to continue from)."""
        return self.xyz is not None

    def reset(self, xyz, rpy) -> None:
        """Start at rest at the given (measured) pose."""
        self.xyz = np.asarray(xyz, dtype=np.float64).copy()
        self.rotation = rpy_to_matrix(rpy)
        self.velocity = np.zeros(_AXES)
        self.acceleration = np.zeros(_AXES)

    def clear(self) -> None:
        """Forget the commanded state (the next motion must ``reset`` first)."""
        self.xyz = self.rotation = None
        self.velocity = np.zeros(_AXES)
        self.acceleration = np.zeros(_AXES)

    def at_rest_at(self, xyz, rpy, tolerance: float = 1e-5) -> bool:
        """True when the commanded pose equals the given one and nothing moves any more."""
        if not self.started:
            return True
        offset = np.linalg.norm(self.xyz - np.asarray(xyz, dtype=np.float64))
        turn = np.linalg.norm(rotation_error(rpy_to_matrix(rpy), self.rotation))
        still = np.max(np.abs(self.velocity)) < 1e-6 and np.max(np.abs(self.acceleration)) < 1e-6
        return bool(offset < tolerance and turn < tolerance and still)

    def step(self, xyz, rpy, velocity=None, angular_velocity=None) -> tuple[np.ndarray, np.ndarray]:
        """The next set-point (xyz, rpy) one period along the limited trajectory towards the
        reference pose, arriving with the reference velocity (default: at rest)."""
        if not self.started:
            raise RuntimeError("SetpointSmoother.step before reset")
        target_rotation = rpy_to_matrix(rpy)
        target_velocity = np.zeros(_AXES)
        if velocity is not None:
            target_velocity[:3] = velocity
        if angular_velocity is not None:
            target_velocity[3:] = angular_velocity
        # Inside the limits (a reference faster than the limits is followed at the limit).
        bound = 0.999 * np.asarray(self._vmax)
        target_velocity = np.clip(target_velocity, -bound, bound)
        inp = self._input
        inp.current_position = [*self.xyz, 0.0, 0.0, 0.0]
        inp.current_velocity = list(self.velocity)
        inp.current_acceleration = list(self.acceleration)
        inp.target_position = [*np.asarray(xyz, dtype=np.float64), *rotation_error(target_rotation, self.rotation)]
        inp.target_velocity = list(target_velocity)
        inp.target_acceleration = [0.0] * _AXES
        result = self._otg.update(inp, self._output)
        if result not in _OK:
            raise ValueError(f"ruckig could not plan the next set-point ({result})")
        out = self._output
        new = np.asarray(out.new_position)
        self.xyz = new[:3].copy()
        self.rotation = Rotation.from_rotvec(new[3:]).as_matrix() @ self.rotation
        self.velocity = np.asarray(out.new_velocity, dtype=np.float64)
        self.acceleration = np.asarray(out.new_acceleration, dtype=np.float64)
        if result == ruckig.Result.Finished and not np.any(target_velocity):
            self.velocity[:] = 0.0
            self.acceleration[:] = 0.0
        return self.xyz.copy(), Rotation.from_matrix(self.rotation).as_euler("xyz")


def peak_acceleration(positions, period: float, restarts=()) -> float:
    """Largest per-axis |second difference| / period^2 of a set-point sequence (N, 3): the
    acceleration a controller following those set-points is commanded.

    ``restarts``: indices of set-points that restart motion at rest after a stall. No set-point
    reached the arm during the stall, so the differences spanning one are the stall's stop, not
    a commanded acceleration; each run between restarts is measured on its own."""
    positions = np.asarray(positions, dtype=np.float64)
    bounds = [0, *sorted(int(i) for i in restarts if 0 < int(i) < len(positions)), len(positions)]
    peak = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        run = positions[lo:hi]
        if run.shape[0] >= 3:
            second = run[2:] - 2.0 * run[1:-1] + run[:-2]
            peak = max(peak, float(np.max(np.abs(second)) / period**2))
    return peak


__all__ = ["MotionLimits", "SetpointSmoother", "peak_acceleration"]
