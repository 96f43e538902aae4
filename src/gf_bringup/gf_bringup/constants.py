"""The benchmark's numbers and defaults that every package shares, each written once.

Topic and service names are in :mod:`gf_bringup.names`; the rules that use these numbers (trial
specs, scoring, splits) are in ``gf_eval``.
"""

from __future__ import annotations

CONTROL_RATE_HZ = 20  # policy steps per second: one action row per step, simulated and real
CONTROL_PERIOD_NS = 1_000_000_000 // CONTROL_RATE_HZ
EPISODE_STEPS = 200  # control steps of a simulated episode (upstream's 10 s)
DEFAULT_SPLIT = "gf-default-v1"  # the shipped Train / Val / Hard split (gf_eval/splits.py)
DEFAULT_EMOJI_FRACTION = 0.25  # emoji width / card width on the printed and simulated cards
