"""Figure 3 of the paper: every row (technique x fine-tuning scheme) has a config that loads and
validates, with the technique and scheme it claims, and a documented one-line command; the chain
pre-training -> fine-tuning of every technique and scheme runs at tiny scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gf_policy.vla import VLAConfig, VLAInference
from gf_training.config import load_config
from gf_training.figure3 import PRETRAIN_CONFIG, SCHEMES, commands, main, row, rows, table

README = Path(__file__).resolve().parents[1] / "README.md"
SCHEME_NAMES = {"full": "full", "lora": "lora", "action": "action_expert"}


def test_fifteen_rows():
    assert len(rows()) == 15 and row("cotrain-lora").finetune_config == "fig3/cotrain_lora.yaml"
    with pytest.raises(ValueError, match="unknown Figure 3 row"):
        row("cotrain-frozen")


@pytest.mark.parametrize("r", rows(), ids=lambda r: r.name)
def test_every_row_has_a_valid_config(r):
    cfg = load_config(r.finetune_config)
    assert cfg.scheme.name == SCHEME_NAMES[r.scheme]
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.save_steps) == (30_000, 1024, [5_000, 10_000, 20_000, 30_000])
    assert cfg.output_dir == f"runs/fig3/{r.technique}_{r.scheme}"
    if r.technique == "vlm":
        assert cfg.model.init == "paligemma" and r.pretrain_config is None
        return
    pre = load_config(r.pretrain_config)
    # fine-tuning starts from the final checkpoint of the row's pre-training run
    assert cfg.model.init == "checkpoint" and cfg.model.path == f"{pre.output_dir}/checkpoints/step_030000"
    assert pre.model.init == "paligemma" and pre.scheme.name == "full"
    # the pre-training's model settings make a valid VLAConfig (tiny backbone for speed)
    model_config = dict(pre.model.config)
    if r.technique == "latent":  # the latent sizes come from the LAM (gf_training.train.with_latent_sizes)
        from gf_training.latent import LAMConfig, vla_latent_sizes

        model_config.update(vla_latent_sizes(LAMConfig(), pre.latent.frame_pairs))
    vla = VLAConfig.tiny(vocab_size=1024, **model_config)
    if r.technique == "cotrain":
        assert pre.cotrain.ratio > 0 and pre.cotrain.vl_dirs
        assert (cfg.cotrain.ratio > 0) == (r.scheme != "action")  # a frozen VLM gains nothing from VL samples
    if r.technique == "discrete":
        assert vla.discrete_actions == "parallel" and vla.knowledge_insulation and vla.num_action_bins == 256
        assert vla.replace(**cfg.model.config).discrete_active == (r.scheme != "action")
    if r.technique == "latent":
        assert vla.latent_action_mode == "expert" and vla.latent_active and pre.latent.lam
        assert not vla.replace(**cfg.model.config).latent_active  # robot actions only in fine-tuning
    if r.technique == "baseline":
        assert not vla.discrete_active and not vla.latent_active and pre.cotrain.ratio == 0


def test_each_row_is_documented_with_its_command():
    text = README.read_text(encoding="utf-8")
    assert table() in text  # the README's table is the generated one
    for r in rows():
        assert f"`gf-fig3 run {r.name}`" in text


def test_row_commands(capsys):
    cmds = commands(row("latent-action"), pretrain_data=["/data/bridge"], demos=["demos/train500"],
                    launcher="torchrun --nproc-per-node 8")
    assert cmds[0][:2] == ["gf-lam", "train"] and "/data/bridge" in cmds[0]
    assert cmds[1][:5] == ["torchrun", "--nproc-per-node", "8", "-m", "gf_training.train"]
    assert cmds[1][5] == PRETRAIN_CONFIG["latent"] and cmds[2][5] == "fig3/latent_action.yaml"
    assert cmds[-1][:2] == ["gf-sweep", "runs/fig3/latent_action"]
    vlm = commands(row("vlm-full"))
    assert [c[0] for c in vlm] == ["gf-train", "gf-sweep"]  # no pre-training
    cot = commands(row("cotrain-full"))
    assert [c[:2] for c in cot[:2]] == [["gf-vl-data", "glyphs"], ["gf-vl-data", "tabletop"]]
    assert main(["run", "discrete-lora", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pretrain_discrete.yaml" in out and "fig3/discrete_lora.yaml" in out and "gf-sweep" in out
    with pytest.raises(SystemExit):
        main(["run", "baseline-full"])  # pre-training needs robot data
    assert main(["list"]) == 0 and "latent-action" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    """Generated VL data and a latent action model, the inputs some rows need."""
    from gf_training.latent import main as lam_main
    from gf_training.vl_data import generate_glyphs

    root = tmp_path_factory.mktemp("assets")
    generate_glyphs(root / "glyphs", per_emoji=1, size=32)
    assert lam_main(["train", "--synthetic", "2", "--tiny", "--steps", "4", "--batch-size", "4", "--out",
                     str(root / "lam"), "--set", "codebook_size=32", "--set", "code_dim=32", "--set",
                     "codes_per_pair=4", "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("technique", ["cotrain", "discrete", "latent"])
def test_each_technique_pretrains_then_finetunes_in_every_scheme_at_tiny_scale(tmp_path, tiny_assets, technique):
    """The rows' chain with a tiny backbone: pre-training with the technique's settings from its
    config, then the fine-tuning settings of its full / LoRA / action-expert rows, from that checkpoint."""
    from gf_training.train import train

    quiet = ["logging.progress=false", "logging.tensorboard=false", "train.batch_size=4", "train.micro_batch_size=4"]
    pre_cfg = load_config(row(f"{technique}-full").pretrain_config)
    pre = [f"model.config={dict(pre_cfg.model.config, vocab_size=1024)}".replace("'", "")]
    if technique == "cotrain":
        pre += [f"cotrain.vl_dirs=[{tiny_assets / 'glyphs'}]", f"cotrain.ratio={pre_cfg.cotrain.ratio}",
                "cotrain.max_text_tokens=24"]
    if technique == "latent":
        pre += [f"latent.lam={tiny_assets / 'lam'}"]
    result, _ = train(load_config("tiny", [f"output_dir={tmp_path / 'pre'}", *quiet, "train.steps=2",
                                           "train.save_steps=[]", *pre]))
    for scheme in SCHEMES:
        fine_cfg = load_config(row(f"{technique}-{scheme}").finetune_config)
        fine = [f"scheme.name={fine_cfg.scheme.name}", "model.init=checkpoint", f"model.path={result.checkpoints[-1]}",
                f"model.config={fine_cfg.model.config}".replace("'", "")]
        if fine_cfg.cotrain.ratio > 0:
            fine += [f"cotrain.vl_dirs=[{tiny_assets / 'glyphs'}]", f"cotrain.ratio={fine_cfg.cotrain.ratio}",
                     "cotrain.max_text_tokens=24"]
        tuned, trainer = train(load_config("tiny", [f"output_dir={tmp_path / scheme}", *quiet, "train.steps=2",
                                                    "train.save_steps=[]", *fine]))
        assert np.isfinite(tuned.losses).all()
        ep = trainer.episodes[0]
        policy = VLAInference.from_pretrained(tuned.checkpoints[-1])
        assert policy.predict(ep.images[0], ep.instruction, ep.proprio[0], seed=0).shape == (4, 7)
