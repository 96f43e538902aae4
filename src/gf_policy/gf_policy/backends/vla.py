"""``vla``: a pi0-style VLA checkpoint run in this process (CPU or GPU).

    gf-launch sim_eval policy:=vla backend_args:='{checkpoint: runs/finetune_full/checkpoints/step_030000}'

Sampling noise is a pure function of (``seed``, trial seed, control step), so an evaluation is
reproducible and the ``remote`` backend, which sends the same seeds to ``gf-policy-server``,
returns the same actions as this one.
"""

from __future__ import annotations

import numpy as np
import torch

from gf_eval.action_space import EE_DELTA_POSE
from gf_eval.trials import TrialSpec
from gf_policy.backend import ActionPlan, PolicyBackend, PolicyObservation


def observation_seed(base_seed: int, trial_seed: int, step: int) -> int:
    """The noise seed of one decision: independent streams per (run seed, trial, step)."""
    return int(np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(trial_seed) & 0xFFFFFFFF, int(step)])
               .generate_state(1, dtype=np.uint64)[0] >> 1)


def chunk_noise(action_horizon: int, model_action_dim: int, seed: int) -> torch.Tensor:
    """The flow-matching start noise (H, model_action_dim) for ``seed`` (float32, CPU)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(action_horizon, model_action_dim, generator=gen)


def resolve_execute_steps(execute_steps: int, action_horizon: int, default: int) -> int:
    """``execute_steps`` 0 means the checkpoint's execution horizon; otherwise 1..action_horizon."""
    steps = int(execute_steps) or int(default)
    if not 1 <= steps <= action_horizon:
        raise ValueError(f"execute_steps={execute_steps} must be in [1, action_horizon={action_horizon}] (0: checkpoint default)")
    return steps


def check_observations(observations: list[PolicyObservation], proprio_dim: int) -> None:
    """Raise ``ValueError`` for observations a VLA cannot act on."""
    for obs in observations:
        if obs.image is None:
            raise ValueError("the VLA needs the camera image (the policy node subscribes when needs_image is set)")
        proprio = np.asarray(obs.proprio)
        if proprio.shape != (proprio_dim,):
            raise ValueError(f"proprio must have shape ({proprio_dim},), got {proprio.shape}")


class VLABackend(PolicyBackend):
    """Runs ``VLAInference`` on the observation; returns the whole predicted chunk (H, 7)."""

    name = "vla"
    needs_image = True
    needs_privileged = False

    def __init__(self, checkpoint: str, device: str = "cpu", execute_steps: int = 0, seed: int = 0,
                 num_threads: int | None = None):
        """``checkpoint``: a local checkpoint directory; ``execute_steps``: steps to run before
        re-planning (0: the checkpoint's execution horizon); ``seed``: base of the noise seeds."""
        from gf_policy.vla.local_files import local_dir

        local_dir(checkpoint, "checkpoint")  # before transformers loads: a wrong path fails at once
        from gf_policy.vla import (
            VLAInference,  # torch/transformers only when this backend is used
        )

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.policy = VLAInference.from_pretrained(checkpoint, device=device)
        cfg = self.policy.model.config
        if cfg.action_space != EE_DELTA_POSE.name or cfg.action_dim != EE_DELTA_POSE.dim:
            raise ValueError(f"{checkpoint} predicts {cfg.action_space} with {cfg.action_dim} dims; the benchmark "
                             f"runs {EE_DELTA_POSE.name} with {EE_DELTA_POSE.dim}")
        self.checkpoint = str(checkpoint)
        self.seed = int(seed)
        self.execute_steps = resolve_execute_steps(execute_steps, cfg.action_horizon, cfg.execution_horizon)
        self.trial: TrialSpec | None = None

    def reset(self, trial: TrialSpec) -> None:
        self.trial = trial

    def noise_for(self, obs: PolicyObservation) -> torch.Tensor:
        cfg = self.policy.model.config
        return chunk_noise(cfg.action_horizon, cfg.model_action_dim, observation_seed(self.seed, obs.trial.seed, obs.step))

    def act(self, obs: PolicyObservation) -> ActionPlan:
        return self.act_batch([obs])[0]

    def act_batch(self, observations: list[PolicyObservation]) -> list[ActionPlan]:
        """One forward pass for all observations (e.g. several simulated envs)."""
        if not observations:
            return []
        check_observations(observations, self.policy.model.config.proprio_dim)
        noise = torch.stack([self.noise_for(o) for o in observations])
        actions = self.policy.predict_batch(
            [o.image for o in observations], [o.trial.instruction for o in observations],
            np.stack([np.asarray(o.proprio, dtype=np.float32) for o in observations]), noise=noise,
        )
        return [ActionPlan(np.ascontiguousarray(a, dtype=np.float32), self.execute_steps) for a in actions]

    def close(self) -> None:
        self.policy = None  # type: ignore[assignment]
