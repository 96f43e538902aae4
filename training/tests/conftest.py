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
