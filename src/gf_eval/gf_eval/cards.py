"""`gf-cards`: printable emoji cards, so the real table shows exactly what the simulator renders.

``gf-cards pdf --split val`` lays the cards of one split list out on A4 or Letter pages at the
benchmark's card size (14 cm by default, configurable), each drawn from the same
``gf_eval.catalog.render_card`` image as the simulator's card texture (at print resolution), with
a small grey card id in its lower right corner and cut marks outside its corners. The top margin
names the split and the size, the bottom margin holds a 20 mm scale bar: print at 100 % ("actual
size", no fit-to-page) and check the bar with a ruler. ``gf-cards png`` writes one PNG per card
with its print resolution recorded (so "actual size" printing gives the benchmark size).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from gf_bringup.constants import DEFAULT_EMOJI_FRACTION, DEFAULT_SPLIT
from gf_eval.catalog import load_catalog, render_card
from gf_eval.splits import PROTOCOL_SPLITS, SplitEntry, load_splits

MM = 72.0 / 25.4  # PDF points per millimetre
PAPERS_MM = {"a4": (210.0, 297.0), "letter": (215.9, 279.4)}
DEFAULT_SIZE_CM = 14.0
DEFAULT_DPI = 300
MIN_MARGIN_MM = 5.0
GAP_MM = 4.0
MARK_OFFSET_MM = 1.0
MARK_LENGTH_MM = 4.0
SCALE_BAR_MM = 20.0


@dataclass(frozen=True)
class CardBox:
    """Where one card goes on a page: lower-left corner and edge, in PDF points."""

    x: float
    y: float
    size: float


@dataclass(frozen=True)
class PageLayout:
    """The card grid of one page (cards fill rows top to bottom, left to right)."""

    paper: str
    width: float  # points
    height: float
    boxes: tuple[CardBox, ...]

    @property
    def per_page(self) -> int:
        return len(self.boxes)


def page_layout(paper: str = "a4", size_cm: float = DEFAULT_SIZE_CM, gap_mm: float = GAP_MM,
                min_margin_mm: float = MIN_MARGIN_MM) -> PageLayout:
    """As many cards of ``size_cm`` as fit on ``paper`` with ``gap_mm`` between them, centred."""
    if paper not in PAPERS_MM:
        raise ValueError(f"unknown paper {paper!r}; expected one of {sorted(PAPERS_MM)}")
    width_mm, height_mm = PAPERS_MM[paper]
    size_mm = size_cm * 10.0
    usable_w, usable_h = width_mm - 2 * min_margin_mm, height_mm - 2 * min_margin_mm
    cols = int((usable_w + gap_mm) // (size_mm + gap_mm))
    rows = int((usable_h + gap_mm) // (size_mm + gap_mm))
    if cols < 1 or rows < 1:
        raise ValueError(
            f"a {size_cm:g} cm card does not fit on {paper} with {min_margin_mm:g} mm margins "
            f"(at most {min(usable_w, usable_h) / 10:.1f} cm)"
        )
    grid_w, grid_h = cols * size_mm + (cols - 1) * gap_mm, rows * size_mm + (rows - 1) * gap_mm
    left, bottom = (width_mm - grid_w) / 2, (height_mm - grid_h) / 2
    boxes = []
    for r in range(rows):  # top row first
        for c in range(cols):
            x = left + c * (size_mm + gap_mm)
            y = bottom + (rows - 1 - r) * (size_mm + gap_mm)
            boxes.append(CardBox(x * MM, y * MM, size_mm * MM))
    return PageLayout(paper, width_mm * MM, height_mm * MM, tuple(boxes))


def select_entries(split: str, splits_name: str = DEFAULT_SPLIT, ids: list[str] | None = None) -> tuple[str, list[SplitEntry]]:
    """(label, entries) for ``--split`` (train/val/hard/all, any case) or an explicit id list."""
    splits = load_splits(splits_name)
    if ids:
        catalog = load_catalog()
        entries = []
        for i in ids:
            try:
                entries.append(splits.entry(i))
            except KeyError:  # any catalogue emoji may be printed, not only the split's
                e = catalog[i]
                entries.append(SplitEntry(e.id, e.char, e.name, e.name))
        return "selected", entries
    names = {s.lower(): s for s in PROTOCOL_SPLITS if s in splits.splits}
    key = split.lower()
    if key == "all":
        return "all", [e for s in names.values() for e in splits.entries(s)]
    if key not in names:
        raise ValueError(f"unknown emoji list {split!r} (--emojis); {splits.name} has {sorted(names.values())} (or 'all')")
    return names[key], splits.entries(names[key])


def _cut_marks(canvas, box: CardBox, boxes: tuple[CardBox, ...], page_w: float, page_h: float) -> None:
    """Short lines continuing each card edge beyond its corners, stopping short of other cards."""
    offset, length = MARK_OFFSET_MM * MM, MARK_LENGTH_MM * MM

    def room(x: float, y: float, dx: float, dy: float) -> float:
        # Free distance from (x, y) in direction (dx, dy) before the page edge or another card.
        limit = (page_w - x if dx > 0 else x) if dx else (page_h - y if dy > 0 else y)
        for other in boxes:
            if other is box:
                continue
            if dx and other.y - 1e-6 <= y <= other.y + other.size + 1e-6:
                d = (other.x - x) if dx > 0 else (x - (other.x + other.size))
                if d >= 0:
                    limit = min(limit, d)
            if dy and other.x - 1e-6 <= x <= other.x + other.size + 1e-6:
                d = (other.y - y) if dy > 0 else (y - (other.y + other.size))
                if d >= 0:
                    limit = min(limit, d)
        return limit

    canvas.setStrokeGray(0.0)
    canvas.setLineWidth(0.4)
    for cx in (box.x, box.x + box.size):
        for cy in (box.y, box.y + box.size):
            sx = -1.0 if cx == box.x else 1.0
            sy = -1.0 if cy == box.y else 1.0
            # Horizontal mark (continues the horizontal edge) and vertical mark (the vertical edge).
            for dx, dy in ((sx, 0.0), (0.0, sy)):
                free = room(cx, cy, dx, dy) - offset - 0.5 * MM
                if free <= 0.5 * MM:
                    continue
                n = min(length, free)
                canvas.line(cx + dx * offset, cy + dy * offset, cx + dx * (offset + n), cy + dy * (offset + n))


def _scale_bar(canvas, layout: PageLayout) -> None:
    x0, y0 = 6 * MM, 2.0 * MM
    canvas.setLineWidth(0.6)
    canvas.line(x0, y0, x0 + SCALE_BAR_MM * MM, y0)
    for t in (0.0, SCALE_BAR_MM / 2, SCALE_BAR_MM):
        canvas.line(x0 + t * MM, y0 - 0.8 * MM, x0 + t * MM, y0 + 0.8 * MM)
    canvas.setFont("Helvetica", 5)
    canvas.drawString(x0, y0 + 1.4 * MM, f"{SCALE_BAR_MM:g} mm: check with a ruler")


def card_pixels(size_cm: float, dpi: int) -> int:
    """Pixels of a card image printed ``size_cm`` wide at ``dpi``."""
    return max(16, round(size_cm / 2.54 * dpi))


def write_pdf(
    path: Path, entries: list[SplitEntry], *, label: str = "", splits_name: str = DEFAULT_SPLIT, paper: str = "a4",
    size_cm: float = DEFAULT_SIZE_CM, dpi: int = DEFAULT_DPI, emoji_fraction: float = DEFAULT_EMOJI_FRACTION,
    show_ids: bool = True, progress=None,
) -> tuple[Path, PageLayout, int]:
    """Write the PDF; returns (path, page layout, pages)."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas as pdf_canvas

    if not entries:
        raise ValueError("no cards to print")
    layout = page_layout(paper, size_cm)
    catalog = load_catalog()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = -(-len(entries) // layout.per_page)
    c = pdf_canvas.Canvas(str(path), pagesize=(layout.width, layout.height), invariant=1)
    c.setTitle(f"GrinningFace cards: {splits_name} {label} ({size_cm:g} cm)")
    c.setAuthor("GrinningFace gf-cards")
    px = card_pixels(size_cm, dpi)
    for i, entry in enumerate(entries):
        slot = i % layout.per_page
        if slot == 0:
            if i:
                c.showPage()
            page = i // layout.per_page + 1
            c.setFillGray(0.0)
            c.setFont("Helvetica", 6)
            c.drawCentredString(
                layout.width / 2, layout.height - 3.2 * MM,
                f"GrinningFace cards | {splits_name} {label} | {size_cm:g} cm | print at 100 % (actual size) | page {page}/{pages}",
            )
            _scale_bar(c, layout)
        box = layout.boxes[slot]
        image = render_card(catalog[entry.id], px, emoji_fraction)
        c.drawImage(ImageReader(image), box.x, box.y, box.size, box.size)
        if show_ids:
            c.setFillGray(0.55)
            c.setFont("Helvetica", 5)
            c.drawRightString(box.x + box.size - 1.5 * MM, box.y + 1.5 * MM, entry.id)
        _cut_marks(c, box, layout.boxes, layout.width, layout.height)
        if progress is not None:
            progress(i + 1, len(entries))
    c.showPage()
    c.save()
    return path, layout, pages


def write_pngs(directory: Path, entries: list[SplitEntry], *, size_cm: float = DEFAULT_SIZE_CM, dpi: int = DEFAULT_DPI,
               emoji_fraction: float = DEFAULT_EMOJI_FRACTION, progress=None) -> list[Path]:
    """One ``<id>.png`` per card, ``size_cm`` wide at ``dpi`` (recorded in the PNG)."""
    catalog = load_catalog()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    px = card_pixels(size_cm, dpi)
    paths = []
    for i, entry in enumerate(entries):
        path = directory / f"{entry.id}.png"
        render_card(catalog[entry.id], px, emoji_fraction).save(path, dpi=(dpi, dpi))
        paths.append(path)
        if progress is not None:
            progress(i + 1, len(entries))
    return paths


def _progress(done: int, total: int) -> None:
    if done == total or done % 10 == 0:
        print(f"  {done}/{total} cards", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-cards", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("pdf", "a printable PDF (A4 or Letter) with ids and cut marks"), ("png", "one PNG per card")):
        p = sub.add_parser(name, help=help_text)
        # --emojis / --split-file as in gf-demos and the launch files' split:= (a split file);
        # --split and --splits are the old spellings, still accepted.
        p.add_argument("--emojis", "--split", dest="emojis", default="val",
                       help="which emojis: train, val, hard or all of the split file (default val)")
        p.add_argument("--split-file", "--splits", dest="split_file", default=DEFAULT_SPLIT,
                       help=f"split file: shipped name or path (default {DEFAULT_SPLIT})")
        p.add_argument("--ids", default="", help="comma-separated emoji ids instead of a whole list")
        p.add_argument("--size-cm", type=float, default=DEFAULT_SIZE_CM, help="card edge in cm (default 14, the benchmark's)")
        p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help="image resolution (default 300)")
        p.add_argument("--emoji-fraction", type=float, default=DEFAULT_EMOJI_FRACTION,
                       help="emoji width / card width (default: the simulator's)")
        p.add_argument("-o", "--output", type=Path, default=None, help="output file (pdf) or directory (png)")
        if name == "pdf":
            p.add_argument("--paper", choices=sorted(PAPERS_MM), default="a4")
            p.add_argument("--no-ids", action="store_true", help="leave the card ids off")
    args = parser.parse_args(argv)
    if not (0 < args.size_cm <= 100) or args.dpi < 30:
        parser.error("--size-cm must be in (0, 100] and --dpi >= 30")
    try:
        ids = [i.strip() for i in args.ids.split(",") if i.strip()]
        label, entries = select_entries(args.emojis, args.split_file, ids or None)
        if args.command == "pdf":
            out = args.output or Path(f"cards_{label.lower()}_{args.paper}_{args.size_cm:g}cm.pdf")
            path, layout, pages = write_pdf(
                out, entries, label=label, splits_name=load_splits(args.split_file).name, paper=args.paper,
                size_cm=args.size_cm, dpi=args.dpi, emoji_fraction=args.emoji_fraction, show_ids=not args.no_ids,
                progress=_progress,
            )
            print(f"{path}: {len(entries)} cards of {args.size_cm:g} cm on {pages} {args.paper} page(s), "
                  f"{layout.per_page} per page; print at 100 % (actual size)")
        else:
            out = args.output or Path(f"cards_{label.lower()}_png")
            paths = write_pngs(out, entries, size_cm=args.size_cm, dpi=args.dpi, emoji_fraction=args.emoji_fraction,
                               progress=_progress)
            print(f"{out}: {len(paths)} PNGs of {card_pixels(args.size_cm, args.dpi)} px ({args.size_cm:g} cm at {args.dpi} dpi)")
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"gf-cards: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
