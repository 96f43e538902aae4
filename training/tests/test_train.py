"""The training loop: configs with inheritance, the LR schedule, learning (loss falls, a small
generated dataset is fitted), exact resume, LoRA checkpoints, and the gf-train command."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gf_policy.vla import VLAInference
from gf_training.checkpoints import resume_point
from gf_training.config import (
    TrainConfig,
    apply_overrides,
    load_config,
    load_yaml_with_inheritance,
)
from gf_training.data import synthetic_episodes
from gf_training.sweep import find_checkpoints
from gf_training.train import Trainer, list_checkpoints, lr_factor, main, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

QUIET = ["logging.progress=false", "logging.tensorboard=false"]


def tiny_cfg(tmp_path, *overrides: str) -> TrainConfig:
    return load_config("tiny", [f"output_dir={tmp_path / 'run'}", *QUIET, *overrides])


# ------------------------------------------------------------------ configuration


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("inherit: base.yaml\nname: parent\ntrain: {steps: 10, batch_size: 4}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "inherit: ../parent.yaml\nname: child\ntrain: {batch_size: 8}\nscheme: {name: lora, lora_rank: 4}\n")
    raw = load_yaml_with_inheritance(tmp_path / "sub" / "child.yaml")
    assert raw["name"] == "child" and raw["train"]["steps"] == 10 and raw["train"]["batch_size"] == 8
    assert raw["optim"]["lr"] == 2.5e-5  # from base.yaml, two levels up, found among the shipped configs
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["train.save_steps=[5, 10]", "scheme.lora_alpha=32",
                                                        "model.config={action_horizon: 8}"])
    assert cfg.train.save_steps == [5, 10] and cfg.scheme.lora_alpha == 32 and cfg.scheme.lora_rank == 4
    assert cfg.model.config == {"action_horizon": 8} and cfg.train.micro_batch_size == 32
    with pytest.raises(ValueError, match="train.stpes"):
        load_config(tmp_path / "sub" / "child.yaml", ["train.stpes=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["train.steps"])
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_yaml_with_inheritance(tmp_path / "a.yaml")
    with pytest.raises(ValueError, match="model.path"):
        load_config("tiny", ["model.init=paligemma"])


def test_a_config_file_is_read_again_once_it_changes_and_callers_get_their_own_copy(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("inherit: tiny.yaml\ntrain: {steps: 10}\n")
    first = load_yaml_with_inheritance(path)
    first["train"]["steps"] = 99  # a caller's change stays its own
    assert load_yaml_with_inheritance(path)["train"]["steps"] == 10
    path.write_text("inherit: tiny.yaml\ntrain: {steps: 12345}\n")  # another size: a new version
    assert load_config(path).train.steps == 12345
    before = path.stat().st_mtime_ns
    path.write_text("inherit: tiny.yaml\ntrain: {steps: 54321}\n")  # the same size, a later time
    os.utime(path, ns=(before, before + 1_000_000))  # file times can be coarser than two writes apart
    assert load_config(path).train.steps == 54321


@pytest.mark.parametrize("name,scheme", [("finetune", "full"), ("finetune_lora", "lora"),
                                         ("finetune_action_expert", "action_expert"),
                                         ("finetune_frozen_vlm", "frozen_vlm"), ("pretrain", "full")])
def test_shipped_configs_are_the_papers_runs(name, scheme):
    cfg = load_config(name)
    assert cfg.scheme.name == scheme
    assert (cfg.train.steps, cfg.train.batch_size) == (30_000, 1024)
    assert cfg.train.save_steps == [5_000, 10_000, 20_000, 30_000]
    assert cfg.model.init == "paligemma" and cfg.train.precision == "auto" and cfg.train.compile == "auto"


def test_lr_schedule_warmup_then_cosine():
    cfg = load_config("finetune")
    lrs = [lr_factor(s, cfg) * cfg.optim.lr for s in (0, 499, 999, 1000, 15_500, 30_000, 40_000)]
    assert lrs[0] < lrs[1] < lrs[2] <= cfg.optim.lr  # linear warmup
    assert lrs[3] == pytest.approx(cfg.optim.lr)
    assert lrs[4] == pytest.approx((cfg.optim.lr + cfg.optim.min_lr) / 2, rel=1e-3)  # half way down the cosine
    assert lrs[5] == pytest.approx(cfg.optim.min_lr) and lrs[6] == pytest.approx(cfg.optim.min_lr)


# ------------------------------------------------------------------ learning


def test_training_reduces_loss_and_overfits_generated_data(tmp_path):
    steps = 600
    cfg = tiny_cfg(tmp_path, f"train.steps={steps}", f"train.save_steps=[{steps}]", "optim.warmup_steps=20")
    result, _ = train(cfg)
    first, last = np.mean(result.losses[:20]), np.mean(result.losses[-20:])
    assert last < 0.35 * first, (first, last)

    # The exported checkpoint reproduces the demonstrations' action chunks from their observations,
    # far better than the best observation-blind guess (the mean action).
    policy = VLAInference.from_pretrained(result.checkpoints[-1])
    episodes = synthetic_episodes(**cfg.data.synthetic, image_size=32)
    horizon = policy.action_horizon
    mean_action = np.concatenate([e.actions for e in episodes]).mean(0)
    errors, blind = [], []
    for ep in episodes:
        for t in range(0, len(ep.actions), 2):
            target = ep.actions[t : t + horizon]
            pred = policy.predict(ep.images[t], ep.instruction, ep.proprio[t], seed=t)
            errors.append(np.abs(pred[: len(target)] - target).mean())
            blind.append(np.abs(mean_action - target).mean())
    assert np.mean(errors) < 0.3 * np.mean(blind), (np.mean(errors), np.mean(blind))
    assert (tmp_path / "run" / "norm_stats.json").exists() and (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("scheme", ["full", "lora"])
def test_resume_continues_exactly(tmp_path, scheme):
    common = ["optim.decay_steps=6", "train.batch_size=4", "train.micro_batch_size=2", f"scheme.name={scheme}",
              "scheme.lora_rank=4", "data.augment.enabled=true"]
    straight, _ = train(tiny_cfg(tmp_path / "a", "train.steps=6", "train.save_steps=[3, 6]", *common))
    # the same run, interrupted after step 3 and started again with the same output_dir
    first, _ = train(tiny_cfg(tmp_path / "b", "train.steps=3", "train.save_steps=[3]", *common))
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [3]
    resumed, trainer = train(tiny_cfg(tmp_path / "b", "train.steps=6", "train.save_steps=[3, 6]", *common))
    assert trainer.step == 6 and len(resumed.losses) == 3
    assert first.losses + resumed.losses == straight.losses  # same data order, augmentation and noise
    a = load_file(str(straight.checkpoints[-1] / "model.safetensors"))
    b = load_file(str(resumed.checkpoints[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if scheme == "lora":
        ckpt = straight.checkpoints[-1]
        assert (ckpt / "train_model.safetensors").exists()
        assert (ckpt / "adapters" / "vlm_lora" / "adapter_config.json").exists()
        # the inference checkpoint holds merged plain weights (no peft names)
        assert not any("lora_" in k or "base_layer" in k for k in a)


def test_a_run_stopped_between_checkpoints_continues_from_its_resume_point(tmp_path, monkeypatch):
    common = ["optim.decay_steps=6", "train.batch_size=4", "train.micro_batch_size=2", "train.save_steps=[]",
              "data.augment.enabled=true"]
    straight, _ = train(tiny_cfg(tmp_path / "a", "train.steps=6", *common))
    run = tmp_path / "b" / "run"
    every_two = [*common, "train.steps=6", "train.resume_every=2"]
    optimiser_step = Trainer.train_step

    def stopped_in_step_6(trainer):
        if trainer.step == 5:
            raise KeyboardInterrupt  # as a killed process: nothing more is written
        return optimiser_step(trainer)

    monkeypatch.setattr(Trainer, "train_step", stopped_in_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tmp_path / "b", *every_two))
    monkeypatch.undo()
    assert resume_point(run)[0] == 4  # the later of the two, replacing step 2's
    assert list_checkpoints(run) == [] and find_checkpoints(run) == []  # not a checkpoint to evaluate
    resumed, trainer = train(tiny_cfg(tmp_path / "b", *every_two))
    assert trainer.step == 6 and resumed.losses == straight.losses[4:]  # steps 5 and 6, as uninterrupted
    a = load_file(str(straight.checkpoints[-1] / "model.safetensors"))
    b = load_file(str(resumed.checkpoints[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the final checkpoint supersedes the resume point
    assert resume_point(run) is None and [s for s, _ in list_checkpoints(run)] == [6]
    with pytest.raises(ValueError, match="resume_every"):
        tiny_cfg(tmp_path, "train.resume_every=-1")


def test_lora_checkpoint_matches_the_training_model(tmp_path):
    """What the `vla` backend loads (merged) acts like the adapter-carrying model that was trained."""
    result, trainer = train(tiny_cfg(tmp_path, "train.steps=4", "train.save_steps=[4]", "scheme.name=lora",
                                     "scheme.lora_rank=4", "optim.lr=0.05", "optim.warmup_steps=0"))
    policy = VLAInference.from_pretrained(result.checkpoints[-1])
    ep = synthetic_episodes(num_episodes=1, length=4, image_size=32)[0]
    noise = torch.randn(1, policy.action_horizon, 7, generator=torch.Generator().manual_seed(0))
    merged = policy.predict(ep.images[1], ep.instruction, ep.proprio[1], noise=noise)
    live = VLAInference(trainer.model.eval(), trainer.processor, trainer.norm_stats)
    assert any(n for n, _ in trainer.model.named_parameters() if "lora_" in n)
    np.testing.assert_allclose(live.predict(ep.images[1], ep.instruction, ep.proprio[1], noise=noise), merged, atol=1e-5)


def test_gf_train_command(tmp_path, capsys):
    assert main(["tiny", "--print-config", "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out
    out = tmp_path / "cli"
    assert main(["tiny", f"output_dir={out}", "train.steps=4", "train.save_steps=[2]", "train.log_every=2"]) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]  # save_steps plus the final step
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "done: step 4" in capsys.readouterr().out
    # started again: already done, nothing to do
    assert main(["tiny", f"output_dir={out}", "train.steps=4"]) == 0
    with pytest.raises(SystemExit):
        main(["tiny", "train.nope=1"])


def test_resume_refuses_a_different_scheme(tmp_path):
    train(tiny_cfg(tmp_path, "train.steps=2", "train.save_steps=[2]"))
    with pytest.raises(ValueError, match=r"started with other scheme\.name"):
        train(tiny_cfg(tmp_path, "train.steps=4", "scheme.name=lora"))
    result, _ = train(tiny_cfg(tmp_path, "train.steps=1", "scheme.name=lora", "train.resume=false",
                               "train.save_steps=[]"))
    assert result.step == 1  # starting over is explicit


def test_a_second_training_in_the_same_run_directory_is_refused(tmp_path):
    from gf_bringup.runtime import lock_directory

    held = lock_directory(tmp_path / "run", "training")  # as a running gf-train holds it
    with pytest.raises(RuntimeError, match="another training is running in"):
        train(tiny_cfg(tmp_path, "train.steps=2", "train.save_steps=[]"))
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing of the running one was touched
    held.close()
    result, trainer = train(tiny_cfg(tmp_path, "train.steps=2", "train.save_steps=[]"))
    assert result.step == 2
    # Finished, the run directory is free while the trainer (and its model) lives on.
    lock_directory(tmp_path / "run", "training").close()
    trainer.close()
