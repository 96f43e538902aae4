"""The operator's camera preview without a display: a PNG rewritten at most preview_hz times a second."""

import cv2
import numpy as np
import pytest

from gf_teleop.preview import FramePreview


@pytest.fixture
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def frame(value: int) -> np.ndarray:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = value  # red
    return rgb


def test_without_a_display_the_preview_is_a_png_refreshed_at_most_at_its_rate(tmp_path, no_display):
    path = tmp_path / "view" / "preview.png"
    preview = FramePreview("auto", path, rate_hz=4.0, scale=2)
    assert preview.mode == "file" and str(path) in preview.note
    assert preview.update(frame(10), now=0.0)
    assert not preview.update(frame(20), now=0.1)  # within 0.25 s of the last one: skipped
    shown = cv2.imread(str(path))
    assert shown.shape == (8, 12, 3) and (shown[..., 2] == 10).all() and (shown[..., :2] == 0).all()  # BGR on disk
    assert preview.update(frame(30), now=0.3)
    assert (cv2.imread(str(path))[..., 2] == 30).all() and preview.frames_shown == 2
    assert [p.name for p in path.parent.iterdir()] == ["preview.png"]  # no temporary file left behind


def test_off_shows_nothing_and_a_window_without_a_display_is_refused(tmp_path, no_display):
    off = FramePreview("off", tmp_path / "p.png")
    assert not off.update(frame(1), now=0.0) and not (tmp_path / "p.png").exists()
    with pytest.raises(ValueError, match="needs a display"):
        FramePreview("window", tmp_path / "p.png")
    with pytest.raises(ValueError, match="must be one of"):
        FramePreview("terminal", tmp_path / "p.png")
