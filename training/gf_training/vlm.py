"""`gf-vlm export CHECKPOINT --out DIR`: the VLM of a checkpoint as a Hugging Face PaliGemma directory.

A mini VLM is pre-trained with ``gf-train`` on vision-language data alone (``cotrain.ratio: 1``):
the same ``PI0StyleVLA`` and loop, its action expert unused. What the comparison's rows start
from is its PaliGemma part, written as ``transformers`` writes a PaliGemma model (``config.json``,
``model.safetensors``) with the run's tokenizer beside it, so it is loaded like the real
``paligemma-3b-pt-224``: ``model.init: paligemma`` + ``model.path: DIR`` in ``gf-train`` (a new
action expert and technique heads), ``gf-probe DIR``, or ``PaliGemmaForConditionalGeneration``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export_vlm(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the PaliGemma part of ``checkpoint`` (a gf-train checkpoint) and its tokenizer to ``out``."""
    from transformers import AutoTokenizer

    from gf_policy.vla import PI0StyleVLA
    from gf_policy.vla.local_files import local_dir

    checkpoint = local_dir(checkpoint, "checkpoint")
    out = Path(out)
    model = PI0StyleVLA.from_pretrained(checkpoint)
    model.vlm.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(checkpoint)).save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-vlm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a checkpoint's VLM as a Hugging Face PaliGemma directory")
    export.add_argument("checkpoint", type=Path, help="gf-train checkpoint directory (checkpoints/step_N)")
    export.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        out = export_vlm(args.checkpoint, args.out)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    print(f"[gf-vlm] {out}: PaliGemma VLM of {args.checkpoint} (model.init: paligemma, model.path: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
