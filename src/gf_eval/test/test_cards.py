"""Printable cards: page geometry, the rendered PDF (rasterised with pypdfium2 and compared with the
catalogue's card image), ids, cut marks, PNG export and the command line."""

from __future__ import annotations

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image

from gf_eval import cards
from gf_eval.catalog import load_catalog, render_card
from gf_eval.splits import load_splits

MM = 72 / 25.4
IDS = [e.id for e in load_splits().entries("Val")[:3]]


def test_page_layouts_fit_14_cm_cards_on_a4_and_letter():
    a4 = cards.page_layout("a4", 14.0)
    assert a4.per_page == 2 and a4.width == pytest.approx(210 * MM) and a4.height == pytest.approx(297 * MM)
    for box in a4.boxes:
        assert box.size == pytest.approx(140 * MM)
        assert box.x == pytest.approx((a4.width - box.size) / 2)  # centred
        assert box.y >= 5 * MM and box.y + box.size <= a4.height - 5 * MM
    assert a4.boxes[0].y - (a4.boxes[1].y + a4.boxes[1].size) == pytest.approx(cards.GAP_MM * MM)  # top card first
    assert cards.page_layout("letter", 14.0).per_page == 1  # 279.4 mm is too short for two
    assert cards.page_layout("a4", 6.0).per_page == 3 * 4
    with pytest.raises(ValueError, match="does not fit"):
        cards.page_layout("a4", 25.0)


@pytest.fixture(scope="module")
def pdf(tmp_path_factory):
    path = tmp_path_factory.mktemp("cards") / "val.pdf"
    entries = [load_splits().entry(i) for i in IDS]
    path, layout, pages = cards.write_pdf(path, entries, label="Val", dpi=150)
    assert pages == 2
    return path, layout


def rasterise(path, page: int, dpi: int) -> np.ndarray:
    document = pdfium.PdfDocument(str(path))
    return np.asarray(document[page].render(scale=dpi / 72).to_pil().convert("RGB")).astype(np.int16)


def card_region(raster: np.ndarray, box, height_pt: float, dpi: int) -> np.ndarray:
    s = dpi / 72
    left, top = round(box.x * s), round((height_pt - box.y - box.size) * s)
    size = round(box.size * s)
    return raster[top:top + size, left:left + size]


def test_the_pdf_card_matches_the_catalogue_card_image(pdf):
    path, layout = pdf
    dpi = 100
    raster = rasterise(path, 0, dpi)
    assert np.allclose(raster.shape[:2], (297 / 25.4 * dpi, 210 / 25.4 * dpi), atol=1)  # A4 at 100 dpi
    catalog = load_catalog()
    for slot, emoji_id in enumerate(IDS[:2]):
        region = card_region(raster, layout.boxes[slot], layout.height, dpi)
        size = region.shape[0]
        assert size == pytest.approx(140 / 25.4 * dpi, abs=1)  # 14 cm
        reference = np.asarray(render_card(catalog[emoji_id], size)).astype(np.int16)
        other = np.asarray(render_card(catalog[IDS[2]], size)).astype(np.int16)
        diff = np.abs(region - reference).mean()
        assert diff < 2.0, diff  # resampling and the small grey id only
        assert np.abs(region - other).mean() > 3 * diff  # a different emoji is clearly different
        # The emoji sits where the catalogue image has it (bounding boxes of non-white pixels).
        box = lambda a: np.argwhere((a < 200).any(axis=2)).min(0).tolist() + np.argwhere((a < 200).any(axis=2)).max(0).tolist()  # noqa: E731
        assert np.allclose(box(region[: size // 2 + size // 4]), box(reference[: size // 2 + size // 4]), atol=3)


def test_ids_and_print_instructions_are_on_the_page(pdf):
    path, _ = pdf
    document = pdfium.PdfDocument(str(path))
    first = document[0].get_textpage().get_text_range()
    second = document[1].get_textpage().get_text_range()
    assert IDS[0] in first and IDS[1] in first and IDS[2] in second
    assert "14 cm" in first and "print at 100 %" in first and "20 mm" in first


def test_cut_marks_are_outside_every_corner_and_the_card_edges_are_not_drawn(pdf):
    path, layout = pdf
    dpi = 200
    raster = rasterise(path, 0, dpi)
    s = dpi / 72
    dark = raster.sum(axis=2) < 300
    for box in layout.boxes:
        x0, x1 = box.x * s, (box.x + box.size) * s
        y0, y1 = (layout.height - box.y - box.size) * s, (layout.height - box.y) * s  # image rows
        for cx, sx in ((x0, -1), (x1, 1)):
            for cy, sy in ((y0, -1), (y1, 1)):
                # Horizontal mark: along the corner's row, 1.5..3 mm outside the card.
                xs = [round(cx + sx * m * MM * s) for m in (1.5, 2.0, 3.0)]
                assert any(dark[round(cy) + d, x] for x in xs for d in (-1, 0, 1)), (box, cx, cy)
                # Vertical mark: along the corner's column, 1.5 mm outside.
                y = round(cy + sy * 1.5 * MM * s)
                assert any(dark[y, round(cx) + d] for d in (-1, 0, 1)), (box, cx, cy)
        # No outline: the middle of each card edge is white.
        mid_x, mid_y = round((x0 + x1) / 2), round((y0 + y1) / 2)
        assert not dark[round(y0) - 2:round(y0) + 3, mid_x].any() and not dark[mid_y, round(x0) - 2:round(x0) + 3].any()


def test_png_export_has_the_print_size_recorded(tmp_path):
    paths = cards.write_pngs(tmp_path, [load_splits().entry(IDS[0])], size_cm=14.0, dpi=120)
    image = Image.open(paths[0])
    assert paths[0].name == f"{IDS[0]}.png"
    assert image.size == (661, 661) and round(image.info["dpi"][0]) == 120  # 14 cm at 120 dpi


def test_the_command_line(tmp_path, capsys):
    out = tmp_path / "sel.pdf"
    assert cards.main(["pdf", "--ids", ",".join(IDS[:2]), "--paper", "letter", "--dpi", "60", "-o", str(out)]) == 0
    assert "2 cards of 14 cm on 2 letter page(s), 1 per page" in capsys.readouterr().out
    assert len(pdfium.PdfDocument(str(out))) == 2
    assert cards.main(["png", "--ids", "1f600", "--size-cm", "5", "--dpi", "100", "-o", str(tmp_path / "png")]) == 0
    assert (tmp_path / "png" / "1f600.png").exists()  # any catalogue emoji, not only the split's
    assert cards.main(["pdf", "--emojis", "nonsense", "-o", str(tmp_path / "x.pdf")]) == 2
    assert "unknown emoji list 'nonsense' (--emojis)" in capsys.readouterr().err
    assert cards.main(["pdf", "--split", "hard", "--splits", "gf-default-v1", "--dpi", "30", "-o", str(tmp_path / "old.pdf")]) == 0
    assert cards.main(["pdf", "--size-cm", "30", "-o", str(tmp_path / "x.pdf")]) == 2
