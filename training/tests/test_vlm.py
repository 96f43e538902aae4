"""A mini VLM's pre-training with gf-train (``cotrain.ratio: 1``: vision-language samples only) and
its export as a Hugging Face PaliGemma directory that the comparison's rows start from."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gf_policy.vla import PI0StyleVLA
from gf_training.config import load_config
from gf_training.train import train
from gf_training.vlm import main as vlm_main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

QUIET = ["logging.progress=false", "logging.tensorboard=false"]


def test_vision_language_only_training_learns_and_resumes_exactly(vl_only, tmp_path):
    result, trainer = train(vl_only(tmp_path / "run", "train.steps=40", "train.save_steps=[]"))
    assert (trainer.vla_micro, trainer.vl_micro) == (0, 8) and trainer.episodes == []
    lm = result.parts["loss_lm"]
    assert set(result.parts) == {"loss_lm"} and np.mean(lm[-5:]) < 0.85 * np.mean(lm[:5]), (lm[:5], lm[-5:])
    checkpoint = trainer.run_dir / "checkpoints" / "step_000040"
    assert (checkpoint / "model.safetensors").is_file() and not (trainer.run_dir / "norm_stats.json").exists()
    # Stopped at step 2 and resumed: the same samples, the same losses.
    straight, _ = train(vl_only(tmp_path / "a", "train.steps=4", "train.save_steps=[2]"))
    first, _ = train(vl_only(tmp_path / "b", "train.steps=2", "train.save_steps=[2]"))
    resumed, _ = train(vl_only(tmp_path / "b", "train.steps=4", "train.save_steps=[2]"))
    assert first.losses + resumed.losses == straight.losses
    with pytest.raises(ValueError, match="vision-language samples only.*scene_probe"):
        train(vl_only(tmp_path / "c", "train.steps=1", "scene_probe.weight=1.0"))


def test_the_exported_vlm_is_a_paligemma_directory_with_the_same_outputs(vl_only, tmp_path):
    _, trainer = train(vl_only(tmp_path / "run", "train.steps=4", "train.save_steps=[]"))
    checkpoint = trainer.run_dir / "checkpoints" / "step_000004"
    out = tmp_path / "hf"
    assert vlm_main(["export", str(checkpoint), "--out", str(out)]) == 0
    from transformers import AutoTokenizer, PaliGemmaForConditionalGeneration

    trained = PI0StyleVLA.from_pretrained(checkpoint).eval()
    exported = PaliGemmaForConditionalGeneration.from_pretrained(str(out)).eval()
    assert len(AutoTokenizer.from_pretrained(str(out))) == len(trainer.processor.tokenizer)
    torch.manual_seed(0)
    cfg = trained.config
    ids = torch.randint(5, 100, (1, cfg.tokens_per_image + 6))
    ids[0, : cfg.tokens_per_image] = cfg.image_token_id
    pixels = torch.rand(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        a = trained.vlm(input_ids=ids, pixel_values=pixels).logits
        b = exported(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(a, b)
    # A row starts from it as from the real PaliGemma: its weights, a new action expert.
    row = PI0StyleVLA.from_paligemma(out, {"action_horizon": cfg.action_horizon})
    with torch.no_grad():
        assert torch.equal(row.vlm(input_ids=ids, pixel_values=pixels).logits, a)


def test_every_comparison_row_builds_from_the_exported_mini_vlm_and_refuses_another(glyph_dir, tmp_path):
    from gf_training.catalogue_tokenizer import build_catalogue_tokenizer
    from gf_training.train import build_model

    tok = tmp_path / "tok"
    build_catalogue_tokenizer(tok)
    cfg = load_config("mini/vlm_names.yaml", [f"output_dir={tmp_path / 'vlm'}", *QUIET, f"model.tokenizer={tok}",
                                        f"cotrain.vl_dirs=[{glyph_dir}]", "cotrain.vl_weights=[]", "train.steps=1",
                                        "train.save_steps=[]",
                                        "train.batch_size=2", "train.micro_batch_size=2"])
    _, trainer = train(cfg)
    hf = tmp_path / "hf"
    assert vlm_main(["export", str(trainer.run_dir / "checkpoints" / "step_000001"), "--out", str(hf)]) == 0
    vlm_weights = PI0StyleVLA.from_pretrained(trainer.run_dir / "checkpoints" / "step_000001").vlm.state_dict()
    control = build_model(load_config("mini/scratch_full.yaml"))
    shapes = {k: v.shape for k, v in control.vlm.state_dict().items()}
    for row in ("vlm_full", "vlm_lora", "vlm_action", "cotrain_full", "discrete_full"):
        model = build_model(load_config(f"mini/{row}.yaml", [f"model.path={hf}"]))
        assert {k: v.shape for k, v in model.vlm.state_dict().items()} == shapes, row  # the control's architecture
        assert model.config.image_crop == control.config.image_crop and model.config.max_text_tokens == 24
        assert all(torch.equal(v, vlm_weights[k]) for k, v in model.vlm.state_dict().items()), row
    with pytest.raises(ValueError, match=r"disagrees with the PaliGemma directory.*text.hidden_size=256 \(the model there has"):
        build_model(load_config("mini/vlm_full.yaml", [f"model.path={hf}", "model.config.vlm.text.hidden_size=256"]))
    # The VLA-pre-training row: the pre-training starts from the VLM, the row from its checkpoint.
    pretrained = build_model(load_config("mini/vla_pretrain.yaml", [f"model.path={hf}"]))
    assert all(torch.equal(v, vlm_weights[k]) for k, v in pretrained.vlm.state_dict().items())
    with torch.no_grad():
        next(pretrained.parameters()).add_(1.0)  # as if pre-trained: the row must load these weights
    pretrained.save_pretrained(tmp_path / "pretrained")
    row = build_model(load_config("mini/vlapre_full.yaml", [f"model.path={tmp_path / 'pretrained'}"]))
    assert {k: v.shape for k, v in row.vlm.state_dict().items()} == shapes
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in row.state_dict().items())
    with pytest.raises(ValueError, match=r"disagrees with the checkpoint.*text.hidden_size=256"):
        build_model(load_config("mini/vlapre_full.yaml", [f"model.path={tmp_path / 'pretrained'}",
                                                          "model.config.vlm.text.hidden_size=256"]))
