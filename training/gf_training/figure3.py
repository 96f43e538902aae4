"""`gf-fig3`: one command per row of the paper's Figure 3 (technique x fine-tuning scheme).

Rows are ``<technique>-<scheme>`` with technique ``baseline`` (VLA pre-trained on robot data),
``vlm`` (fine-tuned straight from the PaliGemma VLM), ``cotrain``, ``discrete``, ``latent``
(VLAs pre-trained with those techniques) and scheme ``full``, ``lora``, ``action`` (action
expert only). ``gf-fig3 run ROW`` runs every step the row needs, each of which skips or resumes
work already done (so the command can simply be started again):

1. its data: ``gf-vl-data glyphs|tabletop`` (co-training), ``gf-lam train`` (latent actions);
2. pre-training, ``configs/pretrain[_<technique>].yaml`` (not for ``vlm``); rows that share a
   technique share this run;
3. fine-tuning, ``configs/fig3/<technique>_<scheme>.yaml``;
4. ``gf-sweep`` of the fine-tuning checkpoints (the paper's rule: best by Val overall SR).

``--launcher "torchrun --nproc-per-node 8"`` runs the training steps on a GPU node; ``--dry-run``
prints the commands. ``gf-fig3 list`` prints the rows (the table in ``training/README.md``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass

from gf_bringup.runtime import console_script
from gf_training.config import load_config

TECHNIQUES = ("baseline", "vlm", "cotrain", "discrete", "latent")
SCHEMES = ("full", "lora", "action")
PRETRAIN_CONFIG = {"baseline": "pretrain.yaml", "cotrain": "pretrain_cotrain.yaml",
                   "discrete": "pretrain_discrete.yaml", "latent": "pretrain_latent.yaml"}
DESCRIPTION = {
    "baseline": "pi0-style VLA pre-trained on robot data",
    "vlm": "PaliGemma VLM, no VLA pre-training",
    "cotrain": "VLA pre-trained with vision-language co-training",
    "discrete": "VLA pre-trained with discretised action targets (parallel, knowledge insulation)",
    "latent": "VLA pre-trained with latent actions (villa-X style)",
}
SCHEME_DESCRIPTION = {"full": "full fine-tuning", "lora": "LoRA on the VLM", "action": "action expert only"}


@dataclass(frozen=True)
class Row:
    """One row of Figure 3."""

    technique: str
    scheme: str

    @property
    def name(self) -> str:
        return f"{self.technique}-{self.scheme}"

    @property
    def finetune_config(self) -> str:
        return f"fig3/{self.technique}_{self.scheme}.yaml"

    @property
    def pretrain_config(self) -> str | None:
        return PRETRAIN_CONFIG.get(self.technique)


def rows() -> list[Row]:
    """All 15 rows, technique-major."""
    return [Row(t, s) for t in TECHNIQUES for s in SCHEMES]


def row(name: str) -> Row:
    """A row by name (``cotrain-lora``)."""
    for r in rows():
        if r.name == name:
            return r
    raise ValueError(f"unknown Figure 3 row {name!r}; rows: {', '.join(r.name for r in rows())}")


def _train_cmd(launcher: str | None, config: str, overrides: list[str]) -> list[str]:
    if launcher:
        return [*shlex.split(launcher), "-m", "gf_training.train", config, *overrides]
    return ["gf-train", config, *overrides]


def commands(
    r: Row, pretrain_data: list[str] | None = None, demos: list[str] | None = None, launcher: str | None = None,
    sweep_trials: int = 100, extra: list[str] | None = None,
) -> list[list[str]]:
    """The row's commands in order (see the module docstring)."""
    cmds: list[list[str]] = []
    pre_overrides = [f"data.demo_dirs=[{','.join(pretrain_data)}]"] if pretrain_data else []
    if r.technique == "cotrain":
        cot = load_config(r.pretrain_config).cotrain
        glyphs, tabletop = cot.vl_dirs
        cmds.append(["gf-vl-data", "glyphs", "--out", glyphs])
        cmds.append(["gf-vl-data", "tabletop", "--out", tabletop])
    if r.technique == "latent":
        lam = load_config(r.pretrain_config).latent.lam
        source = ["--demo-dirs", *pretrain_data] if pretrain_data else ["--demo-dirs", "<pre-training data>"]
        cmds.append(["gf-lam", "train", *source, "--out", str(lam)])
    if r.pretrain_config:
        cmds.append(_train_cmd(launcher, r.pretrain_config, pre_overrides))
    fine_overrides = [f"data.demo_dirs=[{','.join(demos)}]"] if demos else []
    cmds.append(_train_cmd(launcher, r.finetune_config, fine_overrides + list(extra or [])))
    cmds.append(["gf-sweep", load_config(r.finetune_config).output_dir, "--trials", str(sweep_trials)])
    return cmds


def table() -> str:
    """The Markdown table of rows, configs and commands."""
    lines = ["| row | starts from | fine-tuning | pre-training config | fine-tuning config | command |",
             "|---|---|---|---|---|---|"]
    for r in rows():
        lines.append(f"| {r.name} | {DESCRIPTION[r.technique]} | {SCHEME_DESCRIPTION[r.scheme]} | "
                     f"{r.pretrain_config or '-'} | {r.finetune_config} | `gf-fig3 run {r.name}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-fig3``."""
    parser = argparse.ArgumentParser(prog="gf-fig3", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the rows (Markdown table)")
    run = sub.add_parser("run", help="run (or resume) every step of one row")
    run.add_argument("row", help="e.g. baseline-full, cotrain-lora, latent-action")
    run.add_argument("--pretrain-data", nargs="+", help="robot-data demo directories for pre-training (and the LAM)")
    run.add_argument("--demos", nargs="+", help="GrinningFace fine-tuning demos (default: the configs' demos/train500)")
    run.add_argument("--launcher", help='e.g. "torchrun --nproc-per-node 8" (default: gf-train, one process)')
    run.add_argument("--sweep-trials", type=int, default=100)
    run.add_argument("--dry-run", action="store_true", help="print the commands only")
    run.add_argument("overrides", nargs="*", help="extra section.key=value overrides of the fine-tuning run")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(table())
        return 0
    try:
        r = row(args.row)
    except ValueError as exc:
        parser.error(str(exc))
    if r.pretrain_config and not args.pretrain_data and not args.dry_run:
        data = load_config(r.pretrain_config).data
        if not data.demo_dirs and data.synthetic is None:
            parser.error(f"{r.name} pre-trains first: give --pretrain-data (robot-data demo directories)")
    cmds = commands(r, args.pretrain_data, args.demos, args.launcher, args.sweep_trials, args.overrides)
    for i, cmd in enumerate(cmds, 1):
        print(f"[gf-fig3] {r.name} step {i}/{len(cmds)}: {shlex.join(cmd)}", flush=True)
        if not args.dry_run:
            done = subprocess.run([console_script(cmd[0]), *cmd[1:]])
            if done.returncode:
                print(f"[gf-fig3] step {i} failed (exit {done.returncode}); run the same command again to resume",
                      file=sys.stderr)
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
