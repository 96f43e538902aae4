"""The benchmark's action space and the one rule that decides whether an action chunk may run.

Every executor (the simulated arm in gf_sim_bridge, the RM75 driver) and every producer (policy
backends, teleop) uses this module, so a chunk that one side accepts the other accepts too.

``ee_delta_pose`` (7 numbers per step, each in [-1, 1]):
    0-2  dx, dy, dz   translation of the end effector in the robot base frame; 1.0 = 0.1 m
    3-5  droll, dpitch, dyaw  rotation increment (extrinsic XYZ); 1.0 = 0.1 rad
    6    gripper      1.0 = open, -1.0 = closed (values in between: partly open)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ActionSpace:
    """A named, fixed-size action space with per-dimension bounds and physical scales."""

    name: str
    dim: int
    low: tuple[float, ...]
    high: tuple[float, ...]
    names: tuple[str, ...]
    translation_scale_m: float = 0.1
    rotation_scale_rad: float = 0.1

    def clip(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, self.low, self.high)


EE_DELTA_POSE = ActionSpace(
    name="ee_delta_pose",
    dim=7,
    low=(-1.0,) * 7,
    high=(1.0,) * 7,
    names=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
)

ACTION_SPACES: dict[str, ActionSpace] = {EE_DELTA_POSE.name: EE_DELTA_POSE}

# Values may exceed the bounds by this much (float rounding in clients) before a chunk is refused.
BOUND_TOLERANCE = 1e-3
MAX_HORIZON = 256


class ChunkRejected(ValueError):
    """An action chunk that must not be executed; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ValidChunk:
    """An accepted chunk: the actions to run, as a (steps, dim) float32 array."""

    trial_id: str
    step_index: int
    actions: np.ndarray
    space: ActionSpace


def validate_chunk(
    *,
    trial_id: str,
    step_index: int,
    horizon: int,
    execute_steps: int,
    action_dim: int,
    action_space: str,
    data,
    expected_trial_id: str | None,
    next_step: int | None,
) -> ValidChunk:
    """Check a chunk completely before any of it runs; raise ``ChunkRejected`` otherwise.

    ``expected_trial_id`` / ``next_step`` describe the executor's episode: a chunk for another
    trial or for a step that has already run is stale. Pass None to skip those checks (e.g. a
    real arm between trials). Out-of-range values are refused, never clamped into motion.
    """
    space = ACTION_SPACES.get(action_space)
    if space is None:
        raise ChunkRejected("unknown_action_space", f"{action_space!r} (known: {sorted(ACTION_SPACES)})")
    if expected_trial_id is not None and trial_id != expected_trial_id:
        raise ChunkRejected("stale_trial", f"chunk for trial {trial_id!r}, running {expected_trial_id!r}")
    if next_step is not None and step_index != next_step:
        raise ChunkRejected("stale_step", f"chunk starts at step {step_index}, next step is {next_step}")
    if action_dim != space.dim:
        raise ChunkRejected("bad_action_dim", f"action_dim {action_dim}, {space.name} has {space.dim}")
    if not 1 <= horizon <= MAX_HORIZON:
        raise ChunkRejected("bad_horizon", f"horizon {horizon} not in [1, {MAX_HORIZON}]")
    values = np.asarray(data, dtype=np.float32)
    if values.ndim != 1 or values.size != horizon * action_dim:
        raise ChunkRejected("bad_length", f"{values.size} numbers for horizon {horizon} x dim {action_dim}")
    if not np.all(np.isfinite(values)):
        raise ChunkRejected("not_finite", "NaN or infinite values")
    actions = values.reshape(horizon, action_dim)
    low = np.asarray(space.low, dtype=np.float32) - BOUND_TOLERANCE
    high = np.asarray(space.high, dtype=np.float32) + BOUND_TOLERANCE
    outside = (actions < low) | (actions > high)
    if outside.any():
        row, col = map(int, np.argwhere(outside)[0])
        raise ChunkRejected(
            "out_of_range", f"{space.names[col]}={actions[row, col]:.4g} at row {row} outside [{space.low[col]}, {space.high[col]}]"
        )
    if execute_steps < 0 or execute_steps > horizon:
        raise ChunkRejected("bad_execute_steps", f"execute_steps {execute_steps} not in [0, {horizon}]")
    steps = horizon if execute_steps == 0 else execute_steps
    return ValidChunk(trial_id, step_index, np.clip(actions[:steps], space.low, space.high), space)


def delta_to_metric(action: np.ndarray, space: ActionSpace = EE_DELTA_POSE) -> tuple[np.ndarray, np.ndarray, float]:
    """One ee_delta_pose action -> (translation m, rotation rad, gripper in [-1, 1])."""
    action = np.asarray(action, dtype=np.float64)
    return action[:3] * space.translation_scale_m, action[3:6] * space.rotation_scale_rad, float(action[6])


def metric_to_delta(translation_m, rotation_rad, gripper: float, space: ActionSpace = EE_DELTA_POSE) -> np.ndarray:
    """Inverse of ``delta_to_metric`` (no clipping: callers decide how to saturate)."""
    out = np.zeros(space.dim, dtype=np.float32)
    out[:3] = np.asarray(translation_m) / space.translation_scale_m
    out[3:6] = np.asarray(rotation_rad) / space.rotation_scale_rad
    out[6] = gripper
    return out


def wrap_angle(angle: float) -> float:
    """Angle in (-pi, pi]."""
    return math.atan2(math.sin(angle), math.cos(angle))
