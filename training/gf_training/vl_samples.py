"""What one VL sample shows, asks and answers: the glyph, card, table-card, tabletop, which-card and cube sample
builders, their question paraphrases and answer formats (``tabletop_answer``, ``location_answer``).

Each builder is a pure function of the emoji or trial, the seed and the sample index; writing
the samples to disk is ``gf_training.vl_generate``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from gf_eval.splits import SplitEntry

GLYPH_QUESTIONS = (
    "What's in the image?",
    "What is shown in this image?",
    "Which emoji is this?",
    "Describe the emoji in the picture.",
)
TABLETOP_QUESTIONS = (
    "Name all emojis on the table from left to right.",
    "Which emojis are on the cards on the table, from left to right?",
    "What is printed on the three cards, from left to right?",
)
# A printed card as gf-probe shows it; "caption en" is the prompt the probe (and PaliGemma) uses.
CARD_QUESTIONS = ("caption en", *GLYPH_QUESTIONS)
WHICH_QUESTIONS = (
    "Which card shows {desc}?",
    "Where is the card with {desc}?",
    "On which card is {desc}?",
)
CUBE_QUESTIONS = (
    "Where is the cube?",
    "Locate the cube.",
    "Point at the cube.",
)


def glyph_sample(entry: SplitEntry, index: int, seed: int, size: int) -> tuple[Image.Image, str, dict[str, Any]]:
    """Image, question and parameters of glyph sample ``index`` showing ``entry``."""
    from gf_eval.catalog import render_glyph

    rng = np.random.default_rng([seed, index])
    background = tuple(int(c) for c in rng.integers(200, 256, size=3))
    scale = float(rng.uniform(0.35, 0.85))
    angle = float(rng.uniform(-15.0, 15.0))
    glyph = render_glyph(entry.char)
    side = max(1, round(size * scale))
    factor = side / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * factor)), max(1, round(glyph.height * factor))), Image.LANCZOS)
    glyph = glyph.rotate(angle, resample=Image.BICUBIC, expand=True)
    canvas = Image.new("RGB", (size, size), background)
    x = int(rng.integers(0, max(1, size - glyph.width + 1)))
    y = int(rng.integers(0, max(1, size - glyph.height + 1)))
    canvas.paste(glyph, (x, y), mask=glyph)
    question = GLYPH_QUESTIONS[int(rng.integers(len(GLYPH_QUESTIONS)))]
    meta = {"background": background, "scale": round(scale, 4), "angle": round(angle, 3), "xy": [x, y]}
    return canvas, question, meta


def card_sample(entry: SplitEntry, index: int, seed: int, size: int) -> tuple[Image.Image, str, dict[str, Any]]:
    """Image, question and parameters of card sample ``index``: ``entry`` printed on a card (as the
    cards of the benchmark are, upright and centred) seen at a random scale."""
    from gf_eval.catalog import Emoji, render_card

    rng = np.random.default_rng([seed, index, 3])
    fraction = float(rng.uniform(0.15, 0.9))
    card = render_card(Emoji(entry.id, entry.char, entry.name, "", ""), size, fraction)
    question = CARD_QUESTIONS[int(rng.integers(len(CARD_QUESTIONS)))]
    return card, question, {"emoji_fraction": round(fraction, 4)}


# The policy's view of a card on the table (the 128 px crop of the mini rows): 24-38 px across,
# turned and foreshortened by the camera's angle, its emoji (DEFAULT_EMOJI_FRACTION of the card)
# 6-10 px: the scale the simulator's scenes show it at, where a whole card teaches nothing.
TABLE_CARD_SIDE = (24 / 128, 38 / 128)  # fraction of the image side


def table_card_sample(entry: SplitEntry, index: int, seed: int, size: int) -> tuple[Image.Image, str, dict[str, Any]]:
    """Image, question and parameters of table-card sample ``index``: ``entry`` printed on a card
    lying on a wood-coloured table, seen at the scale and angle of the policy camera's view."""
    from gf_bringup.constants import DEFAULT_EMOJI_FRACTION
    from gf_eval.catalog import Emoji, render_card

    rng = np.random.default_rng([seed, index, 5])
    side = float(rng.uniform(*TABLE_CARD_SIDE)) * size
    angle = float(rng.uniform(-35.0, 15.0))
    squash = float(rng.uniform(0.7, 1.0))  # the camera looks down at the table at a slant
    card = render_card(Emoji(entry.id, entry.char, entry.name, "", ""), 4 * round(side), DEFAULT_EMOJI_FRACTION)
    card = card.convert("RGBA").rotate(angle, resample=Image.BICUBIC, expand=True)
    card = card.resize((max(1, round(card.width / 4)), max(1, round(card.height / 4 * squash))), Image.LANCZOS)
    wood = np.array([rng.uniform(150, 215), rng.uniform(70, 120), rng.uniform(30, 70)])
    grain = np.sin(np.arange(size)[:, None] * rng.uniform(0.3, 0.9) + rng.uniform(0, 6.3)) * rng.uniform(4, 14)
    table = wood[None, None] + grain[..., None] + rng.normal(0, 6, (size, size, 3))
    canvas = Image.fromarray(np.clip(table, 0, 255).astype(np.uint8))
    x = int(rng.integers(0, max(1, size - card.width + 1)))
    y = int(rng.integers(0, max(1, size - card.height + 1)))
    canvas.paste(card, (x, y), mask=card)
    question = CARD_QUESTIONS[int(rng.integers(len(CARD_QUESTIONS)))]
    return canvas, question, {"card_px": round(side, 1), "angle": round(angle, 2), "squash": round(squash, 3), "xy": [x, y]}


