"""`gf-layouts`: a contact sheet of trial layouts exactly as the policy camera sees them.

  gf-layouts --protocol Val --count 8 --out layouts.png [--seed 0] [--image-size 224] [--robot widowx]

Each tile is the rendered first observation of a trial with its instruction and the target card
outlined, so people can check what a policy is asked to do before they trust a number.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import gymnasium as gym
from PIL import Image, ImageDraw

from gf_bringup.constants import DEFAULT_SPLIT
from gf_eval.camera import card_quads, policy_camera
from gf_eval.emoji_cli import label_font
from gf_eval.trials import make_trial


def render_layouts(protocol: str, indices: list[int], seed: int, image_size: int, robot: str, split: str) -> list[tuple[Image.Image, str]]:
    import gf_sim_bridge.env  # noqa: F401

    env = gym.make("GrinningFace-v1", robot=robot, image_size=image_size, split=split)
    task = env.unwrapped
    tiles = []
    for i in indices:
        trial = make_trial(protocol, i, seed, splits=task.splits)
        env.reset(seed=trial.seed, options={"trial": trial})
        image = Image.fromarray(task.policy_image())
        quad = card_quads(trial, policy_camera(image_size))[trial.target_index]
        ImageDraw.Draw(image).polygon([tuple(p) for p in quad], outline=(0, 220, 0), width=2)
        tiles.append((image, f"{trial.trial_id}: {trial.instruction}"))
    env.close()
    return tiles


def contact_sheet(tiles: list[tuple[Image.Image, str]], columns: int = 4, caption_h: int = 36) -> Image.Image:
    w, h = tiles[0][0].size
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * (w + 6) + 6, rows * (h + caption_h + 6) + 6), "white")
    draw, font = ImageDraw.Draw(sheet), label_font(11)
    for n, (image, caption) in enumerate(tiles):
        x, y = 6 + (n % columns) * (w + 6), 6 + (n // columns) * (h + caption_h + 6)
        sheet.paste(image, (x, y))
        words, lines, line = caption.split(), [], ""
        for word in words:  # wrap the caption to the tile width
            if draw.textlength(line + " " + word, font=font) > w and line:
                lines.append(line)
                line = word
            else:
                line = (line + " " + word).strip()
        lines.append(line)
        draw.multiline_text((x, y + h + 2), "\n".join(lines[:3]), fill="black", font=font)
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-layouts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="Val", choices=["ID", "Train", "Val", "Hard", "Demo"])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--first", type=int, default=0, help="first trial index")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the trial specs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--robot", default="widowx")
    parser.add_argument("--split", default=DEFAULT_SPLIT)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("layouts.png"))
    args = parser.parse_args(argv)
    tiles = render_layouts(args.protocol, list(range(args.first, args.first + args.count)), args.seed,
                           args.image_size, args.robot, args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(tiles, args.columns).save(args.out)
    print(f"wrote {args.out} ({len(tiles)} {args.protocol} layouts; the target card is outlined in green)")
    return 0
