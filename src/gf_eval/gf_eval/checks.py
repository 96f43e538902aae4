"""gf doctor checks owned by gf_eval."""

from __future__ import annotations

import numpy as np

from gf_bringup.doctor import DoctorError


def check_emoji_font() -> str:
    """Noto Color Emoji renders a colour glyph (and the shipped catalogue/splits load)."""
    from gf_eval.catalog import find_emoji_font, load_catalog, render_glyph
    from gf_eval.splits import load_splits

    try:
        path = find_emoji_font()
    except FileNotFoundError as exc:
        raise DoctorError(str(exc)) from exc
    glyph = np.asarray(render_glyph("\U0001F600", path))
    rgb = glyph[..., :3][glyph[..., 3] > 0].astype(int)
    if rgb.size == 0 or np.ptp(rgb, axis=0).max() < 50:
        raise DoctorError(f"{path} draws no colour glyph (is it the colour bitmap font?)")
    catalog, splits = load_catalog(), load_splits()
    return f"{path.name} draws colour glyphs; catalogue {len(catalog)} emojis; split {splits.name} ({splits.hash})"
