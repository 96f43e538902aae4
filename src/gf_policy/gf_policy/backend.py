"""The policy backend interface and registry (ROS-free).

A backend turns an observation into a chunk of actions in the benchmark's action space. Backends
are found through the ``gf.policy_backends`` entry-point group, so a user adds one from their own
package with::

    [project.entry-points."gf.policy_backends"]
    my_policy = "my_pkg.policy:MyBackend"

and runs it with ``gf-launch sim_eval policy:=my_policy``. The policy node handles ROS (topics,
synchronisation, threads); a backend only sees plain numpy data.

Inference runs off the ROS executor thread, so a slow model never blocks message handling.
``act_batch`` lets a backend serve several robots (or parallel sim envs) in one forward pass.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from gf_bringup.graphs import POLICY_BACKENDS
from gf_eval.action_space import EE_DELTA_POSE
from gf_eval.trials import TrialSpec


@dataclass
class PolicyObservation:
    """What a backend sees at one decision point."""

    trial: TrialSpec
    step: int  # control step of the episode this observation was taken at
    proprio: np.ndarray  # (7,) float32: xyz (m, base frame), rpy (rad), gripper opening / max
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB, when the backend needs images
    privileged: dict[str, Any] | None = field(default=None, repr=False)  # simulator ground truth (oracles)
    stamp_ns: int = 0


@dataclass
class ActionPlan:
    """A chunk of actions to publish: ``actions`` is (horizon, 7) in ee_delta_pose units."""

    actions: np.ndarray
    execute_steps: int = 0  # 0 = execute the whole chunk before asking again
    action_space: str = EE_DELTA_POSE.name


class PolicyBackend(ABC):
    """Base class of policy backends.

    Class attributes tell the node what to subscribe to: ``needs_image`` (camera),
    ``needs_privileged`` (simulator ground truth, which the sim only publishes for oracles), and
    whether inference is cheap enough to run on the ROS thread (``runs_inline``).
    Constructor keyword arguments come from the node's ``backend_args`` parameter (YAML).
    """

    name: str = "base"
    needs_image: bool = True
    needs_privileged: bool = False
    # act() takes microseconds (scripted baselines): run it on the ROS thread, saving a thread hop per step.
    runs_inline: bool = False

    def reset(self, trial: TrialSpec) -> None:
        """A new trial starts (called before its first observation)."""

    @abstractmethod
    def act(self, obs: PolicyObservation) -> ActionPlan:
        """The actions to take from this observation on."""

    def act_batch(self, observations: list[PolicyObservation]) -> list[ActionPlan]:
        """Batched inference; the default runs ``act`` on each observation."""
        return [self.act(o) for o in observations]

    def close(self) -> None:
        """Release resources (models, connections)."""


def available_backends() -> dict[str, Any]:
    return {e.name: e for e in entry_points(group=POLICY_BACKENDS)}


def load_backend(name: str, **kwargs) -> PolicyBackend:
    """Instantiate the backend registered under ``name`` with its keyword arguments."""
    backends = available_backends()
    if name not in backends:
        raise ValueError(f"unknown policy backend {name!r}; installed: {sorted(backends)}")
    cls = backends[name].load()
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:  # a missing or unknown argument: say which, and where arguments go
        accepted = ", ".join(p for p in inspect.signature(cls).parameters if p not in ("self", "kwargs"))
        raise ValueError(f"policy backend {name!r}: {exc}; give its arguments as backend_args:='{{name: value, ...}}' "
                         f"(it takes: {accepted or 'none'})") from None
    return cls(**kwargs)


def backend_class(name: str) -> type[PolicyBackend]:
    backends = available_backends()
    if name not in backends:
        raise ValueError(f"unknown policy backend {name!r}; installed: {sorted(backends)}")
    return backends[name].load()
