"""What the camera sees, for the teleoperator: a window when there is a display, a live PNG otherwise.

A headless simulation (and a robot PC reached over SSH) shows the operator nothing of the scene.
``FramePreview`` takes the newest camera frame and, at most ``rate_hz`` times a second, shows it in
an OpenCV window (``window``) or writes it atomically to a PNG that any image viewer refreshes
(``file``; e.g. ``eog`` or VS Code's preview, also across an SSH mount). ``auto`` picks the window
when ``$DISPLAY`` or ``$WAYLAND_DISPLAY`` is set and OpenCV can open one, the file otherwise.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

MODES = ("auto", "window", "file", "off")
WINDOW_TITLE = "gf-teleop: camera"


def default_preview_file() -> Path:
    """Per user, so two operators on one robot PC do not overwrite each other's preview."""
    return Path(tempfile.gettempdir()) / f"gf-teleop-preview-{os.getuid()}.png"


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class FramePreview:
    """Shows or saves the newest RGB frame at most ``rate_hz`` times a second (``update``)."""

    def __init__(self, mode: str, path: str | Path, rate_hz: float = 4.0, scale: int = 2):
        if mode not in MODES:
            raise ValueError(f"preview must be one of {', '.join(MODES)}, got {mode!r}")
        if rate_hz <= 0 or scale < 1:
            raise ValueError("preview rate_hz must be > 0 and scale >= 1")
        self.path, self.period, self.scale = Path(path), 1.0 / rate_hz, int(scale)
        self.note = ""
        if mode == "auto":
            mode = "window" if self._open_window() else "file"
        elif mode == "window" and not self._open_window():
            raise ValueError("preview:=window needs a display and OpenCV with GUI support; use file or off")
        self.mode = mode
        self.frames_shown = 0
        self._last = -np.inf
        if mode == "file":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.note = f"camera preview: {self.path.resolve()} (refreshed {rate_hz:g}x per second; open it in an image viewer)"
        elif mode == "window":
            self.note = f"camera preview: window '{WINDOW_TITLE}'"

    @staticmethod
    def _open_window() -> bool:
        if not display_available():  # OpenCV's Qt backend aborts the process without one
            return False
        try:
            import cv2

            cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_NORMAL)
            return True
        except Exception:  # noqa: BLE001 - cv2 without a GUI backend raises cv2.error; any failure means no window
            return False

    def due(self, now: float) -> bool:
        """Would a frame given now be shown? (Lets a caller skip decoding the others.)"""
        return self.mode != "off" and now - self._last >= self.period

    def update(self, rgb: np.ndarray, now: float) -> bool:
        """Show/save ``rgb`` (H, W, 3 uint8) unless one was shown less than a period ago."""
        if not self.due(now):
            return False
        self._last = now
        import cv2

        frame = np.ascontiguousarray(rgb[..., ::-1])  # OpenCV wants BGR
        if self.scale > 1:  # a 224 px camera is small on a screen: nearest keeps the pixels honest
            frame = cv2.resize(frame, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        if self.mode == "window":
            cv2.imshow(WINDOW_TITLE, frame)
            cv2.waitKey(1)
        else:
            ok, data = cv2.imencode(".png", frame)
            if not ok:
                return False
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(data.tobytes())
            os.replace(tmp, self.path)  # a viewer never reads half a file
        self.frames_shown += 1
        return True

    def close(self) -> None:
        if self.mode == "window":
            import cv2

            cv2.destroyWindow(WINDOW_TITLE)
