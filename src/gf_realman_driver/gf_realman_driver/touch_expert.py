"""``touch_oracle``: a scripted Touch policy for dry runs and graph tests (policy backend, ROS-free).

It knows the calibrated layout (``layout``: a Touch layout YAML) and the trial's target, and
from the EE position alone (the proprio; no image) moves over the chosen point at ``hover`` m
above the card, descends until the EE is ``approach`` m above the card's touch height, and closes
the gripper. ``aim`` picks the point: ``target`` (the named card), ``other`` (the next card),
``between`` (the middle of the gap between the target and its neighbour, over no card), or a
list of these used in turn by trial index, so one run can exercise all three outcomes.

Motion is a proportional step towards the current waypoint, at most ``max_step`` m per control
step, computed from the measured pose, so chunks that queue up behind each other do not add up
to an overshoot. The backend is stateless between calls (a repeated trial needs no reset).
"""

from __future__ import annotations

import numpy as np

from gf_eval.action_space import EE_DELTA_POSE
from gf_eval.touch import load_layout
from gf_policy.backend import ActionPlan, PolicyBackend, PolicyObservation

AIMS = ("target", "other", "between")


class TouchOracleBackend(PolicyBackend):
    name = "touch_oracle"
    needs_image = False
    needs_privileged = False

    def __init__(self, layout: str, aim="target", hover: float = 0.06, approach: float = 0.01, max_step: float = 0.01,
                 gain: float = 0.5, horizon: int = 2, tolerance: float = 0.004):
        self.layout = load_layout(layout)
        self.aims = [aim] if isinstance(aim, str) else list(aim)
        if not self.aims or any(a not in AIMS for a in self.aims):
            raise ValueError(f"aim must be one of {AIMS} or a list of them, got {aim!r}")
        if horizon < 1 or max_step <= 0 or not (0 < gain <= 1):
            raise ValueError("need horizon >= 1, max_step > 0 and 0 < gain <= 1")
        self.hover, self.approach, self.max_step = float(hover), float(approach), float(max_step)
        self.gain, self.horizon, self.tolerance = float(gain), int(horizon), float(tolerance)

    def goal(self, trial) -> tuple[np.ndarray, float]:
        """(x, y) of the point to touch and the EE height at which to close, for this trial."""
        aim = self.aims[trial.index % len(self.aims)]
        target = trial.target_index
        slots = self.layout.slots
        if aim == "target":
            chosen = [slots[target]]
        elif aim == "other":
            chosen = [slots[(target + 1) % 3]]
        else:
            neighbour = target + 1 if target < 2 else target - 1
            chosen = [slots[target], slots[neighbour]]
        xy = np.mean([[s.x, s.y] for s in chosen], axis=0)
        z = float(np.mean([s.z for s in chosen])) + self.approach
        return xy, z

    def act(self, obs: PolicyObservation) -> ActionPlan:
        xy, z_touch = self.goal(obs.trial)
        p = np.asarray(obs.proprio[:3], dtype=np.float64).copy()
        actions = np.zeros((self.horizon, EE_DELTA_POSE.dim), dtype=np.float32)
        for k in range(self.horizon):
            over = np.linalg.norm(xy - p[:2]) <= self.tolerance
            waypoint = np.array([xy[0], xy[1], z_touch if over else z_touch + self.hover])
            arrived = over and abs(p[2] - z_touch) <= self.tolerance
            delta = np.zeros(3) if arrived else self.gain * (waypoint - p)
            norm = np.linalg.norm(delta)
            if norm > self.max_step:
                delta *= self.max_step / norm
            p += delta
            actions[k, :3] = delta / EE_DELTA_POSE.translation_scale_m
            actions[k, 6] = -1.0 if arrived else 1.0
        return ActionPlan(actions=actions)
