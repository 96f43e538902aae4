"""Mapping a robot dataset's state and actions onto our embodiment (7-D EE pose + ``ee_delta_pose``).

Ours (``gf_eval.action_space``): state = x, y, z (m), roll, pitch, yaw (rad), gripper opening as a
fraction of its maximum (0 closed .. 1 open); action = dx, dy, dz in units of 0.1 m, droll, dpitch,
dyaw in units of 0.1 rad, gripper in [-1, 1] (1 open, -1 closed).

A mapping says, for each of our 7 dimensions, which dimension of the dataset's feature it comes
from and how it is scaled: ``ours = source[index] * scale + offset``, or a constant ``value``
where the other robot has no such dimension. Mappings are small YAML/JSON files::

    name: my_robot
    image_key: observation.images.wrist     # camera to use (default: the dataset's first)
    instruction_key: null                   # per-frame text column; default: the episode's task
    state:  {source: observation.state, dims: [{index: 0}, {index: 1}, {index: 2},
                                               {value: 0}, {value: 0}, {value: 0}, {index: 6}]}
    action: {source: action, dims: [{index: 0, scale: 10}, ...]}

``bridge_widowx`` is built in: BridgeData v2 (WidowX 250) records 7-D end-effector deltas in
metres and radians with the gripper in [0, 1] (1 open), and a state of EE position, Euler angles
and gripper opening, which is our convention up to the units; both robots' base frames have x
forward and z up. ``grinningface`` (the identity) is what our own exports carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gf_eval.action_space import EE_DELTA_POSE

OUR_DIM = EE_DELTA_POSE.dim
TRANSLATION_UNITS_PER_M = 1.0 / EE_DELTA_POSE.translation_scale_m
ROTATION_UNITS_PER_RAD = 1.0 / EE_DELTA_POSE.rotation_scale_rad


@dataclass(frozen=True)
class DimMap:
    """One of our dimensions: ``source[index] * scale + offset``, or the constant ``value``."""

    index: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    value: float | None = None

    def __post_init__(self) -> None:
        if (self.index is None) == (self.value is None):
            raise ValueError("a mapped dimension needs exactly one of index or value")


@dataclass(frozen=True)
class FeatureMap:
    """Our 7-D quantity from one (T, n) feature of the dataset."""

    source: str
    dims: tuple[DimMap, ...]

    def __post_init__(self) -> None:
        if len(self.dims) != OUR_DIM:
            raise ValueError(f"{self.source}: a mapping needs {OUR_DIM} dims, got {len(self.dims)}")

    def apply(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"{self.source}: expected (T, n) values, got {values.shape}")
        needed = max((d.index for d in self.dims if d.index is not None), default=-1)
        if needed >= values.shape[1]:
            raise ValueError(f"{self.source} has {values.shape[1]} dimensions, the mapping reads index {needed}")
        out = np.empty((values.shape[0], OUR_DIM), dtype=np.float64)
        for i, d in enumerate(self.dims):
            out[:, i] = d.value if d.value is not None else values[:, d.index] * d.scale + d.offset
        return out.astype(np.float32)


@dataclass(frozen=True)
class EmbodimentMapping:
    name: str
    state: FeatureMap
    action: FeatureMap
    image_key: str | None = None
    instruction_key: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def map_episode(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Our (T, 7) state and actions from a dataset's (T, n) ones, and how many action values
        were clipped: our executors refuse chunks outside the action space (and the bag reader with
        them), so a foreign robot's larger steps are clipped to it."""
        mapped = self.action.apply(actions)
        clipped = EE_DELTA_POSE.clip(mapped).astype(np.float32)
        return self.state.apply(state), clipped, int((clipped != mapped).sum())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbodimentMapping:
        def feature(d: dict[str, Any]) -> FeatureMap:
            return FeatureMap(str(d["source"]), tuple(DimMap(**dim) for dim in d["dims"]))

        unknown = set(data) - {"name", "state", "action", "image_key", "instruction_key", "notes"}
        if unknown:
            raise ValueError(f"unknown mapping key(s): {sorted(unknown)}")
        return cls(str(data.get("name", "custom")), feature(data["state"]), feature(data["action"]),
                   data.get("image_key"), data.get("instruction_key"), dict(data.get("notes") or {}))


def identity_mapping(state_key: str = "observation.state", action_key: str = "action") -> EmbodimentMapping:
    """Our own convention (what ``gf-data export`` writes)."""
    same = tuple(DimMap(index=i) for i in range(OUR_DIM))
    return EmbodimentMapping("grinningface", FeatureMap(state_key, same), FeatureMap(action_key, same))


def bridge_widowx_mapping() -> EmbodimentMapping:
    """BridgeData v2 (WidowX 250): metres/radians deltas -> our 0.1 m / 0.1 rad units, gripper
    [0, 1] -> [-1, 1]; the state is already EE pose + gripper opening."""
    action = (tuple(DimMap(index=i, scale=TRANSLATION_UNITS_PER_M) for i in range(3))
              + tuple(DimMap(index=i, scale=ROTATION_UNITS_PER_RAD) for i in range(3, 6))
              + (DimMap(index=6, scale=2.0, offset=-1.0),))
    state = tuple(DimMap(index=i) for i in range(OUR_DIM))
    return EmbodimentMapping("bridge_widowx", FeatureMap("observation.state", state), FeatureMap("action", action))


BUILTIN_MAPPINGS = {"grinningface": identity_mapping, "bridge_widowx": bridge_widowx_mapping}


def load_mapping(spec: str | Path | dict | EmbodimentMapping | None) -> EmbodimentMapping:
    """A built-in mapping by name, a YAML/JSON mapping file, a mapping dict, or the identity."""
    if spec is None:
        return identity_mapping()
    if isinstance(spec, EmbodimentMapping):
        return spec
    if isinstance(spec, dict):
        return EmbodimentMapping.from_dict(spec)
    if str(spec) in BUILTIN_MAPPINGS:
        return BUILTIN_MAPPINGS[str(spec)]()
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"mapping {spec!r}: neither a built-in ({', '.join(BUILTIN_MAPPINGS)}) nor a file")
    text = path.read_text(encoding="utf-8")
    return EmbodimentMapping.from_dict(json.loads(text) if path.suffix == ".json" else yaml.safe_load(text))
