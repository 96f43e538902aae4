"""Baselines built on the scripted expert and the simulator's ground truth.

* ``oracle``: the expert itself -- executes and recognises (upper bound of the task).
* ``chance``: the expert carrying the cube to a card drawn uniformly from the three (seeded by
  the trial), so execution stays near the oracle's while recognition calibrates at 1/3.
"""

from __future__ import annotations

import numpy as np

from gf_eval.trials import TrialSpec
from gf_policy.backend import ActionPlan, PolicyBackend, PolicyObservation
from gf_sim_bridge.expert import ScriptedExpert, expert_config


class OracleBackend(PolicyBackend):
    """The scripted expert on privileged state (one action per chunk: it is closed-loop)."""

    name = "oracle"
    needs_image = False
    needs_privileged = True
    runs_inline = True

    def __init__(self, action_noise: float = 0.0, profile: str = "fast"):
        """``profile``: the expert's pace (``gf_sim_bridge.expert.EXPERT_PROFILES``)."""
        self.expert = ScriptedExpert(expert_config(profile, action_noise=action_noise))

    def _target(self, trial: TrialSpec) -> int | None:
        return None

    def reset(self, trial: TrialSpec) -> None:
        self.expert.reset(seed=trial.seed, target_override=self._target(trial))

    def act(self, obs: PolicyObservation) -> ActionPlan:
        if obs.privileged is None:
            raise ValueError("the oracle needs the simulator's ground truth (sim bridge ground_truth:=true)")
        state = dict(obs.privileged, target_index=obs.trial.target_index)
        return ActionPlan(self.expert.act(state)[None, :])


class ChanceBackend(OracleBackend):
    """Perfect execution on a uniformly drawn card: recognition at chance (1/3)."""

    name = "chance"

    def _target(self, trial: TrialSpec) -> int | None:
        return int(np.random.default_rng([trial.seed, 1]).integers(3))
