"""Protocols and trial specifications: what each trial puts on the table and says to the policy.

A ``TrialSpec`` is a pure function of (protocol, index, base seed, split file, geometry): the same
spec on every machine and every run. Protocols:

* ``Train`` / ``Val`` / ``Hard``: three distinct emojis of that list, a uniformly drawn target.
* ``ID``: emoji combinations (cards in order + target) seen in the fine-tuning demos. They come
  from a demo manifest when one is given (its successful episodes), otherwise from the
  ``Demo`` trials that ``gf-demos generate`` produces with the same base seed.
* ``Demo``: the fine-tuning set itself (Train emojis), used by the demo generator.

Positions follow upstream GrinningFace (docs/architecture.md, "The benchmark's reference facts"), all in the world/table frame with
the table top at z = 0: cards at x = 0.20, y = 0.90 / 0.70 / 0.50, each jittered by up to 2 cm;
the cube spawned at (0.02, 0.70) +- 5 cm; no rotations (upstream locks all three axes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gf_eval.splits import EmojiSplits, load_splits

PROTOCOLS = ("ID", "Train", "Val", "Hard", "Demo")
EVAL_PROTOCOLS = ("ID", "Train", "Val")


@dataclass(frozen=True)
class TaskGeometry:
    """Where things are on the table (metres, world frame; table top z = 0)."""

    card_x: float = 0.20
    card_ys: tuple[float, float, float] = (0.90, 0.70, 0.50)
    card_jitter: float = 0.02
    card_half_size: float = 0.07
    card_half_thickness: float = 0.001
    cube_center: tuple[float, float] = (0.02, 0.70)
    cube_jitter: float = 0.05
    cube_half_size: float = 0.015
    randomize_yaw: bool = False


DEFAULT_GEOMETRY = TaskGeometry()


@dataclass(frozen=True)
class CardSpec:
    emoji_id: str
    char: str
    name: str
    description: str
    x: float
    y: float
    yaw: float = 0.0


@dataclass(frozen=True)
class TrialSpec:
    """Everything needed to set up, run and score one trial."""

    protocol: str
    index: int
    base_seed: int
    seed: int  # physics / robot-start randomness of this trial
    split_name: str
    split_hash: str
    cards: tuple[CardSpec, CardSpec, CardSpec]
    target_index: int
    cube_xy: tuple[float, float]
    cube_yaw: float
    instruction: str
    geometry: TaskGeometry = field(default=DEFAULT_GEOMETRY)

    @property
    def trial_id(self) -> str:
        return f"{self.protocol}-{self.index:04d}-{self.base_seed}"

    @property
    def target(self) -> CardSpec:
        return self.cards[self.target_index]

    @property
    def emoji_ids(self) -> tuple[str, str, str]:
        return tuple(c.emoji_id for c in self.cards)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrialSpec":
        data = dict(data)
        data["cards"] = tuple(CardSpec(**c) for c in data["cards"])
        data["cube_xy"] = tuple(data["cube_xy"])
        geometry = dict(data.get("geometry") or {})
        for key in ("card_ys", "cube_center"):
            if key in geometry:
                geometry[key] = tuple(geometry[key])
        data["geometry"] = TaskGeometry(**geometry)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


def _rng(protocol: str, index: int, base_seed: int) -> np.random.Generator:
    # A stable integer per protocol name (Python's hash() is salted per process).
    tag = int.from_bytes(hashlib.sha256(protocol.encode()).digest()[:4], "little")
    return np.random.default_rng([base_seed, tag, index])


@dataclass(frozen=True)
class Combination:
    """Emoji ids of the three cards in slot order and the target slot."""

    emoji_ids: tuple[str, str, str]
    target_index: int


def make_trial(
    protocol: str,
    index: int,
    base_seed: int = 0,
    splits: EmojiSplits | None = None,
    geometry: TaskGeometry = DEFAULT_GEOMETRY,
    id_combinations: list[Combination] | None = None,
    template: str | None = None,
) -> TrialSpec:
    """The deterministic spec of trial ``index`` of ``protocol``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if index < 0:
        raise ValueError("trial index must be >= 0")
    splits = splits or load_splits()
    rng = _rng(protocol, index, base_seed)
    if protocol == "ID":
        combos = id_combinations if id_combinations is not None else default_id_combinations(splits, base_seed, geometry)
        if not combos:
            raise ValueError("the ID protocol needs at least one demo combination")
        combo = combos[int(rng.integers(len(combos)))]
        entries = [splits.entry(i) for i in combo.emoji_ids]
        target = combo.target_index
    else:
        pool = splits.entries("Train" if protocol == "Demo" else protocol)
        picks = rng.choice(len(pool), size=3, replace=False)
        entries = [pool[int(i)] for i in picks]
        target = int(rng.integers(3))
    g = geometry
    card_offsets = rng.uniform(-g.card_jitter, g.card_jitter, size=(3, 2))
    cube_offset = rng.uniform(-g.cube_jitter, g.cube_jitter, size=2)
    yaw = float(rng.uniform(-np.pi, np.pi)) if g.randomize_yaw else 0.0
    cube_yaw = float(rng.uniform(-np.pi / 4, np.pi / 4)) if g.randomize_yaw else 0.0
    cards = tuple(
        CardSpec(e.id, e.char, e.name, e.description,
                 round(g.card_x + float(card_offsets[i, 0]), 6), round(g.card_ys[i] + float(card_offsets[i, 1]), 6), yaw)
        for i, e in enumerate(entries)
    )
    seed = int(rng.integers(2**31 - 1))
    text = (template or splits.template).format(desc=entries[target].description)
    return TrialSpec(
        protocol=protocol, index=index, base_seed=base_seed, seed=seed,
        split_name=splits.name, split_hash=splits.hash, cards=cards, target_index=target,
        cube_xy=(round(g.cube_center[0] + float(cube_offset[0]), 6), round(g.cube_center[1] + float(cube_offset[1]), 6)),
        cube_yaw=cube_yaw, instruction=text, geometry=geometry,
    )


DEFAULT_DEMO_EPISODES = 500


def default_id_combinations(
    splits: EmojiSplits, base_seed: int = 0, geometry: TaskGeometry = DEFAULT_GEOMETRY,
    episodes: int = DEFAULT_DEMO_EPISODES,
) -> list[Combination]:
    """Combinations of the canonical demo set (``Demo`` trials 0..episodes-1)."""
    key = (splits.hash, base_seed, geometry, episodes)
    if key not in _DEMO_COMBINATIONS:
        specs = (make_trial("Demo", i, base_seed, splits, geometry) for i in range(episodes))
        _DEMO_COMBINATIONS[key] = [Combination(s.emoji_ids, s.target_index) for s in specs]
    return _DEMO_COMBINATIONS[key]


_DEMO_COMBINATIONS: dict[tuple, list[Combination]] = {}


def combinations_from_manifest(path: Path, successful_only: bool = True) -> list[Combination]:
    """Emoji combinations of the episodes in a demo manifest (JSON lines with a ``trial`` spec)."""
    combos = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            trial = row["trial"]
            ids = tuple(c["emoji_id"] for c in trial["cards"])
            target = int(trial["target_index"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{line_no}: not a manifest line with a trial spec ({exc})") from exc
        if successful_only and not row.get("success", False):
            continue
        combos.append(Combination(ids, target))
    return combos
