"""Scoring: the only place where the benchmark decides what happened in an episode.

Per episode, from the final state:

* ``placed_card``: the card whose footprint (the 14 x 14 cm square, rotated with the card)
  contains the cube's centre, with the cube resting on it (not lifted), released by the gripper,
  and the arm still (every arm joint speed <= 0.2 rad/s, as upstream). -1 when there is none.
* execution = the cube is placed on *some* card; recognition = that card is the target;
  success = both.
* ``upstream_success``: upstream GrinningFace's rule for comparability -- cube within
  card_half_size * sqrt(2) (0.099 m) of the target card's centre (3-D distance), not grasped,
  arm still.

A simulated episode ends with ``success`` as soon as the cube is placed on the target card;
when the step budget runs out it ends with ``wrong_card`` (placed on another card) or
``timeout`` (on no card): a wrong choice must not read as a slow policy.

Aggregation (per protocol): execution SR, recognition SR = successes / executions (the paper's
Eq. 1), overall SR = successes / trials; each with a 95 % Wilson score interval. Chance level
of recognition is 1/3.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

CHANCE_RECOGNITION = 1.0 / 3.0
END_SUCCESS, END_WRONG_CARD, END_TIMEOUT = "success", "wrong_card", "timeout"
SIM_END_REASONS = (END_SUCCESS, END_WRONG_CARD, END_TIMEOUT)  # episodes that ended in the simulator
ARM_STILL_SPEED = 0.2  # rad/s, upstream's is_static threshold
RESTING_TOLERANCE = 0.01  # m the cube centre may sit above "resting on the card"
WILSON_Z95 = 1.959963984540054


@dataclass(frozen=True)
class CardFootprint:
    x: float
    y: float
    yaw: float
    half_size: float
    top_z: float  # height of the card's top face


@dataclass(frozen=True)
class FinalState:
    """What scoring needs to know about the end of an episode (world frame, metres)."""

    cube_xyz: tuple[float, float, float]
    cube_half_size: float
    cube_grasped: bool
    max_arm_joint_speed: float
    cards: tuple[CardFootprint, ...]


@dataclass(frozen=True)
class EpisodeScore:
    placed_card: int
    executed: bool
    recognised: bool
    success: bool
    upstream_success: bool
    released: bool
    arm_still: bool
    card_distances: tuple[float, ...]


def inside_footprint(card: CardFootprint, x: float, y: float) -> bool:
    """Whether (x, y) lies in the card's square footprint (rotated with the card)."""
    dx, dy = x - card.x, y - card.y
    c, s = math.cos(card.yaw), math.sin(card.yaw)
    local_x, local_y = c * dx + s * dy, -s * dx + c * dy
    return abs(local_x) <= card.half_size and abs(local_y) <= card.half_size


def placed_card(state: FinalState) -> int:
    """Index of the card the cube rests on (ignoring release and stillness), or -1."""
    x, y, z = state.cube_xyz
    for i, card in enumerate(state.cards):
        resting = z <= card.top_z + state.cube_half_size + RESTING_TOLERANCE
        if resting and inside_footprint(card, x, y):
            return i
    return -1


def score_episode(state: FinalState, target_index: int) -> EpisodeScore:
    """Execution, recognition and success of one episode's final state."""
    released = not state.cube_grasped
    still = state.max_arm_joint_speed <= ARM_STILL_SPEED
    on_card = placed_card(state)
    card = on_card if (released and still) else -1
    executed = card >= 0
    recognised = executed and card == target_index
    x, y, z = state.cube_xyz
    distances = tuple(math.hypot(x - c.x, y - c.y) for c in state.cards)
    target = state.cards[target_index]
    d3 = math.sqrt((x - target.x) ** 2 + (y - target.y) ** 2 + (z - target.top_z) ** 2)
    upstream = d3 <= target.half_size * math.sqrt(2) and released and still
    return EpisodeScore(card, executed, recognised, recognised, upstream, released, still, distances)


def score_placement(placed: int, target_index: int) -> tuple[bool, bool, bool]:
    """(executed, recognised, success) from a placed card index (-1 = none)."""
    executed = placed >= 0
    recognised = executed and placed == target_index
    return executed, recognised, recognised


# --- aggregation ------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion ((0, 1) when there are no trials)."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} not in [0, {trials}]")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials)

    def __str__(self) -> str:
        if not self.trials:
            return "n/a"
        lo, hi = self.interval
        return f"{100 * self.value:5.1f}% [{100 * lo:.0f}-{100 * hi:.0f}]"


@dataclass(frozen=True)
class ProtocolSummary:
    protocol: str
    trials: int
    execution: Rate
    recognition: Rate
    overall: Rate
    upstream_overall: Rate
    end_reasons: dict[str, int]


def summarize(results: list[dict]) -> dict[str, ProtocolSummary]:
    """Per-protocol summary of result records (dicts with protocol/executed/success/...)."""
    by_protocol: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_protocol[r["protocol"]].append(r)
    out = {}
    for protocol, rows in by_protocol.items():
        n = len(rows)
        exe = sum(bool(r["executed"]) for r in rows)
        succ = sum(bool(r["success"]) for r in rows)
        ups = sum(bool(r.get("upstream_success", False)) for r in rows)
        reasons: dict[str, int] = defaultdict(int)
        for r in rows:
            reasons[r.get("end_reason", "")] += 1
        out[protocol] = ProtocolSummary(
            protocol, n, Rate(exe, n), Rate(succ, exe), Rate(succ, n), Rate(ups, n), dict(reasons)
        )
    return out


def difference_interval(a: Rate, b: Rate) -> tuple[float, float]:
    """95 % interval of ``a.value - b.value`` for two independent rates: Newcombe's hybrid score
    interval (method 10), built from each rate's Wilson interval; it stays within [-1, 1] and
    behaves at 0 and 100 %, where the normal approximation does not."""
    (la, ua), (lb, ub) = a.interval, b.interval
    d = a.value - b.value
    return (d - math.sqrt((a.value - la) ** 2 + (ub - b.value) ** 2),
            d + math.sqrt((ua - a.value) ** 2 + (b.value - lb) ** 2))


def breakdown(results: list[dict], key) -> dict[object, tuple[Rate, Rate, Rate]]:
    """(execution, recognition, overall) rates grouped by ``key(result)``."""
    groups: dict[object, list[dict]] = defaultdict(list)
    for r in results:
        groups[key(r)].append(r)
    out = {}
    for k, rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
        n = len(rows)
        exe = sum(bool(r["executed"]) for r in rows)
        succ = sum(bool(r["success"]) for r in rows)
        out[k] = (Rate(exe, n), Rate(succ, exe), Rate(succ, n))
    return out
