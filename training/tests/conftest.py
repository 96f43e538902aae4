"""Fixtures shared by the training tests (test modules cannot import each other here)."""

from __future__ import annotations

import pytest

from gf_training.vl_data import generate_glyphs


@pytest.fixture(scope="module")
def glyph_dir(tmp_path_factory):
    """One glyph image per Train emoji, 32 px (a gf-vl-data directory)."""
    out = tmp_path_factory.mktemp("vl") / "glyphs"
    generate_glyphs(out, per_emoji=1, size=32, seed=0)
    return out


@pytest.fixture(scope="module")
def vl_only(glyph_dir):
    """``(out, *overrides) -> TrainConfig``: the tiny model trained on the glyphs alone
    (``cotrain.ratio: 1``, a VLM's pre-training), quietly, batch 8."""
    from gf_training.config import load_config

    def config(out, *extra):
        return load_config("tiny", [f"output_dir={out}", "logging.progress=false", "logging.tensorboard=false",
                                    "train.batch_size=8", "train.micro_batch_size=8", "optim.warmup_steps=4",
                                    f"cotrain.vl_dirs=[{glyph_dir}]", "cotrain.ratio=1", "cotrain.max_text_tokens=24",
                                    *extra])
    return config


@pytest.fixture
def same_export_form():
    """``(checkpoint_a, checkpoint_b)``: asserts both ``model.safetensors`` hold the same keys with the
    same shapes (a training-only head must leave what the ``vla`` backend loads as it was)."""
    from safetensors.torch import load_file

    def check(a_dir, b_dir):
        a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    return check


@pytest.fixture
def resumed_exactly():
    """``(straight, first, resumed, part, state_file)``: asserts a run stopped and resumed (``first``
    then ``resumed``) logged the same losses and ``part`` losses as one run straight through, and
    ended with the same state of its training-only head (``state_file`` beside the checkpoint)."""
    import torch

    def check(straight, first, resumed, part, state_file):
        assert first.losses + resumed.losses == straight.losses
        assert first.parts[part] + resumed.parts[part] == straight.parts[part]
        a = torch.load(straight.checkpoints[-1] / state_file, weights_only=False)["head"]
        b = torch.load(resumed.checkpoints[-1] / state_file, weights_only=False)["head"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    return check
