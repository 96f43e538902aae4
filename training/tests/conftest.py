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
