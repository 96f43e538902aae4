"""Vision-language data for co-training: generated once, to disk, reproducibly, with a manifest.

``gf-vl-data glyphs|tabletop|cube --split SPLIT --out DIR`` writes::

    DIR/info.json        generator, split name and content hash, emoji lists, seed, parameters
    DIR/manifest.jsonl   one line per sample: id, image (relative path), question, answer, emoji ids
    DIR/images/*.png     the images (deterministic PNG bytes)

Five generators, the first and third as in the paper:

* ``glyphs``: one emoji glyph on a plain background (random light colour, size, position, small
  rotation); question "What's in the image?" (a few paraphrases), answer: its description.
* ``cards``: the emoji printed on a card as the benchmark prints them, at a random scale; the
  question is a glyph question or ``caption en`` (what ``gf-probe`` asks), answer: its description.
* ``tabletop``: a scene rendered by the simulator (``GrinningFace-v1``) with three random cards
  (and the cube and arm as in a trial); the question asks for all emojis on the table by
  position, the answer names them left to right as the camera sees them:
  ``"left: <desc>; middle: <desc>; right: <desc>"``.
* ``which``: the same scenes, asking which card shows one of the emojis ("Which card shows a
  grinning face?"); the answer is ``left``, ``middle`` or ``right`` as the camera sees it: the
  recognition a policy needs, put as a question.
* ``cube``: the same scenes, asking where the cube is; the answer is the centre of its top face
  in percent of the image width and height, ``"x 57 y 41"`` (PaliGemma's pre-training teaches
  localisation with ``<loc>`` tokens the same way, at 1024 bins). A model trained from scratch
  learns where things are from this far sooner than from actions alone.

``gf-vl-data tokenizer --out DIR`` writes a tiny tokenizer trained on every text form above for
every catalogue emoji (``gf_training.catalogue_tokenizer``), for models that must name any emoji.

Sample ``i`` is a pure function of ``(seed, i)`` and the parameters, so a run interrupted part
way continues where it stopped (existing samples are kept) and two machines produce the same
bytes. By default only the ``Train`` list of the split is used: co-training on ``Val`` emojis
would leak the held-out protocol. ``--lists All`` takes every catalogue emoji (the split's lists
first): the data of a mini VLM that knows every emoji, as a web-scale VLM does, before any robot
fine-tuning.

``VLDataset`` reads one or more such directories; ``VLCollator`` turns samples into the batch
``PI0StyleVLA.compute_lm_loss`` takes (PaliGemma prefix-LM format: the answer and EOS are
the targets).

The parts: ``vl_samples`` (the sample builders, questions and answer formats), ``vl_format``
(the directory format, ``read_vl_dir``, ``VLDataset``, ``VLCollator``) and ``vl_generate``
(``generate_glyphs``, ``generate_cards``, ``generate_tabletop``, ``generate_which``,
``generate_cube``); this module holds
``gf-vl-data`` and re-exports the others' names, so ``gf_training.vl_data`` still reaches
everything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gf_bringup.constants import DEFAULT_SPLIT
from gf_training.vl_format import IMAGES, INFO, MANIFEST, VL_FORMAT, VLCollator, VLDataset, VLRecord, read_vl_dir
from gf_training.vl_generate import (
    ALL_EMOJIS,
    CUBE_BASE_SEED,
    GENERATORS,
    PER_EMOJI,
    TABLETOP_BASE_SEED,
    WHICH_BASE_SEED,
    catalogue_entries,
    generate_cards,
    generate_cube,
    generate_glyphs,
    generate_table_cards,
    generate_tabletop,
    generate_which,
    pooled_entries,
)
from gf_training.vl_samples import (
    CARD_QUESTIONS,
    CUBE_QUESTIONS,
    GLYPH_QUESTIONS,
    TABLETOP_QUESTIONS,
    WHICH_QUESTIONS,
    card_sample,
    cube_sample,
    glyph_sample,
    location_answer,
    table_card_sample,
    tabletop_answer,
    tabletop_sample,
    which_sample,
)

__all__ = [
    "ALL_EMOJIS", "CARD_QUESTIONS", "CUBE_BASE_SEED", "CUBE_QUESTIONS", "GENERATORS", "GLYPH_QUESTIONS", "IMAGES",
    "INFO", "MANIFEST", "TABLETOP_BASE_SEED", "TABLETOP_QUESTIONS", "VLCollator", "VLDataset", "VLRecord", "VL_FORMAT",
    "WHICH_BASE_SEED", "WHICH_QUESTIONS", "card_sample", "catalogue_entries", "cube_sample", "generate_cards",
    "generate_cube", "generate_glyphs", "generate_table_cards", "generate_tabletop", "generate_which", "glyph_sample", "location_answer", "main",
    "PER_EMOJI", "pooled_entries", "read_vl_dir", "table_card_sample", "tabletop_answer", "tabletop_sample", "which_sample",
]


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-vl-data``."""
    parser = argparse.ArgumentParser(prog="gf-vl-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="generator", required=True)
    common: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--split",), {"default": DEFAULT_SPLIT, "help": f"split name or JSON file (default {DEFAULT_SPLIT})"}),
        (("--lists",), {"default": "Train", "help": "comma-separated emoji lists of the split (default Train; "
                                                     "Val would leak the held-out protocol), or All: the whole "
                                                     "catalogue (VLM pre-training)"}),
        (("--out",), {"type": Path, "required": True, "help": "output directory"}),
        (("--size",), {"type": int, "default": 224, "help": "image side in pixels (default 224)"}),
        (("--seed",), {"type": int, "default": 0, "help": "generation seed (default 0)"}),
        (("--no-progress",), {"action": "store_true", "help": "no progress bar"}),
    ]
    glyphs = sub.add_parser("glyphs", help="emoji glyphs: \"what's in the image?\" -> description")
    glyphs.add_argument("--per-emoji", type=int, default=8, help="images per emoji (default 8)")
    cards = sub.add_parser("cards", help="printed cards: \"caption en\" / \"what's in the image?\" -> description")
    cards.add_argument("--per-emoji", type=int, default=4, help="images per emoji (default 4)")
    table_cards = sub.add_parser("tablecards", help="a card on the table at the policy camera's scale and angle "
                                                   "(emoji 6-10 px at 128 px): \"caption en\" / ... -> description")
    table_cards.add_argument("--per-emoji", type=int, default=4, help="images per emoji (default 4)")
    tabletop = sub.add_parser("tabletop", help="simulator scenes: name the emojis by position")
    tabletop.add_argument("--scenes", type=int, default=1000, help="number of scenes (default 1000)")
    which = sub.add_parser("which", help="simulator scenes: which card shows X? -> left, middle or right")
    which.add_argument("--scenes", type=int, default=1000, help="number of scenes (default 1000)")
    cube = sub.add_parser("cube", help="simulator scenes: where is the cube? -> its image position")
    cube.add_argument("--scenes", type=int, default=2000, help="number of scenes (default 2000)")
    for p in (glyphs, cards, table_cards, tabletop, which, cube):
        for flags, kwargs in common:
            p.add_argument(*flags, **kwargs)
    tok = sub.add_parser("tokenizer", help="a tiny tokenizer covering every catalogue emoji's name (model.tokenizer: DIR)")
    tok.add_argument("--out", type=Path, required=True, help="output directory")
    tok.add_argument("--split", default=DEFAULT_SPLIT, help="split whose instruction template and descriptions to use")
    tok.add_argument("--vocab-size", type=int, default=None, help="token ids (default: the mini VLM's 1024 less the "
                                                                  "ids action bins and latent codes may take)")
    args = parser.parse_args(argv)
    if args.generator == "tokenizer":
        return _tokenizer_command(args)
    lists = [s.strip() for s in args.lists.split(",") if s.strip()]
    kwargs = dict(split=args.split, lists=lists, size=args.size, seed=args.seed, progress=not args.no_progress)
    try:
        if args.generator in PER_EMOJI:
            generate = {"glyphs": generate_glyphs, "cards": generate_cards, "tablecards": generate_table_cards}[args.generator]
            out = generate(args.out, per_emoji=args.per_emoji, **kwargs)
        else:
            generate = {"tabletop": generate_tabletop, "which": generate_which, "cube": generate_cube}[args.generator]
            out = generate(args.out, scenes=args.scenes, **kwargs)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        parser.error(str(exc))
    info, records = read_vl_dir(out)
    print(f"[gf-vl-data] {out}: {len(records)} {info['generator']} samples (split {info['split']}, lists {info['lists']})")
    return 0


def _tokenizer_command(args: argparse.Namespace) -> int:
    from gf_training.catalogue_tokenizer import DEFAULT_VOCAB_SIZE, build_catalogue_tokenizer, coverage

    tokenizer = build_catalogue_tokenizer(args.out, args.split, args.vocab_size or DEFAULT_VOCAB_SIZE)
    print(f"[gf-vl-data] {args.out}: tokenizer of {len(tokenizer)} ids; {coverage(tokenizer, args.split).summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
