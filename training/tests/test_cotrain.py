"""Co-training with vision-language data: reproducible generators with a manifest (glyphs; the
tabletop scene labelling, and the simulator-rendered scenes as a slow test), the prefix-LM batch
layout, the LM loss equal to Hugging Face PaliGemma's, greedy decoding consistent with it, and a
co-training run whose action and language losses both fall."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gf_eval.camera import look_at_camera
from gf_eval.trials import make_trial
from gf_policy.vla import PI0StyleVLA, VLAConfig, VLAProcessor, train_tiny_tokenizer
from gf_policy.vla.testing import make_batch
from gf_training.config import load_config
from gf_training.train import train
from gf_training.vl_data import (
    ALL_EMOJIS,
    VLCollator,
    VLDataset,
    catalogue_entries,
    cube_sample,
    generate_cards,
    generate_glyphs,
    main,
    read_vl_dir,
    tabletop_sample,
    which_sample,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

QUIET = ["logging.progress=false", "logging.tensorboard=false"]


def test_glyph_data_is_reproducible_with_a_manifest(glyph_dir, tmp_path):
    info, records = read_vl_dir(glyph_dir)
    assert info["generator"] == "glyphs" and info["split"] == "gf-default-v1" and info["lists"] == ["Train"]
    assert info["count"] == len(records) == 100  # one image per Train emoji
    first = records[0]
    assert first.answer == "basketball" and first.question.endswith(("?", ".")) and first.emoji_ids == ["1f3c0"]
    # the same command elsewhere gives the same bytes; an interrupted run completes identically
    again = tmp_path / "again"
    assert main(["glyphs", "--out", str(again), "--per-emoji", "1", "--size", "32", "--no-progress"]) == 0
    assert (again / "manifest.jsonl").read_text() == (glyph_dir / "manifest.jsonl").read_text()
    assert (again / "images" / "000007.png").read_bytes() == (glyph_dir / "images" / "000007.png").read_bytes()
    (again / "images" / "000007.png").unlink()
    lines = (again / "manifest.jsonl").read_text().splitlines()
    (again / "manifest.jsonl").write_text("\n".join(lines[:50]) + "\n")
    generate_glyphs(again, per_emoji=1, size=32, seed=0)
    assert (again / "manifest.jsonl").read_text() == (glyph_dir / "manifest.jsonl").read_text()
    assert (again / "images" / "000007.png").read_bytes() == (glyph_dir / "images" / "000007.png").read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        generate_glyphs(again, per_emoji=1, size=32, seed=1)
    shutil.rmtree(again)


def test_the_all_list_is_the_whole_catalogue_with_the_splits_lists_first(tmp_path):
    from gf_eval.catalog import load_catalog
    from gf_eval.splits import load_splits

    splits = load_splits("gf-default-v1")
    everything = catalogue_entries(splits)
    listed = [e.id for name in ("Train", "Val", "Hard") for e in splits.entries(name)]
    assert [e.id for e in everything[:len(listed)]] == listed
    assert sorted(e.id for e in everything) == sorted(e.id for e in load_catalog().emojis)
    rest = everything[len(listed):]
    assert all(e.description == e.name for e in rest) and len(rest) == len(load_catalog()) - len(listed)
    # cards of every catalogue emoji: 1377 samples, each answer the emoji's description
    out = tmp_path / "cards"
    assert main(["cards", "--lists", ALL_EMOJIS, "--out", str(out), "--per-emoji", "1", "--size", "48", "--no-progress"]) == 0
    info, records = read_vl_dir(out)
    assert info["lists"] == [ALL_EMOJIS] and len(records) == len(everything)
    assert [r.answer for r in records] == [e.description for e in everything]
    assert {r.question for r in records} >= {"caption en", "What's in the image?"}


def test_cards_show_the_emoji_upright_on_a_white_card_at_a_random_scale(tmp_path):
    from PIL import Image

    out = generate_cards(tmp_path / "cards", per_emoji=2, size=64, seed=0)
    info, records = read_vl_dir(out)
    assert info["generator"] == "cards" and len(records) == 200
    fractions = [r.meta["emoji_fraction"] for r in records]
    assert 0.15 <= min(fractions) < 0.3 and 0.75 < max(fractions) <= 0.9
    small = min(records, key=lambda r: r.meta["emoji_fraction"])
    image = np.asarray(Image.open(out / small.image).convert("RGB")).astype(int)
    assert (image[:4] == 255).all() and (image[32] != 255).any()  # white border, the emoji in the middle


def test_table_cards_show_the_card_on_a_table_at_the_policy_cameras_scale(tmp_path):
    """gf-vl-data tablecards: a white card 24-38 px across (of 128) on a wood-coloured table, its
    emoji at the benchmark's 1/4 of the card, answered with the emoji's description."""
    from PIL import Image

    out = main_generate(["tablecards", "--per-emoji", "1", "--size", "128", "--out", str(tmp_path / "tc"),
                         "--no-progress"])
    info, records = read_vl_dir(out)
    assert info["generator"] == "tablecards" and len(records) == 100
    from gf_eval.splits import load_splits

    entries = {e.id: e for e in load_splits("gf-default-v1").splits["Train"]}
    for r in records:
        assert r.answer == entries[r.emoji_ids[0]].description
        image = np.asarray(Image.open(out / r.image).convert("RGB")).astype(int)
        white = (image > 235).all(axis=2)
        assert 0.7 * 24**2 * 0.7 < white.sum() < 1.3 * 38**2  # the card, turned and foreshortened
        table = image[~white].mean(axis=0)
        assert table[0] > table[1] > table[2]  # wood: red over green over blue
    again, _ = read_vl_dir(main_generate(["tablecards", "--per-emoji", "1", "--size", "128", "--out",
                                          str(tmp_path / "again"), "--no-progress"]))
    assert (out / records[7].image).read_bytes() == (tmp_path / "again" / records[7].image).read_bytes()


def main_generate(argv):
    assert main(argv) == 0
    return Path(argv[argv.index("--out") + 1])


class FakeTask:
    """What tabletop_sample needs of the simulator: reset, image, camera matrices."""

    def __init__(self):
        self.camera = look_at_camera((-0.15, 0.49, 0.564), (0.15, 0.65, 0.0), 1.2, 64, 64)
        self.unwrapped = self

    def reset(self, seed, options):
        self.trial = options["trial"]

    def policy_image(self):
        return np.zeros((64, 64, 3), np.uint8)

    def camera_intrinsics(self):
        return self.camera.intrinsics

    def camera_extrinsics(self):
        return self.camera.extrinsics


def test_tabletop_answers_name_the_cards_left_to_right_as_the_camera_sees_them():
    trial = make_trial("Train", 5)
    _, question, answer, meta = tabletop_sample(FakeTask(), trial, 5, seed=0)
    # cards are laid out at y = 0.90 / 0.70 / 0.50; the camera sees y = 0.90 on the left
    expected = [trial.cards[i].description for i in (0, 1, 2)]
    assert answer == f"left: {expected[0]}; middle: {expected[1]}; right: {expected[2]}"
    assert meta["left_to_right"] == [0, 1, 2] and "left to right" in question
    # a mirrored camera (looking from the other side of the table) reverses the order
    mirrored = FakeTask()
    mirrored.camera = look_at_camera((0.55, 0.91, 0.564), (0.25, 0.75, 0.0), 1.2, 64, 64)
    _, _, answer2, meta2 = tabletop_sample(mirrored, trial, 5, seed=0)
    assert meta2["left_to_right"] == [2, 1, 0] and answer2.startswith(f"left: {expected[2]};")


def test_which_card_answers_where_the_asked_emoji_is_as_the_camera_sees_it():
    trial = make_trial("Train", 5)
    answers = {}
    for index in range(30):
        _, question, answer, meta = which_sample(FakeTask(), trial, index, seed=0)
        card = meta["card"]
        assert trial.cards[card].description in question
        answers[card] = answer
    assert answers == {0: "left", 1: "middle", 2: "right"}  # the camera sees y = 0.90 on the left
    mirrored = FakeTask()
    mirrored.camera = look_at_camera((0.55, 0.91, 0.564), (0.25, 0.75, 0.0), 1.2, 64, 64)
    _, _, answer, meta = which_sample(mirrored, trial, 0, seed=0)
    assert answer == {0: "right", 1: "middle", 2: "left"}[meta["card"]]


@pytest.mark.slow
def test_tabletop_scenes_rendered_by_the_simulator(tmp_path):
    from gf_training.vl_data import generate_tabletop

    out = generate_tabletop(tmp_path / "tabletop", scenes=2, size=128, seed=0)
    info, records = read_vl_dir(out)
    assert info["generator"] == "tabletop" and len(records) == 2
    for r in records:
        trial = r.meta["trial"]
        names = [trial["cards"][i]["description"] for i in r.meta["left_to_right"]]
        assert r.answer == f"left: {names[0]}; middle: {names[1]}; right: {names[2]}"
        image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / r.image))
        assert image.shape == (128, 128, 3) and image.std() > 10


@pytest.mark.slow
def test_which_card_scenes_rendered_by_the_simulator(tmp_path):
    from gf_training.vl_data import generate_which

    out = generate_which(tmp_path / "which", scenes=2, size=128, seed=0)
    info, records = read_vl_dir(out)
    assert info["generator"] == "which" and len(records) == 2
    for r in records:
        trial = r.meta["trial"]
        assert trial["cards"][r.meta["card"]]["description"] in r.question
        assert r.answer == ("left", "middle", "right")[r.meta["left_to_right"].index(r.meta["card"])]
    # The generation may grow and shrink in place: scene i is the same scene whatever the size.
    first_png = (out / records[0].image).read_bytes()
    _, grown = read_vl_dir(generate_which(out, scenes=3, size=128, seed=0))
    assert grown[:2] == records and len(grown) == 3 and (out / records[0].image).read_bytes() == first_png
    _, shrunk = read_vl_dir(generate_which(out, scenes=1, size=128, seed=0))
    assert shrunk == records[:1] and sorted(p.name for p in (out / "images").iterdir()) == ["000000.png"]
    with pytest.raises(ValueError, match="other settings"):
        generate_which(out, scenes=2, size=96, seed=0)


def test_cube_answers_give_its_image_position_in_percent():
    trial = make_trial("Train", 5)
    task = FakeTask()
    top = (*trial.cube_xy, 2 * trial.geometry.cube_half_size)
    task.camera = look_at_camera((-0.15, 0.49, 0.564), top, 1.2, 64, 64)  # aimed at the cube's top face
    _, question, answer, meta = cube_sample(task, trial, 5, seed=0)
    _, x, _, y = answer.split()
    assert {int(x), int(y)} <= {49, 50} and "cube" in question.lower()  # the centre, a bin boundary
    # The camera sees larger y further left (see the tabletop test): a cube moved 5 cm that way.
    moved = dataclasses.replace(trial, cube_xy=(trial.cube_xy[0], trial.cube_xy[1] + 0.05))
    _, _, answer2, meta2 = cube_sample(task, moved, 5, seed=0)
    assert int(answer2.split()[1]) <= int(x) - 2 and meta2["cube_uv"][0] < meta["cube_uv"][0] - 1


def pixel_of(answer: str, size: int) -> tuple[int, int]:
    _, x, _, y = answer.split()
    return int((int(x) + 0.5) / 100 * size), int((int(y) + 0.5) / 100 * size)


@pytest.mark.slow
def test_cube_scenes_rendered_by_the_simulator_point_at_the_blue_cube(tmp_path):
    from PIL import Image

    from gf_training.vl_data import generate_cube

    out = generate_cube(tmp_path / "cube", scenes=3, size=128, seed=0)
    info, records = read_vl_dir(out)
    assert info["generator"] == "cube" and len(records) == 3
    images = [np.asarray(Image.open(out / r.image).convert("RGB")).astype(int) for r in records]
    for i, r in enumerate(records):
        u, v = pixel_of(r.answer, 128)
        red, _, blue = images[i][v, u]
        assert blue > red + 40, f"{r.id}: {r.answer} is not on the cube's blue top face ({images[i][v, u]})"
        for j, other in enumerate(records):  # where another scene's cube is, this one shows the table
            if abs(other.meta["cube_uv"][0] - r.meta["cube_uv"][0]) + abs(other.meta["cube_uv"][1] - r.meta["cube_uv"][1]) > 12:
                red, _, blue = images[j][v, u]
                assert blue < red


def tiny_processor(tmp_path, texts):
    cfg = VLAConfig.tiny()
    return VLAProcessor(train_tiny_tokenizer(texts, 512, tmp_path / "tok"), cfg)


def test_the_models_crop_applies_to_camera_views_only(glyph_dir, tmp_path):
    from gf_training.vl_format import _write

    crop = [0.0, 0.0, 0.5, 0.5]
    glyphs = VLDataset([glyph_dir], image_size=32, image_crop=crop)
    assert np.array_equal(glyphs[0]["image"], VLDataset([glyph_dir], image_size=32)[0]["image"])  # seen whole
    scenes = tmp_path / "scenes"  # the same image as if the simulator had rendered it
    shutil.copytree(glyph_dir, scenes)
    info, records = read_vl_dir(scenes)
    _write(scenes, {r.id: r for r in records}, {**info, "generator": "tabletop"})
    cropped = VLDataset([scenes], image_size=32, image_crop=crop)[0]["image"]
    full = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(scenes / records[0].image).convert("RGB"))
    from gf_bringup.images import fit_image

    assert np.array_equal(cropped, fit_image(full, 32, crop)) and not np.array_equal(cropped, glyphs[0]["image"])


def test_collator_builds_prefix_lm_batches(glyph_dir, tmp_path):
    ds = VLDataset([glyph_dir], image_size=32)
    processor = tiny_processor(tmp_path, ds.texts())
    batch = VLCollator(processor, max_text_tokens=24)([ds[0], ds[1]])
    cfg, tok = processor.config, processor.tokenizer
    assert batch["vl_pixel_values"].shape == (2, 1, 3, 32, 32)
    ids, target = batch["vl_input_ids"][0], batch["vl_target_mask"][0]
    assert (ids[: cfg.tokens_per_image] == cfg.image_token_id).all() and ids[cfg.tokens_per_image] == tok.bos_token_id
    answer = ids[target]
    assert tok.decode(answer[:-1]).strip() == ds[0]["answer"] and answer[-1] == tok.eos_token_id
    assert not target[: cfg.tokens_per_image + 3].any()  # image, BOS and question are the prefix


def test_lm_loss_equals_paligemmas_and_greedy_decoding_follows_it():
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(VLAConfig.tiny()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.2)
    b = make_batch(model.config, batch_size=2, text_lengths=[12, 8])
    ids, attn = b["input_ids"], b["attention_mask"]
    n_img = model.config.tokens_per_image
    target = torch.zeros_like(attn)
    target[0, n_img + 6 : n_img + 13] = True
    target[1, n_img + 4 : n_img + 9] = True
    vl = {"vl_pixel_values": b["pixel_values"], "vl_input_ids": ids, "vl_attention_mask": attn,
          "vl_target_mask": target}
    ours = model.compute_lm_loss(vl)
    with torch.no_grad():
        ref = model.vlm(input_ids=ids, pixel_values=b["pixel_values"][:, 0], attention_mask=attn.long(),
                        token_type_ids=target.long()).logits
    predicts = target[:, 1:]
    expected = torch.nn.functional.cross_entropy(ref[:, :-1][predicts].float(), ids[:, 1:][predicts])
    assert torch.allclose(ours, expected, atol=1e-5)

    # greedy decoding with the KV cache = the argmax chain of PaliGemma's full forward
    prompt_len = n_img + 6
    prompt_ids, prompt_mask = ids[:, :prompt_len], attn[:, :prompt_len]
    generated = model.generate_text(b["pixel_values"], prompt_ids, prompt_mask, max_new_tokens=5, eos_token_id=None)
    for row in range(2):
        seq = torch.cat([prompt_ids[row], torch.tensor(generated[row])])[None]
        types = torch.cat([torch.zeros(prompt_len), torch.ones(5)]).long()[None]
        with torch.no_grad():
            logits = model.vlm(input_ids=seq, pixel_values=b["pixel_values"][row : row + 1, 0],
                               attention_mask=torch.ones_like(seq), token_type_ids=types).logits[0]
        assert logits[prompt_len - 1 : prompt_len + 4].argmax(-1).tolist() == generated[row]


def test_cotraining_lowers_both_losses(glyph_dir, tmp_path):
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", *QUIET, "train.steps=40", "train.save_steps=[]",
                               "train.batch_size=8", "train.micro_batch_size=8", "optim.warmup_steps=4",
                               f"cotrain.vl_dirs=[{glyph_dir}]", "cotrain.ratio=0.5", "cotrain.max_text_tokens=24"])
    result, trainer = train(cfg)
    assert (trainer.vla_micro, trainer.vl_micro) == (4, 4)
    lm, flow = result.parts["loss_lm"], result.parts["loss_flow"]
    assert np.mean(lm[-5:]) < 0.85 * np.mean(lm[:5]), (lm[:5], lm[-5:])
    assert np.mean(flow[-5:]) < np.mean(flow[:5])
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    # the offline tokenizer learned the VL answers too (no unknown tokens in them)
    tok = trainer.processor.tokenizer
    assert tok.unk_token_id not in tok.encode("basketball", add_special_tokens=False)
    with pytest.raises(ValueError, match="at least one of each"):
        train(load_config("tiny", [f"output_dir={tmp_path / 'r2'}", *QUIET, "train.steps=1", "train.batch_size=2",
                                   "train.micro_batch_size=2", f"cotrain.vl_dirs=[{glyph_dir}]", "cotrain.ratio=0.1"]))
    with pytest.raises(ValueError, match="vl_dirs"):
        load_config("tiny", ["cotrain.ratio=0.5"])
    json.dumps(result.parts)  # plain floats, loggable


def test_cotraining_resumes_exactly(glyph_dir, tmp_path):
    common = [*QUIET, "train.batch_size=4", "train.micro_batch_size=2", "optim.decay_steps=4",
              f"cotrain.vl_dirs=[{glyph_dir}]", "cotrain.ratio=0.5", "cotrain.max_text_tokens=24"]
    straight, _ = train(load_config("tiny", [f"output_dir={tmp_path / 'a'}", "train.steps=4", "train.save_steps=[2]",
                                             *common]))
    first, _ = train(load_config("tiny", [f"output_dir={tmp_path / 'b'}", "train.steps=2", "train.save_steps=[2]",
                                          *common]))
    resumed, _ = train(load_config("tiny", [f"output_dir={tmp_path / 'b'}", "train.steps=4", "train.save_steps=[2]",
                                            *common]))
    assert first.losses + resumed.losses == straight.losses  # same action and VL samples, same noise


DDP_WORKER = """
import sys, torch
from gf_training.config import load_config
from gf_training.train import Trainer

