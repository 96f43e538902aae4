"""Attention maps: the description tokens' attention to image patches, drawn as a PNG whose heat
sits on a planted target region of a hand-constructed model; attention mass on cards; the
camera model that projects card positions; the gf-attention command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from gf_eval.camera import look_at_camera, positions_left_to_right, quad_coverage
from gf_policy.vla import PI0StyleVLA, VLAConfig, VLAProcessor, train_tiny_tokenizer
from gf_training.attention import (
    AttentionMassProbe,
    ModelEntry,
    attention_figure,
    attention_maps,
    attention_mass,
    description_positions,
    main,
    select_maps,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

INSTRUCTION = "Pick the cube and place it on red heart."
DESCRIPTION = "red heart"
SIZE = 224  # camera image; the tiny model sees it at 32 px = a 4 x 4 patch grid
# Cards as image quads (corners, pixels): the target covers patch rows 0-1, columns 2-3.
QUADS = np.array([
    [[112, 0], [224, 0], [224, 112], [112, 112]],  # target: top right
    [[0, 168], [56, 168], [56, 224], [0, 224]],  # distractor: bottom left
    [[168, 168], [224, 168], [224, 224], [168, 224]],  # distractor: bottom right
], dtype=float)


def planted_model(tmp_path) -> tuple[PI0StyleVLA, VLAProcessor]:
    """A tiny VLA whose text tokens attend (almost) only to bright image patches.

    Vision: a patch's features encode only the sign of its mean brightness (patch embedding =
    mean, encoder layers contribute nothing, LayerNorm maps it to +v / -v); the projector maps
    that to +/- alpha on text dimension 0. Text tokens all embed to dimension 1. In every Gemma
    layer the query of a text token (dim 1) meets the key of an image token (dim 0) on the last
    head dimension (RoPE's slowest frequency, so positions hardly matter): bright patches get a
    large positive score, dark ones a large negative one, text tokens zero; residual updates
    are zeroed so every layer sees the same states."""
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(VLAConfig.tiny(attn_implementation="eager")).eval()
    vision, lm = model.vlm.model.vision_tower, model.vlm.model.language_model
    with torch.no_grad():
        for p in model.vlm.parameters():
            p.zero_()
        emb = vision.embeddings.patch_embedding
        emb.weight[0] = 1.0 / emb.weight[0].numel()  # feature 0 = mean pixel value of the patch
        vision.post_layernorm.weight.fill_(1.0)
        ln = torch.nn.functional.layer_norm(torch.eye(32)[0], (32,))  # LayerNorm of (1, 0, ..., 0)
        model.vlm.model.multi_modal_projector.linear.weight[0] = 4.0 * ln / ln.dot(ln)
        lm.embed_tokens.weight[:, 1] = 1.0
        last = lm.layers[0].self_attn.head_dim - 1
        for layer in lm.layers:
            for head in range(2):
                layer.self_attn.q_proj.weight[head * 32 + last, 1] = 2.0
            layer.self_attn.k_proj.weight[last, 0] = 2.0
    tok = train_tiny_tokenizer([INSTRUCTION, "Pick the cube and place it on rocket."], 512, tmp_path / "tok")
    return model, VLAProcessor(tok, model.config)


def planted_image() -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[0:112, 112:224] = 255  # the bright (target) region
    return image


def test_description_tokens_are_found_by_character_offsets(tmp_path):
    _, processor = planted_model(tmp_path)
    positions = description_positions(processor, INSTRUCTION, DESCRIPTION)
    ids = processor.tokenize(INSTRUCTION)[0][0]
    text = processor.tokenizer.decode(ids[positions])
    # the description's tokens (a token may run on into the punctuation after it)
    assert text.strip().rstrip(".").replace(" ", "") == "redheart", text
    assert min(positions) > processor.config.tokens_per_image  # after the image tokens and BOS
    with pytest.raises(ValueError, match="does not occur"):
        description_positions(processor, INSTRUCTION, "rocket")


def test_attention_png_is_hottest_on_the_planted_region(tmp_path):
    model, processor = planted_model(tmp_path)
    maps = attention_maps(model, processor, planted_image(), INSTRUCTION, DESCRIPTION)
    assert maps.shape == (2, 2, 4, 4)  # layers, heads, grid
    mean = maps.mean(axis=(0, 1))
    assert mean[:2, 2:].sum() > 0.99  # nearly all attention on the four bright patches

    result = attention_figure([ModelEntry("planted", model, processor), ModelEntry("again", model, processor)],
                              planted_image(), INSTRUCTION, DESCRIPTION, tmp_path / "fig.png", quads=QUADS,
                              target_index=0, layers="all", heads="mean")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    png = np.asarray(Image.open(result.overlays["planted"]).convert("RGB")).astype(int)
    assert png.shape == (SIZE, SIZE, 3)
    heat = png[..., 0] - png[..., 2]  # jet colour map: red = hot, blue = cold
    inside = heat[8:104, 120:216].mean()
    outside = np.concatenate([heat[120:, :].ravel(), heat[:104, :104].ravel()]).mean()
    assert inside > outside + 100, (inside, outside)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert y < 112 and x >= 112
    mass = result.mass["planted"]
    assert mass["target"] > 0.99 and mass["distractors"] < 0.01 and mass["target_share"] > 0.99


def test_attention_mass_and_panel_selection():
    heat = np.zeros((4, 4))
    heat[3, 0] = 0.6  # on the first distractor
    heat[0, 3] = 0.2  # on the target
    mass = attention_mass(heat, QUADS, SIZE, target_index=0)
    assert mass["target"] == pytest.approx(0.2) and mass["distractors"] == pytest.approx(0.6)
    assert mass["target_share"] == pytest.approx(0.25)
    cover = quad_coverage(QUADS[0], SIZE, 4)
    assert cover[:2, 2:].min() == 1.0 and cover.sum() == pytest.approx(4.0)
    maps = np.random.default_rng(0).random((3, 2, 4, 4))
    names, panels = select_maps(maps, "all", "mean")
    assert len(names) == 3 and panels.shape == (3, 4, 4)
    names, panels = select_maps(maps, "1", "all")
    assert names == ["layer 1, head 0", "layer 1, head 1"]
    assert np.allclose(panels[1], maps[1, 1])
    with pytest.raises(ValueError):
        select_maps(maps, "5", "mean")


def test_camera_model_matches_the_simulators_policy_camera():
    """The analytic look-at camera reproduces the matrices the simulator reports (224 px)."""
    camera = look_at_camera((-0.15, 0.49, 0.564), (0.15, 0.65, 0.0), 1.2, 224, 224)
    sim_intrinsics = np.array([[163.70993042, 0, 112], [0, 163.70993042, 112], [0, 0, 1]])
    sim_extrinsics = np.array([
        [4.70588148e-01, -8.82353008e-01, 1.49011612e-08, 5.02941132e-01],
        [-7.55663991e-01, -4.03020740e-01, -5.16281068e-01, 3.75313073e-01],
        [4.55542147e-01, 2.42955744e-01, -8.56419206e-01, 4.32303458e-01],
        [0, 0, 0, 1],
    ])
    assert np.allclose(camera.intrinsics, sim_intrinsics, atol=1e-4)
    assert np.allclose(camera.extrinsics, sim_extrinsics, atol=1e-6)
    # Cards at y = 0.90 / 0.70 / 0.50 appear left to right in the image.
    trial = {"cards": [{"x": 0.2, "y": y} for y in (0.5, 0.9, 0.7)], "geometry": {}}
    assert positions_left_to_right(trial, camera) == [1, 2, 0]


def test_mass_probe_logs_over_training_episodes(tmp_path):
    model, processor = planted_model(tmp_path)

    class Episode:  # first frame + trial, as DecodedEpisode carries them
        images = planted_image()[None]
        instruction = INSTRUCTION
        trial = {"target_index": 0, "cards": [{"description": DESCRIPTION, "x": 0.2, "y": 0.9},
                                              {"description": "rocket", "x": 0.2, "y": 0.7},
                                              {"description": "star", "x": 0.2, "y": 0.5}], "geometry": {}}

    probe = AttentionMassProbe(processor, [(Episode.images[0], INSTRUCTION, DESCRIPTION, QUADS, 0)])
    values = probe.measure(model)
    assert values["target_share"] > 0.99
    assert AttentionMassProbe.from_episodes([], processor) is None


def test_gf_attention_command(tmp_path, capsys):
    model, processor = planted_model(tmp_path)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt, processor=processor)
    image_path = tmp_path / "camera.png"
    Image.fromarray(planted_image()).save(image_path)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--trial" in capsys.readouterr().out
    out = tmp_path / "att" / "a.png"
    # The trial gives instruction, description and card positions; the image replaces the render.
    assert main([str(ckpt), str(ckpt), "--labels", "pre-trained,fine-tuned", "--trial", "Val:3", "--image",
                 str(image_path), "--out", str(out), "--heads", "all"]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert set(summary["mass"]) == {"pre-trained", "fine-tuned"} and out.exists()
    assert (tmp_path / "att" / "a_pre-trained.png").exists()
    with pytest.raises(SystemExit):
        main([str(ckpt), "--trial", "Val"])


def test_attention_mass_is_logged_during_training(tmp_path, monkeypatch):
    from gf_eval.trials import make_trial
    from gf_training.config import load_config
    from gf_training.data import synthetic_episodes
    from gf_training.train import Trainer

    episodes = synthetic_episodes(num_episodes=2, length=6, image_size=32)
    for i, ep in enumerate(episodes):  # give them the trials a demo recording carries
        trial = make_trial("Train", i)
        ep.trial, ep.instruction = trial.to_dict(), trial.instruction
    logged = []
    monkeypatch.setattr(Trainer, "_log", lambda self, values: logged.append(values))
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "logging.progress=false", "logging.tensorboard=false",
                               "train.steps=2", "train.save_steps=[]", "logging.attention_every=1",
                               "train.log_every=100"])
    trainer = Trainer(cfg, episodes).setup()
    trainer.run()
    mass = [v for v in logged if "attention/target_share" in v]
    assert len(mass) == 2 and all(0.0 <= v["attention/target_share"] <= 1.0 for v in mass)
    assert all(v["attention/target"] >= 0 and v["attention/distractors"] >= 0 for v in mass)


@pytest.mark.slow
def test_gf_attention_renders_the_trial_with_the_simulator(tmp_path):
    model, processor = planted_model(tmp_path)
    model.save_pretrained(tmp_path / "ckpt", processor=processor)
    out = tmp_path / "sim.png"
    assert main([str(tmp_path / "ckpt"), "--trial", "Val:3", "--out", str(out)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["trial"].startswith("Val-0003") and out.exists()
    image = np.asarray(Image.open(tmp_path / "sim_ckpt.png"))
    assert image.shape == (224, 224, 3)
