"""VLAProcessor: SigLIP image preprocessing, PaliGemma prompt layout, the offline tiny tokenizer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from gf_policy.vla import VLAConfig, VLAProcessor, train_tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "Pick the cube and place it on grinning face",
    "Pick the cube and place it on red heart",
    "Pick the cube and place it on thumbs up",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tiny_tokenizer(TEXTS, vocab_size=120, out_dir=out)
    return out


def test_tiny_tokenizer_is_transformers_loadable(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("<image>") == 4
    assert len(tok) <= 120
    ids = tok.encode(TEXTS[1] + "\n", add_special_tokens=False)
    assert tok.decode(ids) == TEXTS[1] + "\n"  # newline is a real token, not <unk>


def test_prompt_layout(tokenizer_dir):
    cfg = VLAConfig.tiny()
    proc = VLAProcessor.from_pretrained(tokenizer_dir, cfg)
    ids, mask = proc.tokenize(["  Pick the cube and place it on red_heart\n", "Pick"])
    n_img = cfg.tokens_per_image
    assert ids.shape == mask.shape == (2, n_img + cfg.max_text_tokens)
    assert (ids[:, :n_img] == cfg.image_token_id).all()
    assert (ids[:, n_img] == proc.tokenizer.bos_token_id).all()
    text = proc.tokenizer.encode("Pick the cube and place it on red heart\n", add_special_tokens=False)
    n = n_img + 1 + len(text)
    assert ids[0, n_img + 1 : n].tolist() == text  # cleaned: stripped, "_" -> " ", one trailing newline
    assert mask[0, :n].all() and not mask[0, n:].any()
    assert (ids[0, n:] == proc.pad_token_id).all()  # right padding
    assert mask[1].sum() < mask[0].sum()


def test_long_instructions_are_truncated_with_one_warning(tokenizer_dir):
    import warnings

    from gf_policy.vla.processing import TruncatedInstructionWarning

    cfg = VLAConfig.tiny(max_text_tokens=6)
    proc = VLAProcessor.from_pretrained(tokenizer_dir, cfg)
    with pytest.warns(TruncatedInstructionWarning, match="exceed max_text_tokens=6"):
        ids, mask = proc.tokenize(" ".join(TEXTS))
    assert ids.shape == (1, cfg.tokens_per_image + 6) and mask.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proc.tokenize(" ".join(TEXTS))  # once per processor, not once per batch
        VLAProcessor.from_pretrained(tokenizer_dir, VLAConfig.tiny()).tokenize(TEXTS[0])  # fits: no warning


def test_images_resized_and_siglip_normalised(tokenizer_dir):
    cfg = VLAConfig.tiny()
    proc = VLAProcessor.from_pretrained(tokenizer_dir, cfg)
    white = np.full((240, 320, 3), 255, np.uint8)
    black = np.zeros((32, 32, 3), np.uint8)
    out = proc([white, black], ["a", "b"])
    assert out["pixel_values"].shape == (2, 1, 3, 32, 32)
    assert torch.allclose(out["pixel_values"][0], torch.ones(1, 3, 32, 32))
    assert torch.allclose(out["pixel_values"][1], -torch.ones(1, 3, 32, 32))
    # channel order is kept: a pure red image has R = 1, G = B = -1
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    px = proc.preprocess_image(red)
    assert torch.allclose(px[0], torch.ones(32, 32)) and torch.allclose(px[1:], -torch.ones(2, 32, 32))
    # a (B, H, W, 3) array is a batch; a single (H, W, 3) array is one sample
    assert proc.preprocess_images(np.stack([black, black, black])).shape == (3, 1, 3, 32, 32)
    assert proc.preprocess_images(black).shape == (1, 1, 3, 32, 32)


def test_multi_camera_and_bad_input(tokenizer_dir):
    cfg = VLAConfig.tiny(num_images=2)
    proc = VLAProcessor.from_pretrained(tokenizer_dir, cfg)
    img = np.zeros((32, 32, 3), np.uint8)
    out = proc([[img, img]], "Pick")
    assert out["pixel_values"].shape == (1, 2, 3, 32, 32)
    assert (out["input_ids"][0] == cfg.image_token_id).sum() == 2 * cfg.tokens_per_image
    with pytest.raises(ValueError, match="camera"):
        proc([img], "Pick")
    with pytest.raises(ValueError, match="uint8"):
        proc.preprocess_image(img.astype(np.float32))
    with pytest.raises(ValueError, match="instructions"):
        VLAProcessor.from_pretrained(tokenizer_dir, VLAConfig.tiny())([img, img], ["only one"])