out, vl = sys.argv[1], sys.argv[2]
cfg = load_config("tiny", [f"output_dir={out}/run", "train.steps=2", "train.save_steps=[]", "train.batch_size=8",
                           "train.micro_batch_size=4", "logging.progress=false", "logging.tensorboard=false",
                           f"distributed.init_method=file://{out}/store", f"cotrain.vl_dirs=[{vl}]",
                           "cotrain.ratio=0.5", "cotrain.max_text_tokens=24",
                           "model.config={discrete_actions: parallel, knowledge_insulation: true}"])
trainer = Trainer(cfg).setup()
result = trainer.run()
torch.save({"state": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "parts": result.parts}, f"{out}/rank{trainer.info.rank}.pt")
trainer.close()
"""


@pytest.mark.slow
def test_cotraining_with_discrete_targets_under_ddp(glyph_dir, tmp_path):
    """Two gloo ranks: VL batches, the discrete head and knowledge insulation in one DDP forward."""
    import subprocess
    import sys

    (tmp_path / "worker.py").write_text(DDP_WORKER)
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", GLOO_SOCKET_IFNAME="lo",
                   OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path), str(glyph_dir)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert {"loss_flow", "loss_discrete", "loss_lm"} <= set(a["parts"])


def test_vl_weights_set_each_directorys_share_of_the_vl_batches(glyph_dir, tmp_path):
    """cotrain.vl_weights: [0, 1] draws every VL sample from the second directory, however large
    the first; a weight per directory is required."""
    from gf_training.train import Trainer

    second = tmp_path / "second"
    generate_glyphs(second, per_emoji=1, lists=["Val"], size=32, seed=1, progress=False)
    second_questions = {(r.question, r.answer) for r in read_vl_dir(second)[1]}
    first_questions = {(r.question, r.answer) for r in read_vl_dir(glyph_dir)[1]}
    assert not second_questions & first_questions
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "data.synthetic=null", "cotrain.ratio=1.0",
                               f"cotrain.vl_dirs=[{glyph_dir},{second}]", "cotrain.vl_weights=[0,1]",
                               "train.micro_batch_size=4", "train.batch_size=4", "logging.progress=false",
                               "logging.tensorboard=false"])
    trainer = Trainer(cfg).setup()
    drawn = [trainer.vl_dataset[i] for i, _ in zip(trainer.vl_loader.sampler, range(40))]
    assert all((d["question"], d["answer"]) in second_questions for d in drawn)
    with pytest.raises(ValueError, match="vl_weights"):
        load_config("tiny", [f"cotrain.vl_dirs=[{glyph_dir},{second}]", "cotrain.ratio=1.0", "cotrain.vl_weights=[1]"])


def test_vl_training_shows_scenes_cropped_once_and_glyphs_whole(glyph_dir, tmp_path):
    """The trainer's VL batches: a camera view as the checkpoint's processor crops the frame at
    inference (once), a glyph uncropped."""
    from PIL import Image

    from gf_training.train import Trainer
    from gf_training.vl_format import _write

    scenes = tmp_path / "scenes"
    shutil.copytree(glyph_dir, scenes)
    info, records = read_vl_dir(scenes)
    _write(scenes, {r.id: r for r in records}, {**info, "generator": "which"})
    crop = [0.1, 0.15, 0.85, 0.8]
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "data.synthetic=null", "cotrain.ratio=1.0",
                               f"cotrain.vl_dirs=[{scenes},{glyph_dir}]", f"model.config.image_crop={crop}",
                               "train.micro_batch_size=8", "train.batch_size=8", "logging.progress=false",
                               "logging.tensorboard=false"])
    trainer = Trainer(cfg).setup()
    whole = trainer.processor.for_fitted_images()

    def pixels(directory, processor):
        return [processor.preprocess_image(np.asarray(Image.open(directory / r.image).convert("RGB")))
                for r in read_vl_dir(directory)[1]]

    scene_views, glyph_views = pixels(scenes, trainer.processor), pixels(glyph_dir, whole)
    batch = next(iter(trainer.vl_loader))
    kinds = []
    for image in batch["vl_pixel_values"][:, 0]:
        kinds.append("scene" if any(torch.equal(image, v) for v in scene_views) else
                     "glyph" if any(torch.equal(image, v) for v in glyph_views) else "neither")
    assert "neither" not in kinds and {"scene", "glyph"} <= set(kinds)
