"""The scripted expert: a closed-loop waypoint policy on privileged state.

Phases (docs/architecture.md, "The benchmark's reference facts"): reach above the cube with the gripper open, descend, close, lift
about 6 cm, move 5 cm above the target card, open, then hold still until the episode ends. Each
step it outputs the same 7-D ee_delta_pose action a learned policy would (gf_eval.action_space).

Two paces (``EXPERT_PROFILES``): ``fast`` (the default, 45-52 steps per Train demo) moves 60 % of
the remaining distance per step up to 2.5 cm; ``upstream`` paces the phases the way upstream's
expert does - at least 50 steps to the cube, 5 to close, 20 to lift and 50 to the card, moving
a fixed 10 % of the remaining distance per step - so its demos last 126 steps or more.

``wrong_card=True`` carries the cube to a uniformly drawn *other* card (a policy that executes
perfectly but never recognises); ``target_override`` picks any card (the chance baseline draws it
uniformly from all three). ``action_noise`` adds Gaussian noise to the arm part of each action.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from gf_eval.action_space import EE_DELTA_POSE, metric_to_delta

OPEN, CLOSED = 1.0, -0.2  # -0.2 squeezes a 3 cm cube gently; -1 can pop it out of the fingers


class Phase(str, Enum):
    REACH = "reach"
    DESCEND = "descend"
    GRASP = "grasp"
    LIFT = "lift"
    TRANSPORT = "transport"
    RELEASE = "release"
    RETREAT = "retreat"


@dataclass
class ExpertConfig:
    hover_height: float = 0.05  # above the cube before descending (m)
    grasp_height: float = 0.008  # TCP height above the cube centre when closing (m); lower drags the fingertips on the table
    lift_height: float = 0.06  # TCP height of the carry (m, world z)
    place_height: float = 0.05  # above the target card's surface when opening (m)
    gain: float = 0.6  # fraction of the remaining error commanded per step
    max_speed: float = 0.025  # m per control step
    descend_speed: float = 0.01  # m per control step near the cube
    settled_motion: float = 0.001  # m per step below which the arm counts as settled
    reach_tolerance: float = 0.008  # m
    place_tolerance: float = 0.015  # m, cube centre to card centre (horizontal) to release
    stall_steps: int = 5  # steps without TCP motion that count as "at the edge of reach"
    stall_release_margin: float = 0.06  # m, release a stalled carry only with the cube this far inside the card's centre lines
    grasp_steps: int = 10  # at most; fewer once the cube is held
    release_steps: int = 6
    action_noise: float = 0.0  # std of Gaussian noise added to the arm actions (normalised units)
    # Fewest steps spent in each phase (by Phase value) before it may end: paces the demos.
    min_steps: dict[str, int] = field(default_factory=dict)


EXPERT_PROFILES: dict[str, ExpertConfig] = {
    "fast": ExpertConfig(),
    # Upstream's pacing: 50 steps to the cube (reach + descend), 5 to close, 20 to lift, 50 to
    # the card; each step a fixed fraction of the remaining distance.
    "upstream": ExpertConfig(gain=0.1, min_steps={"reach": 35, "descend": 15, "grasp": 5, "lift": 20, "transport": 50}),
}


def expert_config(profile: str = "fast", **overrides) -> ExpertConfig:
    """The ``ExpertConfig`` of a named pace (``EXPERT_PROFILES``) with field overrides."""
    try:
        base = EXPERT_PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown expert profile {profile!r}; expected one of {sorted(EXPERT_PROFILES)}") from None
    return replace(base, min_steps=dict(base.min_steps), **overrides)


@dataclass
class ScriptedExpert:
    """Call ``reset`` at the start of an episode and ``act(state)`` every control step.

    ``state`` is the privileged state of the simulator (GrinningFaceEnv.privileged_state): world
    positions of the TCP, cube and cards, the target index and whether the cube is grasped.
    """

    config: ExpertConfig = field(default_factory=ExpertConfig)
    target_override: int | None = None
    wrong_card: bool = False
    seed: int | None = None
    phase: Phase = Phase.REACH
    _counter: int = 0
    _in_phase: int = 0  # steps since the current phase began
    _target: int | None = None
    _last_tcp: np.ndarray | None = None
    _rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def reset(self, seed: int | None = None, target_override: int | None = None, wrong_card: bool | None = None) -> None:
        self.phase, self._counter, self._in_phase, self._target, self._last_tcp = Phase.REACH, 0, 0, None, None
        self._rng = np.random.default_rng(self.seed if seed is None else seed)
        if target_override is not None:
            self.target_override = target_override
        if wrong_card is not None:
            self.wrong_card = wrong_card

    def chosen_card(self, true_target: int) -> int:
        """The card this expert carries the cube to (fixed for the episode once chosen)."""
        if self._target is None:
            if self.target_override is not None:
                self._target = int(self.target_override)
            elif self.wrong_card:
                others = [i for i in range(3) if i != true_target]
                self._target = int(others[self._rng.integers(len(others))])
            else:
                self._target = int(true_target)
        return self._target

    def _move(self, tcp: np.ndarray, goal: np.ndarray, gripper: float, max_speed: float | None = None) -> np.ndarray:
        step = self.config.gain * (goal - tcp)
        norm = float(np.linalg.norm(step))
        limit = self.config.max_speed if max_speed is None else max_speed
        if norm > limit:
            step *= limit / norm
        action = metric_to_delta(step, np.zeros(3), gripper)
        if self.config.action_noise > 0:
            action[:6] += self._rng.normal(0, self.config.action_noise, 6).astype(np.float32)
        return EE_DELTA_POSE.clip(action).astype(np.float32)

    def act(self, state: dict) -> np.ndarray:
        """One 7-D action for the current privileged state."""
        phase = self.phase
        action = self._act(state)
        self._in_phase = 0 if self.phase is not phase else self._in_phase + 1
        return action

    def _paced(self) -> bool:
        """Whether the current phase has lasted its minimum number of steps."""
        return self._in_phase + 1 >= self.config.min_steps.get(self.phase.value, 0)

    def _act(self, state: dict) -> np.ndarray:
        c = self.config
        tcp = np.asarray(state["tcp_pos"], dtype=np.float64)
        cube = np.asarray(state["cube_pos"], dtype=np.float64)
        card = np.asarray(state["card_positions"], dtype=np.float64)[self.chosen_card(int(state["target_index"]))]
        hover = cube + [0.0, 0.0, c.hover_height]
        grasp = cube + [0.0, 0.0, c.grasp_height]
        place = np.array([card[0], card[1], card[2] + c.place_height])

        if self.phase is Phase.REACH:
            if np.linalg.norm(hover - tcp) < c.reach_tolerance * 2 and self._paced():
                self.phase = Phase.DESCEND
            return self._move(tcp, hover, OPEN)
        moved = float(np.linalg.norm(tcp - self._last_tcp)) if self._last_tcp is not None else 1.0
        self._last_tcp = tcp
        if self.phase is Phase.DESCEND:
            # Close only once the fingers straddle the cube and the arm has settled there.
            if np.linalg.norm(grasp - tcp) < c.reach_tolerance and moved < c.settled_motion and self._paced():
                self.phase, self._counter = Phase.GRASP, 0
            return self._move(tcp, grasp, OPEN, c.descend_speed)
        if self.phase is Phase.GRASP:
            self._counter += 1
            closed = state.get("cube_grasped", False) and self._counter >= c.grasp_steps // 2
            if (closed or self._counter >= c.grasp_steps) and self._paced():
                self.phase, self._counter = Phase.LIFT, 0
            return self._move(tcp, grasp, CLOSED, c.descend_speed)
        if self.phase is Phase.LIFT:
            lift = np.array([tcp[0], tcp[1], c.lift_height])
            if not state.get("cube_grasped", True) and tcp[2] > cube[2] + 0.02:
                self.phase = Phase.REACH  # the cube slipped out: start again
                return self._move(tcp, hover, OPEN)
            if tcp[2] >= c.lift_height - c.reach_tolerance and self._paced():
                self.phase, self._counter = Phase.TRANSPORT, 0
            return self._move(tcp, lift, CLOSED)
        if self.phase is Phase.TRANSPORT:
            # Steer the cube (not the TCP) over the card centre; release once it is there, or
            # once the arm stalls at the edge of its reach with the cube well inside the card.
            offset = float(np.linalg.norm(cube[:2] - card[:2]))
            inside = float(np.max(np.abs(cube[:2] - card[:2]))) < c.stall_release_margin
            self._counter = self._counter + 1 if moved < 5e-4 else 0
            if (offset < c.place_tolerance or (self._counter >= c.stall_steps and inside)) and self._paced():
                self.phase, self._counter = Phase.RELEASE, 0
            return self._move(tcp, place + (tcp - cube) * [1, 1, 0], CLOSED)
        if self.phase is Phase.RELEASE:
            self._counter += 1
            if self._counter >= c.release_steps:
                self.phase = Phase.RETREAT
            return self._move(tcp, place, OPEN)
        # RETREAT: hold still above the card with the gripper open.
        return self._move(tcp, place, OPEN)
