"""`gf-emoji`: look at the emoji catalogue and the splits (and rebuild the shipped data files).

  gf-emoji catalog [--rebuild]                  counts per group; --rebuild regenerates catalog.json
  gf-emoji split [NAME|PATH] [--sheet OUT.png]  the split's emojis and descriptions, with a thumbnail sheet
  gf-emoji split NAME --rebuild                 regenerate a shipped split (gf-default-v1, gf-shapes-v1) by its rule
  gf-emoji import-upstream DIR OUT.json         convert upstream meta_relabel_dedup_*.json files
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from importlib import resources
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gf_bringup.constants import DEFAULT_SPLIT
from gf_eval.catalog import build_catalog, load_catalog, render_card
from gf_eval.splits import SPLIT_RULES, import_upstream, load_splits


def label_font(size: int = 12):
    """DejaVu Sans at ``size`` px for labels on contact sheets (Pillow's default font otherwise)."""
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"):
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def split_sheet(name_or_path: str, out: Path, thumb: int = 96, columns: int = 10) -> Path:
    """One row block per protocol list: each emoji's card thumbnail with its description."""
    splits = load_splits(name_or_path)
    font, header = label_font(11), label_font(16)
    label_h, block_gap = 30, 34
    blocks = [(name, entries) for name, entries in splits.splits.items()]
    height = sum(block_gap + math.ceil(len(e) / columns) * (thumb + label_h) for _, e in blocks) + 10
    sheet = Image.new("RGB", (columns * (thumb + 8) + 8, height), "white")
    draw = ImageDraw.Draw(sheet)
    catalog = load_catalog()
    y = 6
    for name, entries in blocks:
        draw.text((8, y), f"{splits.name} / {name} ({len(entries)})  hash {splits.hash}", fill="black", font=header)
        y += block_gap
        for i, entry in enumerate(entries):
            col, row = i % columns, i // columns
            x0, y0 = 8 + col * (thumb + 8), y + row * (thumb + label_h)
            card = render_card(catalog[entry.id], thumb, 0.7)
            sheet.paste(card, (x0, y0))
            draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], outline=(200, 200, 200))
            text = entry.description if len(entry.description) <= 18 else entry.description[:17] + "…"
            draw.text((x0, y0 + thumb + 2), text, fill="black", font=font)
        y += math.ceil(len(entries) / columns) * (thumb + label_h)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-emoji", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cat = sub.add_parser("catalog", help="catalogue counts; --rebuild regenerates the shipped catalog.json")
    cat.add_argument("--rebuild", action="store_true")
    sp = sub.add_parser("split", help="list a split with its descriptions; --sheet writes a thumbnail PNG")
    sp.add_argument("name", nargs="?", default=DEFAULT_SPLIT, help="shipped split name or path to a split file")
    sp.add_argument("--sheet", type=Path, help="write a thumbnail contact sheet here")
    sp.add_argument("--rebuild", action="store_true",
                    help=f"regenerate a shipped split ({', '.join(SPLIT_RULES)}) by its rule")
    up = sub.add_parser("import-upstream", help="upstream meta_relabel_dedup_*.json -> a split file",
                        description="Convert upstream GrinningFace's split metadata (its meta_relabel_dedup_*.json "
                                    "files: Train/Val/Hard emojis with VLM-relabelled descriptions) into a split file "
                                    "of this workspace; evaluate on it with split:=OUT.json.")
    up.add_argument("directory", type=Path, help="directory holding upstream's meta_relabel_dedup_*.json files")
    up.add_argument("out", type=Path, help="split file to write (JSON)")
    args = parser.parse_args(argv)
    data_dir = Path(str(resources.files("gf_eval") / "data"))
    if args.command == "catalog":
        catalog = build_catalog() if args.rebuild else load_catalog()
        if args.rebuild:
            (data_dir / "catalog.json").write_text(catalog.to_json(), encoding="utf-8")
            print(f"wrote {data_dir / 'catalog.json'}")
        print(f"{len(catalog)} emojis")
        for group, n in Counter(e.group for e in catalog).most_common():
            print(f"  {n:4d}  {group}")
        return 0
    if args.command == "import-upstream":
        splits = import_upstream(args.directory)
        splits.save(args.out)
        print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.splits.items()) + f"; hash {load_splits(str(args.out)).hash}")
        return 0
    if args.rebuild:
        if args.name not in SPLIT_RULES:
            parser.error(f"--rebuild: {args.name!r} is not a shipped split ({', '.join(SPLIT_RULES)})")
        path = data_dir / "splits" / f"{args.name}.json"
        print(f"generating {args.name} by its rule ...", flush=True)
        SPLIT_RULES[args.name]().save(path)
        print(f"wrote {path}")
        load_splits.cache_clear()
    splits = load_splits(args.name)
    print(f"{splits.name}  hash {splits.hash}  template {splits.template!r}")
    for name, entries in splits.splits.items():
        print(f"\n{name} ({len(entries)}):")
        for e in entries:
            print(f"  {e.char}  {e.id:12s} {e.description}" + (f"   ({e.name})" if e.name != e.description else ""))
    if args.sheet:
        print(f"\nthumbnail sheet: {split_sheet(args.name, args.sheet)}")
    return 0
