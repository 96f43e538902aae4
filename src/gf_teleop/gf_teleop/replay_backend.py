"""The ``replay`` policy backend: the actions of a recorded episode, step by step.

``policy:=replay backend_args:='{demo_dir: DIR}'`` looks up, at each trial, the episode of the
demo directory whose trial spec equals the running trial's (complete, successful episodes
first) and returns its action for each step; ``backend_args:='{bag: PATH}'`` replays one bag
whatever the trial. A trial without a recording raises in ``act`` (the policy node logs it and
the trial ends as a policy timeout) unless ``strict: false``, which holds the arm still. A lock-step simulator rebuilds the scene at every reset, so replaying a
scripted demo through the evaluation graph reproduces it. Past the recorded end the arm holds
still (zero motion, last gripper command).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gf_eval.trials import TrialSpec
from gf_policy.backend import ActionPlan, PolicyBackend, PolicyObservation
from gf_teleop import episodes as ep


class ReplayBackend(PolicyBackend):
    name = "replay"
    needs_image = False
    needs_privileged = False

    def __init__(self, demo_dir: str = "", bag: str = "", strict: bool = True):
        if bool(demo_dir) == bool(bag):
            raise ValueError("the replay backend needs exactly one of demo_dir (match by trial spec) or bag")
        self.strict = strict
        self.bag = Path(bag) if bag else None
        self.demo_dir = Path(demo_dir) if demo_dir else None
        self.index: dict[str, list[ep.EpisodeEntry]] = {}
        if self.demo_dir is not None:
            entries = ep.read_manifest(self.demo_dir)
            # Best first: complete and successful recordings of a trial before the others.
            for entry in sorted(entries, key=lambda e: (not e.complete, not e.success)):
                if entry.trial:
                    self.index.setdefault(ep.canonical_trial(entry.trial), []).append(entry)
            if not self.index:
                raise ValueError(f"{self.demo_dir}: no recorded episodes with a trial spec")
        self.actions = np.zeros((0, 7), np.float32)
        self.source = ""
        self.error = ""

    def find(self, trial: TrialSpec) -> tuple[Path, ep.EpisodeEntry] | None:
        """The recording to replay for ``trial`` (None if there is none)."""
        if self.bag is not None:
            return ep.entry_from_bag(self.bag)
        matches = self.index.get(ep.canonical_trial(trial))
        return (self.demo_dir, matches[0]) if matches else None

    def reset(self, trial: TrialSpec) -> None:
        found = self.find(trial)
        self.error = ""
        if found is None:
            # Raised from act(), where the policy node logs it and the trial times out, so one
            # unknown trial does not stop an evaluation.
            if self.strict:
                self.error = f"no recorded episode for trial {trial.trial_id} in {self.demo_dir}"
            self.actions, self.source = np.zeros((0, 7), np.float32), ""
            return
        directory, entry = found
        self.actions = ep.load_episode(directory, entry, images=False).actions
        self.source = entry.bag

    def act(self, obs: PolicyObservation) -> ActionPlan:
        if self.error:
            raise ValueError(self.error)
        if obs.step < len(self.actions):
            return ActionPlan(self.actions[obs.step][None, :].copy())
        hold = np.zeros((1, 7), np.float32)
        hold[0, 6] = self.actions[-1, 6] if len(self.actions) else 1.0
        return ActionPlan(hold)
