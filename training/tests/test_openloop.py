"""gf-openloop: predicted vs. demonstrated motion over episodes, per step and axis."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gf_training.episodes import DecodedEpisode
from gf_training.openloop import check


def episodes(n: int = 12, length: int = 20) -> list[DecodedEpisode]:
    """Episodes whose first frame encodes a target offset (the brightness of the image) that the
    demo then moves towards along x, as a cube's position decides a demo's approach."""
    rng = np.random.default_rng(0)
    eps = []
    for i in range(n):
        offset = rng.uniform(-1, 1)
        images = np.full((length, 8, 8, 3), int(128 + 100 * offset), np.uint8)
        actions = np.zeros((length, 7), np.float32)
        actions[:, 0] = 0.05 * offset
        actions[:, 2] = rng.normal(0, 0.01, length)
        eps.append(DecodedEpisode(images, np.zeros((length, 7), np.float32), actions, "pick", f"ep{i}"))
    return eps


class ImageReader:
    """Moves as the image says: what a policy that sees the target does."""

    def predict(self, image, instruction, proprio, seed=None):
        offset = (float(image.mean()) - 128) / 100
        chunk = np.zeros((10, 7), np.float32)
        chunk[:, 0] = 0.05 * offset
        return chunk


class AverageMover:
    """Moves to the average target whatever it sees."""

    def predict(self, image, instruction, proprio, seed=None):
        chunk = np.zeros((10, 7), np.float32)
        chunk[:, 0] = 0.01
        return chunk


def test_a_policy_that_reads_the_image_agrees_and_one_that_does_not_is_flat():
    rows = {(r.step, r.axis): r for r in check(ImageReader(), episodes(), steps=[0, 5], horizon=10)}
    assert rows[0, "x"].correlation > 0.99 and rows[5, "x"].episodes == 12
    assert rows[0, "x"].predicted_std == pytest.approx(rows[0, "x"].demo_std, rel=0.05)
    flat = {(r.step, r.axis): r for r in check(AverageMover(), episodes(), steps=[0], horizon=10)}
    assert math.isnan(flat[0, "x"].correlation) and flat[0, "x"].predicted_std == 0.0
    assert flat[0, "x"].demo_std > 0.1


def test_episodes_too_short_for_a_step_are_left_out_and_too_few_is_an_error():
    eps = episodes(4, length=20) + episodes(3, length=12)
    rows = check(ImageReader(), eps, steps=[0, 5], horizon=10)
    assert {r.step: r.episodes for r in rows} == {0: 7, 5: 4}
    with pytest.raises(ValueError, match="fewer than 2 episodes"):
        check(ImageReader(), eps, steps=[15], horizon=10)
