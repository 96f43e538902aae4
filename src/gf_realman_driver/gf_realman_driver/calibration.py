"""Guided calibration of the Touch layout (ROS-free core of ``gf-calibrate``).

The operator jogs the end effector with the teleop keyboard until the fingertips rest on the
centre of card slot 0 (the robot's left), presses Enter, and does the same for slots 1 and 2. The
EE position reported at each Enter becomes that slot's centre (x, y) and touch height (z) in the
arm base frame; the layout (``gf_eval.touch.TouchLayout``) is saved as YAML with a timestamp.

Each recorded point is checked at once, so a slip is caught while the operator is still there:
cards must not overlap (centres at least one card size apart), slots go from the robot's left to
its right (decreasing y), and the table should be level (touch heights within ``max_z_spread``).

The driver derives its table floor from a loaded calibration (``card_floor_z``; the node's
``card_layout`` parameter) unless the operator sets ``floor_z``: the card plane plus
``CARD_FLOOR_MARGIN``.
"""

from __future__ import annotations

import math
from pathlib import Path

from gf_eval.touch import DEFAULT_CARD_SIZE, DEFAULT_TOUCH_HEIGHT, CardSlot, LayoutError, TouchLayout, timestamp

SLOT_NAMES = ("slot 0 (the robot's left)", "slot 1 (the middle)", "slot 2 (the robot's right)")

CARD_FLOOR_MARGIN = 0.005
"""m above the calibrated card plane for the floor derived from a calibration: the fingertip stops
just short of the cards, never pressing into them or the table even with a few mm of tracking
error, and a gripper close there still counts as a touch (up to the layout's ``touch_height``)."""


def card_floor_z(layout: TouchLayout, tcp_offset=(0.0, 0.0, 0.0), margin: float = CARD_FLOOR_MARGIN) -> float:
    """The fingertip floor for a card calibration (m, arm base frame): the highest card plane plus
    ``margin``, so no card is pressed even where the table is a little higher.

    A slot's z is the height of the controller's tool frame while the fingertips rested on the
    card, the gripper pointing down (the calibration jogs without rotating), so the card plane at
    the fingertip is that z less the fingertip's offset along the tool frame's z axis (``tcp_offset``
    as in the safety limits; zero for a fingertip tool frame).
    """
    if not (0.0 <= margin < layout.touch_height):
        raise ValueError(f"the card floor margin {margin} m must be >= 0 and below the layout's touch height "
                         f"{layout.touch_height} m (a touch must stay possible)")
    plane = max(slot.z for slot in layout.slots) - float(tcp_offset[2])
    return plane + float(margin)


class CalibrationError(LayoutError):
    """A recorded point that cannot be right; the message says what to do."""


class CalibrationRoutine:
    """Records the three card centres one by one (see the module docstring)."""

    def __init__(self, card_size: float = DEFAULT_CARD_SIZE, touch_height: float = DEFAULT_TOUCH_HEIGHT,
                 max_z_spread: float = 0.02, frame_id: str = "base_link"):
        self.card_size = float(card_size)
        self.touch_height = float(touch_height)
        self.max_z_spread = float(max_z_spread)
        self.frame_id = frame_id
        self.points: list[CardSlot] = []

    @property
    def slot(self) -> int:
        """Index of the slot to record next (3 when done)."""
        return len(self.points)

    @property
    def done(self) -> bool:
        return len(self.points) == 3

    def prompt(self) -> str:
        """What the operator should do now."""
        if self.done:
            return "all three card centres recorded"
        return (f"Jog the fingertips onto the centre of the card at {SLOT_NAMES[self.slot]}, touching it, "
                f"then press Enter (Backspace = redo the previous slot, q = quit without saving).")

    def record(self, xyz, yaw: float = 0.0) -> str:
        """Record the current EE position for the next slot; ``CalibrationError`` if it cannot be right."""
        if self.done:
            raise CalibrationError("all three slots are recorded already")
        x, y, z = (float(v) for v in xyz)
        if not all(math.isfinite(v) for v in (x, y, z)):
            raise CalibrationError("no valid EE position yet (is the driver running and publishing /gf/ee_state?)")
        point = CardSlot(x, y, z, float(yaw))
        for i, other in enumerate(self.points):
            gap = math.hypot(x - other.x, y - other.y)
            if gap < self.card_size:
                raise CalibrationError(
                    f"this point is {gap * 100:.1f} cm from slot {i}, closer than a card ({self.card_size * 100:.0f} cm): "
                    "the cards would overlap; move to the next card's centre"
                )
        if self.points and y >= self.points[-1].y:
            raise CalibrationError(
                f"slot {self.slot} must be to the right of slot {self.slot - 1} as the robot sees it "
                f"(smaller y: {y:+.3f} is not below {self.points[-1].y:+.3f})"
            )
        zs = [p.z for p in self.points] + [z]
        if max(zs) - min(zs) > self.max_z_spread:
            raise CalibrationError(
                f"touch heights differ by {(max(zs) - min(zs)) * 100:.1f} cm (limit {self.max_z_spread * 100:.0f} cm): "
                "is the EE really resting on the card? (or is the table not level?)"
            )
        self.points.append(point)
        return f"recorded {SLOT_NAMES[self.slot - 1]} at x={x:+.3f} y={y:+.3f} z={z:+.3f} m"

    def undo(self) -> str:
        """Forget the last recorded slot."""
        if not self.points:
            return "nothing recorded yet"
        self.points.pop()
        return f"forgot {SLOT_NAMES[self.slot]}; record it again"

    def layout(self, notes: str = "") -> TouchLayout:
        """The recorded layout, stamped now (``LayoutError`` if not all slots are recorded)."""
        if not self.done:
            raise CalibrationError(f"only {self.slot} of 3 slots recorded")
        return TouchLayout(
            slots=tuple(self.points),  # type: ignore[arg-type]
            card_size=self.card_size, touch_height=self.touch_height, frame_id=self.frame_id,
            created=timestamp(), source="gf-calibrate", notes=notes,
        )

    def save(self, path: Path | str, notes: str = "") -> TouchLayout:
        """Write the layout YAML (parent directories created) and return it."""
        layout = self.layout(notes)
        layout.save(Path(path))
        return layout
