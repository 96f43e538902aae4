"""The emoji catalogue, card images, the default split and the upstream importer."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gf_eval.catalog import build_catalog, card_image_path, load_catalog, png_bytes, render_card
from gf_eval.splits import (
    DEFAULT_SPLIT,
    PROTOCOL_SPLITS,
    SHAPES_SPLIT,
    SplitFormatError,
    _thumbnail,
    build_default_splits,
    build_shapes_split,
    confusable,
    import_upstream,
    load_splits,
    parse_splits,
)
from gf_eval.trials import make_trial

UPSTREAM = Path(__file__).resolve().parents[3].parent / "shared" / "upstream" / "grinningface-emoji"


def test_catalogue_holds_single_glyph_fully_qualified_emojis_only():
    catalog = load_catalog()
    assert len(catalog) > 1000
    for e in catalog:
        assert len(e.char.replace("\ufe0f", "")) == 1, e
        assert e.group not in ("Component",)
        assert "skin tone" not in e.name
    grinning = catalog.by_char("😀")
    assert (grinning.id, grinning.name, grinning.group, grinning.subgroup) == ("1f600", "grinning face", "Smileys & Emotion", "face-smiling")
    assert catalog.by_char("❤") is catalog.by_char("❤️")  # with or without the presentation selector
    with pytest.raises(KeyError):
        catalog.by_char("👍🏽")  # skin-tone sequence: not a single glyph


def test_shipped_catalogue_matches_a_fresh_build_with_the_installed_font():
    assert build_catalog().to_json() == load_catalog().to_json()


def test_card_images_are_deterministic_white_cards_with_the_emoji_centred(tmp_path, monkeypatch):
    monkeypatch.setenv("GF_CACHE_DIR", str(tmp_path))
    emoji = load_catalog().by_char("🤖")
    a, b = render_card(emoji, 256, 0.25), render_card(emoji, 256, 0.25)
    assert png_bytes(a) == png_bytes(b)
    pixels = np.asarray(a).astype(int)
    assert pixels.shape == (256, 256, 3)
    assert (pixels[:40] == 255).all() and (pixels[-40:] == 255).all()  # white margins
    ink = np.argwhere((pixels < 240).any(axis=2))
    centre = ink.mean(axis=0)
    assert np.allclose(centre, [128, 128], atol=8)
    width = ink[:, 1].max() - ink[:, 1].min() + 1
    assert abs(width - 64) <= 3  # a quarter of the card
    path = card_image_path(emoji, 256, 0.25)
    assert path.read_bytes() == png_bytes(a) and path.parent == tmp_path / "cards"


def test_default_split_is_reproducible_disjoint_and_free_of_confusable_pairs():
    shipped = load_splits(DEFAULT_SPLIT)
    rebuilt = build_default_splits()
    assert rebuilt.to_json() == shipped.to_json()
    ids = [e.id for split in PROTOCOL_SPLITS for e in shipped.entries(split)]
    assert len(ids) == len(set(ids)) == 300
    catalog = load_catalog()
    for split in PROTOCOL_SPLITS:
        emojis = [catalog[e.id] for e in shipped.entries(split)]
        assert len(emojis) == 100
        thumbs = {e.id: _thumbnail(e) for e in emojis}
        for i, a in enumerate(emojis):
            for b in emojis[i + 1:]:
                assert not confusable(a, b, thumbs), (split, a.name, b.name)
    train_subgroups = {catalog[e.id].subgroup for e in shipped.entries("Train")}
    assert all(catalog[e.id].subgroup in train_subgroups for e in shipped.entries("Hard"))


def test_shapes_split_is_reproducible_and_shows_no_benchmark_emoji():
    shipped = load_splits(SHAPES_SPLIT)
    assert build_shapes_split().to_json() == shipped.to_json()
    names = {e.name for e in shipped.entries("Train")}
    assert {"red circle", "blue square", "large orange diamond", "red triangle pointed up"} <= names
    assert not any(word in name for name in names for word in ("small", "medium", "button"))
    catalog = load_catalog()
    assert {catalog[e.id].subgroup for e in shipped.entries("Train")} == {"geometric"}
    benchmark = {e.id for split in PROTOCOL_SPLITS for e in load_splits(DEFAULT_SPLIT).entries(split)}
    assert not benchmark & {e.id for e in shipped.entries("Train")}
    trial = make_trial("Demo", 7, splits=shipped)  # gf-demos draws three shapes from it
    assert len({c.emoji_id for c in trial.cards}) == 3 and {c.emoji_id for c in trial.cards} <= {e.id for e in shipped.entries("Train")}


def test_confusable_rule_catches_near_duplicates():
    c = load_catalog()
    pairs = [("😀", "😃"), ("🐶", "🐕"), ("🐱", "🐈")]
    for a, b in pairs:
        ea, eb = c.by_char(a), c.by_char(b)
        assert confusable(ea, eb, {ea.id: _thumbnail(ea), eb.id: _thumbnail(eb)}), (a, b)
    ea, eb = c.by_char("🚗"), c.by_char("🍎")
    assert not confusable(ea, eb, {ea.id: _thumbnail(ea), eb.id: _thumbnail(eb)})


def test_split_hash_changes_with_content():
    s = load_splits()
    text = s.to_json()
    changed = parse_splits(text.replace(s.entries("Val")[0].description, "something else"), "x.json")
    assert changed.hash != s.hash and parse_splits(text, "y.json").hash == s.hash


@pytest.mark.skipif(not UPSTREAM.exists(), reason="upstream metadata not available")
def test_upstream_importer_reads_the_real_files():
    splits = import_upstream(UPSTREAM)
    assert [len(splits.entries(k)) for k in ("Train", "Val", "Hard")] == [100, 100, 213]
    first = splits.entries("Train")[0]
    assert (first.char, first.name, first.description) == ("😐", "neutral face", "smiley face")
    assert splits.instruction(first) == "pick the block and place it on smiley face"
    raw = json.loads((UPSTREAM / "meta_relabel_dedup_val.json").read_text())
    assert [e.description for e in splits.entries("Val")] == [r["paligemma_label"] for r in raw]


def test_upstream_importer_names_file_and_entry_on_bad_input(tmp_path):
    good = [{"code": "U+1F610", "char": "😐", "desc": "neutral face", "paligemma_label": "smiley face"}]
    (tmp_path / "meta_relabel_dedup_train.json").write_text(json.dumps(good))
    (tmp_path / "meta_relabel_dedup_val.json").write_text(json.dumps(good + [{"code": "U+1F600", "char": "😀", "desc": "grinning face"}]))
    with pytest.raises(SplitFormatError, match=r"meta_relabel_dedup_val.json: entry 1 \(grinning face\) lacks \['paligemma_label'\]"):
        import_upstream(tmp_path)
    (tmp_path / "meta_relabel_dedup_val.json").write_text(json.dumps([{"code": "U+1F601", "char": "😐", "desc": "x", "paligemma_label": "y"}]))
    with pytest.raises(SplitFormatError, match="entry 0 .x.: code U.1F601 does not match"):
        import_upstream(tmp_path)
    (tmp_path / "meta_relabel_dedup_val.json").write_text("{not json")
    with pytest.raises(SplitFormatError, match="meta_relabel_dedup_val.json: not valid JSON"):
        import_upstream(tmp_path)


def test_gf_emoji_lists_the_split_and_writes_a_thumbnail_sheet(tmp_path, capsys):
    from gf_eval.emoji_cli import main

    assert main(["split", "--sheet", str(tmp_path / "sheet.png")]) == 0
    out = capsys.readouterr().out
    shipped = load_splits()
    assert f"hash {shipped.hash}" in out and "Val (100):" in out
    assert all(e.description in out for e in shipped.entries("Hard"))
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.width > 500 and sheet.height > 1000
