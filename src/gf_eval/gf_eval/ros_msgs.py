"""Conversions between the benchmark's plain objects and gf_interfaces messages (one place)."""

from __future__ import annotations

import json

from gf_bringup.constants import CONTROL_RATE_HZ, EPISODE_STEPS
from gf_eval.results import TrialRecord
from gf_eval.trials import CardSpec, TrialSpec


def trial_to_msg(spec: TrialSpec, stamp=None, max_steps: int = EPISODE_STEPS, control_rate_hz: float = CONTROL_RATE_HZ):
    """TrialSpec -> gf_interfaces/Trial (layout for people and tools, spec_json for exactness)."""
    from gf_interfaces.msg import EmojiCard, EmojiLayout, Trial

    msg = Trial()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = "world"
    msg.trial_id = spec.trial_id
    msg.protocol = spec.protocol
    msg.index = spec.index
    msg.seed = spec.seed
    msg.instruction = spec.instruction
    layout = EmojiLayout()
    for card in spec.cards:
        c = EmojiCard(emoji_id=card.emoji_id, character=card.char, name=card.name, description=card.description)
        c.position.x, c.position.y, c.position.z = card.x, card.y, 0.0
        c.yaw = float(card.yaw)
        c.size = float(2 * spec.geometry.card_half_size)
        layout.cards.append(c)
    layout.target_index = spec.target_index
    layout.cube_position.x, layout.cube_position.y = spec.cube_xy
    layout.cube_position.z = spec.geometry.cube_half_size
    layout.cube_yaw = float(spec.cube_yaw)
    msg.layout = layout
    msg.split_name = spec.split_name
    msg.split_hash = spec.split_hash
    msg.max_steps = int(max_steps)
    msg.control_rate_hz = float(control_rate_hz)  # a float64 field: rosidl aborts the process on an int
    msg.spec_json = spec.to_json()
    return msg


def trial_from_msg(msg) -> TrialSpec:
    """gf_interfaces/Trial -> TrialSpec (exact when spec_json is set, else from the layout)."""
    if msg.spec_json:
        return TrialSpec.from_dict(json.loads(msg.spec_json))
    cards = tuple(
        CardSpec(c.emoji_id, c.character, c.name, c.description, c.position.x, c.position.y, c.yaw)
        for c in msg.layout.cards
    )
    if len(cards) != 3:
        raise ValueError(f"trial {msg.trial_id} has {len(cards)} cards, expected 3")
    return TrialSpec(
        protocol=msg.protocol, index=msg.index, base_seed=0, seed=int(msg.seed), split_name=msg.split_name,
        split_hash=msg.split_hash, cards=cards, target_index=int(msg.layout.target_index),
        cube_xy=(msg.layout.cube_position.x, msg.layout.cube_position.y), cube_yaw=msg.layout.cube_yaw,
        instruction=msg.instruction,
    )


def result_to_msg(record: TrialRecord, stamp=None):
    """A scored trial -> gf_interfaces/TrialResult."""
    from gf_interfaces.msg import TrialResult

    msg = TrialResult()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.trial_id = record.trial_id
    msg.protocol = record.protocol
    msg.index = record.index
    msg.seed = record.seed
    msg.target_emoji_id = record.target_emoji_id
    msg.target_index = record.target_index
    msg.placed_card = record.placed_card
    msg.executed = record.executed
    msg.recognised = record.recognised
    msg.success = record.success
    msg.upstream_success = record.upstream_success
    msg.end_reason = record.end_reason
    msg.steps = record.steps
    msg.wall_time = float(record.wall_time)
    msg.chunks_rejected = record.chunks_rejected
    return msg
