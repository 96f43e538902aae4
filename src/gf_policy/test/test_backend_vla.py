"""The `vla` policy backend: a checkpoint behind the PolicyBackend interface (entry point, chunk
shape and bounds the executors accept, reproducible noise per decision, batching, bad input)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gf_eval.action_space import validate_chunk
from gf_eval.trials import make_trial
from gf_policy.backend import (
    PolicyObservation,
    available_backends,
    backend_class,
    load_backend,
)
from gf_policy.backends.vla import VLABackend, chunk_noise, observation_seed
from gf_policy.vla import (
    NormStats,
    PI0StyleVLA,
    VLAConfig,
    VLAInference,
    VLAProcessor,
    train_tiny_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

HORIZON, EXECUTE = 5, 2


def make_checkpoint(out: Path, **cfg_overrides) -> Path:
    """A tiny random checkpoint with a visible action head and realistic normalisation stats."""
    cfg = VLAConfig.tiny(action_horizon=HORIZON, execution_horizon=EXECUTE, **cfg_overrides)
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(cfg)
    with torch.no_grad():
        model.action_out_proj.weight.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-0.3, 0.3, (500, 6)), rng.choice([-1.0, 1.0], (500, 1))], 1)
    model.norm_stats = {"proprio": NormStats.from_data(rng.normal(0, 0.2, (500, 7))),
                        "actions": NormStats.from_data(actions)}
    trials = [make_trial("Val", i) for i in range(5)]
    tok = train_tiny_tokenizer([t.instruction for t in trials], 200, out / "tok")
    model.save_pretrained(out, processor=VLAProcessor(tok, cfg))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("vla_ckpt"))


def observation(index: int = 0, step: int = 0, image: bool = True) -> PolicyObservation:
    rng = np.random.default_rng([index, step])
    trial = make_trial("Val", index)
    return PolicyObservation(
        trial=trial, step=step, proprio=rng.normal(0, 0.2, 7).astype(np.float32),
        image=rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) if image else None,
    )


def test_registered_and_declares_its_inputs(checkpoint):
    assert {"vla", "remote"} <= set(available_backends())
    cls = backend_class("vla")
    assert cls is VLABackend and cls.needs_image and not cls.needs_privileged
    backend = load_backend("vla", checkpoint=str(checkpoint), seed=3)
    assert isinstance(backend, VLABackend) and backend.execute_steps == EXECUTE  # the checkpoint's default
    backend.close()


def test_act_returns_a_chunk_the_executor_accepts(checkpoint):
    backend = VLABackend(str(checkpoint))
    obs = observation()
    backend.reset(obs.trial)
    plan = backend.act(obs)
    assert plan.actions.shape == (HORIZON, 7) and plan.actions.dtype == np.float32
    assert plan.action_space == "ee_delta_pose" and plan.execute_steps == EXECUTE
    assert np.abs(plan.actions).max() <= 1.0 and np.ptp(plan.actions) > 0
    chunk = validate_chunk(trial_id=obs.trial.trial_id, step_index=0, horizon=HORIZON, execute_steps=plan.execute_steps,
                           action_dim=7, action_space=plan.action_space, data=plan.actions.ravel(),
                           expected_trial_id=obs.trial.trial_id, next_step=0)
    assert chunk.actions.shape == (EXECUTE, 7)
    assert VLABackend(str(checkpoint), execute_steps=HORIZON).act(obs).execute_steps == HORIZON
    with pytest.raises(ValueError, match="execute_steps"):
        VLABackend(str(checkpoint), execute_steps=HORIZON + 1)


def test_noise_is_a_function_of_seed_trial_and_step(checkpoint):
    backend = VLABackend(str(checkpoint), seed=7)
    obs = observation(1, step=4)
    first = backend.act(obs).actions
    assert np.array_equal(first, backend.act(obs).actions)  # same decision, same chunk
    assert not np.allclose(first, backend.act(observation(1, step=8)).actions)
    assert not np.allclose(first, VLABackend(str(checkpoint), seed=8).act(obs).actions)
    # exactly VLAInference with the documented noise
    policy = VLAInference.from_pretrained(checkpoint)
    noise = chunk_noise(HORIZON, 7, observation_seed(7, obs.trial.seed, 4))[None]
    np.testing.assert_array_equal(first, policy.predict(obs.image, obs.trial.instruction, obs.proprio, noise=noise))


def test_act_batch_matches_single_decisions(checkpoint):
    backend = VLABackend(str(checkpoint))
    observations = [observation(i, step=3 * i) for i in range(3)]
    batched = backend.act_batch(observations)
    assert len(batched) == 3 and backend.act_batch([]) == []
    for obs, plan in zip(observations, batched):
        np.testing.assert_allclose(plan.actions, backend.act(obs).actions, atol=1e-5)


def test_bad_observations_and_checkpoints_are_refused(checkpoint, tmp_path):
    backend = VLABackend(str(checkpoint))
    with pytest.raises(ValueError, match="camera image"):
        backend.act(observation(image=False))
    bad = observation()
    bad.proprio = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="proprio"):
        backend.act(bad)
    with pytest.raises(ValueError, match="joint_pos"):
        VLABackend(str(make_checkpoint(tmp_path / "joint", action_space="joint_pos")))
    with pytest.raises((FileNotFoundError, OSError)):
        VLABackend(str(tmp_path / "missing"))
