"""The real-robot "Touch [desc.]" task (ROS-free): table layout, trial plan, scoring, operator commands.

Task (docs/architecture.md, "The benchmark's reference facts"): three printed cards lie on the table; the policy is told "Touch <desc>."
and must move its end effector (EE) over the named card and close the gripper. 30 trials on
validation emojis by default.

* ``TouchLayout``: where the three card slots are, in the arm's base frame, as recorded by the
  calibration routine (``gf-calibrate``): per slot the card centre x, y, its yaw, and z = the EE
  height reported while the fingertips rest on the card. Slot 0 is the robot's left (largest y),
  as in the simulated task. Saved as YAML with a timestamp.
* ``make_touch_trial``: trial ``i`` of the Touch protocol shows the three emojis and the target
  of the simulated ``Val`` trial ``i`` with the same base seed (so a real trial and its simulated
  twin can be compared one by one), with the cards at the calibrated slots and the instruction
  ``"Touch {desc}."``. No cube: ``cube_xy`` is (0, 0) and unused.
* ``TouchMonitor``: scores automatically at the *first gripper close* of a trial. A close is the
  gripper opening (fraction of its maximum, the 7th proprio value) dropping below
  ``close_fraction`` after it has been above ``open_fraction`` in this trial (a gripper that
  starts closed must open first). Execution = at that instant the EE is over some card's
  footprint (the rotated square, gf_eval.scoring's rule) and at most ``touch_height`` above that
  card's recorded touch height; recognition = that card is the target.
* Operator commands (``OPERATOR_KEYS``): confirm a set-up / accept a score, override the
  touched card, void an attempt (it is logged in ``voided.jsonl`` and the trial is run again),
  emergency stop / resume, quit (the run resumes later without losing or repeating trials).
* ``TouchEvaluation``: an ``Evaluation`` whose plan is the Touch trials; same resumable
  ``results.jsonl``, ``run.json`` and report as the simulated protocols.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from gf_bringup.constants import DEFAULT_SPLIT
from gf_eval.evaluation import Evaluation, EvaluationConfig
from gf_eval.scoring import CardFootprint, inside_footprint
from gf_eval.splits import EmojiSplits, load_splits
from gf_eval.trials import TrialSpec, make_trial

TOUCH_PROTOCOL = "Touch"
TOUCH_TEMPLATE = "Touch {desc}."
SOURCE_PROTOCOL = "Val"  # Touch trial i shows the emojis and target of Val trial i
DEFAULT_TOUCH_TRIALS = 30
DEFAULT_CARD_SIZE = 0.14
DEFAULT_TOUCH_HEIGHT = 0.04
LAYOUT_VERSION = 1
VOIDED_FILE = "voided.jsonl"


class LayoutError(ValueError):
    """A layout file or calibration that cannot be used; the message says what to fix."""


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardSlot:
    """One card position in the arm base frame: centre x, y (m), touch height z (m), yaw (rad)."""

    x: float
    y: float
    z: float
    yaw: float = 0.0


@dataclass(frozen=True)
class TouchLayout:
    """The three card slots of the Touch task, in the arm's base frame (see the module docstring)."""

    slots: tuple[CardSlot, CardSlot, CardSlot]
    card_size: float = DEFAULT_CARD_SIZE
    touch_height: float = DEFAULT_TOUCH_HEIGHT
    frame_id: str = "base_link"
    created: str = ""
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if len(self.slots) != 3:
            raise LayoutError(f"a Touch layout needs exactly 3 card slots, got {len(self.slots)}")
        for i, s in enumerate(self.slots):
            if not all(math.isfinite(v) for v in (s.x, s.y, s.z, s.yaw)):
                raise LayoutError(f"slot {i} has a non-finite coordinate: {s}")
        if not (0.0 < self.card_size < 1.0):
            raise LayoutError(f"card_size {self.card_size} m is not a plausible card edge (0..1 m)")
        if not (0.0 < self.touch_height < 0.5):
            raise LayoutError(f"touch_height {self.touch_height} m must be in (0, 0.5)")
        for i in range(3):
            for j in range(i + 1, 3):
                a, b = self.slots[i], self.slots[j]
                gap = math.hypot(a.x - b.x, a.y - b.y)
                if gap < self.card_size:
                    raise LayoutError(
                        f"slots {i} and {j} are {gap * 100:.1f} cm apart, less than the card size "
                        f"{self.card_size * 100:.1f} cm: the cards would overlap (re-run the calibration)"
                    )
        ys = [s.y for s in self.slots]
        if not (ys[0] > ys[1] > ys[2]):
            raise LayoutError(
                f"slot y values {[round(y, 3) for y in ys]} must decrease: slot 0 is the robot's left "
                "(largest y), slot 2 its right, as in the simulated task"
            )

    def footprint(self, slot: int) -> CardFootprint:
        """The card's footprint for scoring; ``top_z`` is the recorded touch height."""
        s = self.slots[slot]
        return CardFootprint(x=s.x, y=s.y, yaw=s.yaw, half_size=self.card_size / 2, top_z=s.z)

    def slot_name(self, slot: int) -> str:
        """"robot's left" / "middle" / "robot's right" for slot 0 / 1 / 2."""
        return ("robot's left", "middle", "robot's right")[slot]

    def to_dict(self) -> dict:
        return {
            "version": LAYOUT_VERSION,
            "frame_id": self.frame_id,
            "created": self.created,
            "source": self.source,
            "notes": self.notes,
            "card_size": float(self.card_size),
            "touch_height": float(self.touch_height),
            "slots": [{k: round(float(v), 6) for k, v in dataclasses.asdict(s).items()} for s in self.slots],
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "layout") -> TouchLayout:
        if not isinstance(data, dict) or "slots" not in data:
            raise LayoutError(f"{source}: not a Touch layout (needs a 'slots' list of three {{x, y, z, yaw}})")
        try:
            slots = tuple(CardSlot(float(s["x"]), float(s["y"]), float(s["z"]), float(s.get("yaw", 0.0))) for s in data["slots"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LayoutError(f"{source}: every slot needs numeric x, y, z (and optional yaw): {exc}") from exc
        try:
            return cls(
                slots=slots,  # type: ignore[arg-type]
                card_size=float(data.get("card_size", DEFAULT_CARD_SIZE)),
                touch_height=float(data.get("touch_height", DEFAULT_TOUCH_HEIGHT)),
                frame_id=str(data.get("frame_id", "base_link")),
                created=str(data.get("created", "")),
                source=str(data.get("source", "")),
                notes=str(data.get("notes", "")),
            )
        except LayoutError as exc:
            raise LayoutError(f"{source}: {exc}") from None

    @property
    def hash(self) -> str:
        """First 16 hex digits of the sha256 of the geometry (slots, sizes), for the records."""
        geometry = {k: v for k, v in self.to_dict().items() if k in ("slots", "card_size", "touch_height", "frame_id")}
        return hashlib.sha256(json.dumps(geometry, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: Path) -> Path:
        """Write the layout YAML atomically (the parent directory is created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (
            "# GrinningFace Touch layout: card slots in the arm base frame (m, rad).\n"
            "# z = EE height reported while the fingertips rest on the card. Slot 0 = robot's left.\n"
        )
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        os.replace(tmp, path)
        return path


def load_layout(path: Path | str) -> TouchLayout:
    """Read a layout YAML; errors name the file and say what to do."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"no Touch layout at {path}: run `gf-calibrate` (or `gf-launch robot_calibrate`) first")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LayoutError(f"{path}: not valid YAML ({exc})") from exc
    return TouchLayout.from_dict(data, str(path))


def timestamp() -> str:
    """Local time with offset, to the second (recorded in layouts)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


def make_touch_trial(
    index: int, base_seed: int, splits: EmojiSplits, layout: TouchLayout, template: str = TOUCH_TEMPLATE
) -> TrialSpec:
    """Touch trial ``index``: the emojis and target of Val trial ``index``, cards at the layout's slots."""
    base = make_trial(SOURCE_PROTOCOL, index, base_seed, splits)
    cards = tuple(
        dataclasses.replace(card, x=round(slot.x, 6), y=round(slot.y, 6), yaw=slot.yaw)
        for card, slot in zip(base.cards, layout.slots)
    )
    geometry = dataclasses.replace(base.geometry, card_half_size=layout.card_size / 2, card_jitter=0.0)
    return dataclasses.replace(
        base, protocol=TOUCH_PROTOCOL, cards=cards, instruction=template.format(desc=base.target.description),
        cube_xy=(0.0, 0.0), cube_yaw=0.0, geometry=geometry,
    )


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TouchScore:
    """The automatic score of one trial at its first gripper close (or at its end without one)."""

    touched_card: int  # card whose footprint holds the EE and which it is low enough over; -1 none
    over_card: int  # card whose footprint holds the EE xy, whatever the height; -1 none
    height_above_card: float  # EE z minus the touch height of over_card (nan when over no card)
    ee_xyz: tuple[float, float, float]
    time: float  # seconds since the trial started
    closed: bool  # False: the trial ended without a gripper close

    def outcome(self, target_index: int) -> tuple[bool, bool, bool]:
        """(executed, recognised, success)."""
        executed = self.touched_card >= 0
        recognised = executed and self.touched_card == target_index
        return executed, recognised, recognised


def touched_card(layout: TouchLayout, ee_xyz) -> tuple[int, int, float]:
    """(touched card, card under the EE, height above it) for an EE position in the base frame."""
    x, y, z = (float(v) for v in ee_xyz)
    for i in range(3):
        card = layout.footprint(i)
        if inside_footprint(card, x, y):
            height = z - card.top_z
            return (i if height <= layout.touch_height else -1), i, height
    return -1, -1, float("nan")


class TouchMonitor:
    """Watches one trial's EE states and scores it at the first gripper close (see module docstring)."""

    def __init__(self, layout: TouchLayout, close_fraction: float = 0.5, open_fraction: float = 0.8):
        if not (0.0 < close_fraction < open_fraction <= 1.0):
            raise ValueError("need 0 < close_fraction < open_fraction <= 1")
        self.layout = layout
        self.close_fraction = float(close_fraction)
        self.open_fraction = float(open_fraction)
        self._armed = False
        self.score: TouchScore | None = None
        self.last_xyz: tuple[float, float, float] | None = None

    def update(self, t: float, ee_xyz, gripper_fraction: float) -> TouchScore | None:
        """Feed one EE state (``t`` s since the trial start); returns the score once, at the close."""
        if self.score is not None:
            return None
        self.last_xyz = tuple(float(v) for v in ee_xyz)  # type: ignore[assignment]
        if gripper_fraction >= self.open_fraction:
            self._armed = True
        elif self._armed and gripper_fraction < self.close_fraction:
            self.score = self._score(t, closed=True)
            return self.score
        return None

    def finish(self, t: float) -> TouchScore:
        """The score when the trial ends without a close: nothing touched."""
        if self.score is None:
            xyz = self.last_xyz or (float("nan"),) * 3
            _, over, height = touched_card(self.layout, xyz) if self.last_xyz else (-1, -1, float("nan"))
            self.score = TouchScore(-1, over, height, xyz, t, closed=False)
        return self.score

    def _score(self, t: float, closed: bool) -> TouchScore:
        touched, over, height = touched_card(self.layout, self.last_xyz)
        return TouchScore(touched, over, height, self.last_xyz, t, closed)


def card_distances(spec: TrialSpec, ee_xyz) -> list[float]:
    """Horizontal EE distance to each card centre (m), in card order."""
    return [math.hypot(float(ee_xyz[0]) - c.x, float(ee_xyz[1]) - c.y) for c in spec.cards]


# --------------------------------------------------------------------------------------------
# Operator commands
# --------------------------------------------------------------------------------------------

CONFIRM, VOID, ESTOP, RESUME, QUIT, HELP = "confirm", "void", "estop", "resume", "quit", "help"
OVERRIDE_PREFIX = "override:"
OPERATOR_KEYS: dict[str, str] = {
    "\n": CONFIRM, "\r": CONFIRM, "y": CONFIRM,
    "0": OVERRIDE_PREFIX + "0", "1": OVERRIDE_PREFIX + "1", "2": OVERRIDE_PREFIX + "2", "n": OVERRIDE_PREFIX + "none",
    "v": VOID, "e": ESTOP, " ": ESTOP, "r": RESUME, "q": QUIT, "h": HELP, "?": HELP,
}
OPERATOR_HELP = """operator keys:
  Enter/y  start the trial (cards in place) / accept the automatic score
  0 1 2    the EE touched card slot 0/1/2 (override; also ends a running trial)
  n        nothing was touched (override; also ends a running trial)
  v        void this attempt (logged) and run the trial again
  e/space  emergency stop the arm      r  resume after an emergency stop
  q        stop (a running attempt is voided; at the score, it is accepted first); the run resumes later
  h        this help"""


def parse_command(text: str) -> str | None:
    """A key or a command word ('confirm', 'override:1', 'override 1', 'void', ...) -> command, or None."""
    if text in OPERATOR_KEYS:
        return OPERATOR_KEYS[text]
    word = text.strip().lower().replace(" ", ":")
    if word in OPERATOR_KEYS:
        return OPERATOR_KEYS[word]
    if word in ("accept", "start", "ok", ""):
        return CONFIRM if word else None
    if word in (CONFIRM, VOID, ESTOP, RESUME, QUIT, HELP):
        return word
    if word.startswith(OVERRIDE_PREFIX) and word[len(OVERRIDE_PREFIX):] in ("0", "1", "2", "none", "-1"):
        value = word[len(OVERRIDE_PREFIX):]
        return OVERRIDE_PREFIX + ("none" if value == "-1" else value)
    return None


def override_card(command: str) -> int | None:
    """The card of an override command (-1 = none), or None if it is not an override."""
    if not command.startswith(OVERRIDE_PREFIX):
        return None
    value = command[len(OVERRIDE_PREFIX):]
    return -1 if value == "none" else int(value)


# --------------------------------------------------------------------------------------------
# Texts and previews for the operator
# --------------------------------------------------------------------------------------------


def setup_text(spec: TrialSpec, layout: TouchLayout, position: tuple[int, int], preview: Path | None = None) -> str:
    """What the operator must lay out for a trial, one line per slot."""
    n, total = position
    lines = [f"Trial {spec.trial_id} ({n}/{total}): put these cards on the table"]
    for i, card in enumerate(spec.cards):
        slot = layout.slots[i]
        lines.append(
            f"  slot {i} ({layout.slot_name(i):>13}, x={slot.x:+.3f} y={slot.y:+.3f}): "
            f"{card.char}  {card.name}  [card id {card.emoji_id}]"
        )
    lines.append(f"  instruction: \"{spec.instruction}\"  (target: slot {spec.target_index})")
    if preview is not None:
        lines.append(f"  preview: {preview}")
    lines.append("Press Enter when the cards are in place (q = quit, h = help).")
    return "\n".join(lines)


def review_text(spec: TrialSpec, layout: TouchLayout, score: TouchScore) -> str:
    """The automatic score, for the operator to accept or override."""
    executed, recognised, _ = score.outcome(spec.target_index)
    if not score.closed:
        what = "the gripper never closed: nothing touched"
    elif score.touched_card >= 0:
        what = f"gripper closed over card slot {score.touched_card} ({spec.cards[score.touched_card].name})"
    elif score.over_card >= 0:
        what = (f"gripper closed over slot {score.over_card} but {score.height_above_card * 100:.1f} cm above it "
                f"(limit {layout.touch_height * 100:.1f} cm): not a touch")
    else:
        what = "gripper closed over no card"
    verdict = "SUCCESS" if recognised else ("wrong card" if executed else "not executed")
    return (f"{spec.trial_id}: {what} -> {verdict} (target slot {spec.target_index}). "
            "Enter = accept, 0/1/2/n = override, v = void and repeat")


def preview_image(spec: TrialSpec, layout: TouchLayout, card_px: int = 240):
    """A PNG-able PIL image of the three cards in slot order, labelled, the target framed."""
    from PIL import Image, ImageDraw, ImageFont

    from gf_eval.catalog import load_catalog, render_card

    catalog = load_catalog()
    pad, label_h = 16, 44
    width = 3 * card_px + 4 * pad
    height = card_px + 2 * pad + 2 * label_h
    canvas = Image.new("RGB", (width, height), (200, 200, 200))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((pad, 8), f"{spec.trial_id}: \"{spec.instruction}\"", fill=(0, 0, 0), font=font)
    for i, card in enumerate(spec.cards):
        left = pad + i * (card_px + pad)
        top = label_h
        image = render_card(catalog[card.emoji_id], card_px)
        canvas.paste(image, (left, top))
        if i == spec.target_index:
            draw.rectangle((left - 4, top - 4, left + card_px + 3, top + card_px + 3), outline=(220, 40, 40), width=4)
        draw.text((left, top + card_px + 8), f"slot {i} ({layout.slot_name(i)})", fill=(0, 0, 0), font=font)
        draw.text((left, top + card_px + 22), f"{card.name} [{card.emoji_id}]" + ("  <- target" if i == spec.target_index else ""),
                  fill=(0, 0, 0), font=font)
    return canvas


# --------------------------------------------------------------------------------------------
# The evaluation run
# --------------------------------------------------------------------------------------------


class TouchEvaluation(Evaluation):
    """``Evaluation`` with the Touch plan (``trials`` trials from ``first_index``) and a void log."""

    def __init__(
        self, output_dir: str, policy: str, layout: TouchLayout, *, trials: int = DEFAULT_TOUCH_TRIALS,
        first_index: int = 0, base_seed: int = 0, split: str = DEFAULT_SPLIT, checkpoint: str = "",
        robot: str = "rm75", template: str = TOUCH_TEMPLATE, package_versions: dict | None = None,
        force: bool = False, extra: dict | None = None,
    ):
        if trials < 1 or first_index < 0:
            raise ValueError("need trials >= 1 and first_index >= 0")
        config = EvaluationConfig(
            output_dir=output_dir, policy=policy, protocols=(TOUCH_PROTOCOL,), trials_per_protocol=trials,
            first_index=first_index, base_seed=base_seed, split=split, checkpoint=checkpoint, robot=robot, task="touch",
            template=template, extra={"layout": layout.to_dict(), "layout_hash": layout.hash, **(extra or {})},
        )
        splits = load_splits(split)
        plan = [make_touch_trial(i, base_seed, splits, layout, template) for i in range(first_index, first_index + trials)]
        super().__init__(config, package_versions, force=force, plan=plan)
        self.layout = layout
        self.template = template

    @property
    def voided_path(self) -> Path:
        return Path(self.config.output_dir) / VOIDED_FILE

    def log_void(self, spec: TrialSpec, reason: str, details: dict | None = None) -> None:
        """Append one voided attempt to voided.jsonl (fsynced); the trial itself stays pending."""
        row = {"trial_id": spec.trial_id, "time": timestamp(), "reason": reason, **(details or {})}
        with open(self.voided_path, "ab") as f:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def voided(self) -> list[dict]:
        """Every voided attempt so far."""
        if not self.voided_path.exists():
            return []
        return [json.loads(line) for line in self.voided_path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def preview_path(self, spec: TrialSpec) -> Path:
        """Where the set-up preview PNG of a trial goes (written on first use)."""
        path = Path(self.config.output_dir) / "previews" / f"{spec.trial_id}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            preview_image(spec, self.layout).save(path)
        return path


__all__ = [
    "CardSlot", "LayoutError", "TouchEvaluation", "TouchLayout", "TouchMonitor", "TouchScore", "load_layout",
    "make_touch_trial", "parse_command", "override_card", "setup_text", "review_text", "preview_image",
    "touched_card", "card_distances", "timestamp", "OPERATOR_HELP", "OPERATOR_KEYS", "TOUCH_PROTOCOL",
]