def tabletop_answer(descriptions_left_to_right: Sequence[str]) -> str:
    """``"left: a; middle: b; right: c"``."""
    from gf_eval.camera import POSITION_NAMES

    return "; ".join(f"{pos}: {desc}" for pos, desc in zip(POSITION_NAMES, descriptions_left_to_right))


def _render(env: Any, trial: Any) -> tuple[np.ndarray, Any]:
    """Reset ``env`` (a GrinningFace-v1 env) to ``trial``: the policy image and the env's own camera."""
    from gf_eval.camera import PinholeCamera

    env.reset(seed=trial.seed, options={"trial": trial})
    camera = PinholeCamera(env.unwrapped.camera_intrinsics(), env.unwrapped.camera_extrinsics())
    return env.unwrapped.policy_image(), camera


def _pick_question(questions: Sequence[str], seed: int, index: int, stream: int) -> str:
    """One of ``questions`` for sample ``index``; ``stream`` keeps each generator's draws its own."""
    rng = np.random.default_rng([seed, index, stream])
    return questions[int(rng.integers(len(questions)))]


def tabletop_sample(env: Any, trial: Any, index: int, seed: int) -> tuple[np.ndarray, str, str, dict[str, Any]]:
    """Render ``trial`` in ``env`` (a GrinningFace-v1 env); image, question, answer, parameters.

    Positions come from the env's own camera matrices and the trial's card positions."""
    from gf_eval.camera import positions_left_to_right

    image, camera = _render(env, trial)
    order = positions_left_to_right(trial, camera)
    question = _pick_question(TABLETOP_QUESTIONS, seed, index, stream=1)
    answer = tabletop_answer([trial.cards[i].description for i in order])
    return image, question, answer, {"trial": trial.to_dict(), "left_to_right": order}


def which_sample(env: Any, trial: Any, index: int, seed: int) -> tuple[np.ndarray, str, str, dict[str, Any]]:
    """Render ``trial`` in ``env``; "which card shows <one of its emojis>?" -> left, middle or right
    as the camera sees it (the recognition the benchmark asks of a policy, put as a question)."""
    from gf_eval.camera import POSITION_NAMES, positions_left_to_right

    image, camera = _render(env, trial)
    order = positions_left_to_right(trial, camera)
    rng = np.random.default_rng([seed, index, 4])
    card = int(rng.integers(len(trial.cards)))
    question = WHICH_QUESTIONS[int(rng.integers(len(WHICH_QUESTIONS)))].format(desc=trial.cards[card].description)
    answer = POSITION_NAMES[order.index(card)]
    return image, question, answer, {"trial": trial.to_dict(), "left_to_right": order, "card": card}


def location_answer(uv: Sequence[float], width: int, height: int) -> str:
    """``"x 57 y 41"``: an image point in whole percent of the width and height (0-99)."""
    x = min(max(int(100 * float(uv[0]) / width), 0), 99)
    y = min(max(int(100 * float(uv[1]) / height), 0), 99)
    return f"x {x} y {y}"


def cube_sample(env: Any, trial: Any, index: int, seed: int) -> tuple[np.ndarray, str, str, dict[str, Any]]:
    """Render ``trial`` in ``env``; image, "where is the cube?", its image position, parameters."""
    from gf_eval.camera import cube_pixel

    image, camera = _render(env, trial)
    uv = cube_pixel(trial, camera)
    question = _pick_question(CUBE_QUESTIONS, seed, index, stream=2)
    answer = location_answer(uv, image.shape[1], image.shape[0])
    return image, question, answer, {"trial": trial.to_dict(), "cube_uv": [round(float(v), 2) for v in uv]}
