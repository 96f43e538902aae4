"""The convolutional stem (``vision_config.conv_stem``): it replaces the patch embedding, keeps the
image tokens, finds a small object wherever it lies, and survives every way a model is saved and
loaded (our checkpoints, a Hugging Face PaliGemma directory)."""

from __future__ import annotations

import json

import pytest
import torch

from gf_policy.vla import PI0StyleVLA, VLAConfig
from gf_policy.vla.vision_stem import ConvStem

torch.set_num_threads(1)


def stem_config(widths=(4, 8, 8), **overrides) -> VLAConfig:
    base = VLAConfig.tiny(**overrides)
    vlm = json.loads(json.dumps(base.vlm))
    vlm["vision_config"]["conv_stem"] = list(widths)
    return base.replace(vlm=vlm)


def image_features(model: PI0StyleVLA, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.vlm.model.get_image_features(pixel_values=pixels).pooler_output


def test_the_stem_replaces_the_patch_embedding_and_keeps_the_tokens():
    plain = PI0StyleVLA.from_config(VLAConfig.tiny()).eval()
    model = PI0StyleVLA.from_config(stem_config()).eval()
    embedding = model.vlm.model.vision_tower.embeddings.patch_embedding
    assert isinstance(embedding, ConvStem)
    assert not isinstance(plain.vlm.model.vision_tower.embeddings.patch_embedding, ConvStem)
    pixels = torch.rand(2, 3, 32, 32)
    assert image_features(model, pixels).shape == image_features(plain, pixels).shape  # 16 tokens each
    assert model.config.tokens_per_image == plain.config.tokens_per_image


def test_a_small_mark_moved_within_its_patch_gives_the_same_token():
    """Max-pooling: a 2 px mark anywhere inside one 8 px cell excites the same filters, so with
    ReLU and pooling the cell's stem output hardly depends on where in it the mark lies; the
    linear patch embedding's output moves with it."""
    torch.manual_seed(0)
    stem = ConvStem([4, 8, 8], 16)
    linear = torch.nn.Conv2d(3, 16, 8, 8)

    def cell(conv, dy, dx):
        image = torch.zeros(1, 3, 32, 32)
        image[..., 9 + dy: 11 + dy, 9 + dx: 11 + dx] = 1.0  # inside cell (1, 1), which spans 8-15
        with torch.no_grad():
            return conv(image)[0, :, 1, 1]
    for conv, moves in ((stem, False), (linear, True)):
        a, b = cell(conv, 0, 0), cell(conv, 4, 4)
        change = float((a - b).norm() / a.norm())
        assert (change > 0.3) == moves, (type(conv).__name__, change)


def test_widths_must_make_up_the_patch():
    with pytest.raises(ValueError, match="conv_stem=\\[4, 8\\]: need one positive width per halving of the patch size 8"):
        stem_config(widths=(4, 8))


def test_checkpoints_and_paligemma_directories_keep_the_stem(tmp_path):
    torch.manual_seed(1)
    model = PI0StyleVLA.from_config(stem_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = PI0StyleVLA.from_pretrained(tmp_path / "ckpt").eval()
    pixels = torch.rand(2, 3, 32, 32)
    assert torch.equal(image_features(loaded, pixels), image_features(model, pixels))
    # As gf-vlm export writes a VLM: a Hugging Face PaliGemma directory; the rows load it back.
    model.vlm.save_pretrained(str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vision_config"]["conv_stem"] == [4, 8, 8]
    row = PI0StyleVLA.from_paligemma(tmp_path / "hf").eval()
    assert isinstance(row.vlm.model.vision_tower.embeddings.patch_embedding, ConvStem)
    assert torch.equal(image_features(row, pixels), image_features(model, pixels))
    ids = torch.randint(5, 100, (1, model.config.tokens_per_image + 4))
    ids[0, : model.config.tokens_per_image] = model.config.image_token_id
    with torch.no_grad():
        assert torch.equal(row.vlm(input_ids=ids, pixel_values=pixels[:1]).logits,
                           model.vlm(input_ids=ids, pixel_values=pixels[:1]).logits)
