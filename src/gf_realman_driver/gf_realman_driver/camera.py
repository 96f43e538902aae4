"""Camera frame sources and camera calibration files (ROS-free).

Sources (``open_source``) give RGB uint8 frames:

* ``opencv``: ``cv2.VideoCapture`` on a V4L2 device path (``/dev/video0``), a device index
  (``0``), or a video file / stream URL (handy for replaying a recording through the graph).
* ``realsense``: the colour stream of an Intel RealSense through ``pyrealsense2`` (optional
  dependency; a clear error says how to install it), optionally by serial number.
* ``test_pattern``: synthetic frames (colour bars, a moving marker and the frame number) for dry
  runs and tests on machines without a camera.

A missing or unopenable device raises ``CameraError`` with what was tried and what to check.

Calibration: ``load_calibration`` reads the ROS camera_info YAML format written by
``camera_calibration`` (image_width, image_height, camera_name, camera_matrix, distortion_model,
distortion_coefficients, rectification_matrix, projection_matrix). Without a file, a pinhole
model from a horizontal field of view is used (and the node says so).
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


class CameraError(RuntimeError):
    """The camera cannot be opened or stopped delivering frames; the message says what to check."""


@dataclass(frozen=True)
class CameraCalibration:
    """Intrinsics of one camera, as in sensor_msgs/CameraInfo."""

    width: int
    height: int
    k: tuple[float, ...]  # 3x3 row-major
    d: tuple[float, ...] = ()
    r: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    p: tuple[float, ...] = field(default=())  # 3x4 row-major; () = [K | 0]
    distortion_model: str = "plumb_bob"
    name: str = ""
    source: str = ""  # file it came from, or "fov approximation"

    @property
    def projection(self) -> tuple[float, ...]:
        if self.p:
            return self.p
        k = self.k
        return (k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0)

    def scaled(self, width: int, height: int) -> CameraCalibration:
        """The same camera at another resolution (intrinsics scale with the image)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        k = list(self.k)
        k[0] *= sx; k[1] *= sx; k[2] *= sx  # noqa: E702
        k[4] *= sy; k[5] *= sy  # noqa: E702
        p = list(self.projection)
        p[0] *= sx; p[1] *= sx; p[2] *= sx; p[3] *= sx  # noqa: E702
        p[5] *= sy; p[6] *= sy; p[7] *= sy  # noqa: E702
        return CameraCalibration(width, height, tuple(k), self.d, self.r, tuple(p), self.distortion_model, self.name,
                                 self.source + f" (scaled from {self.width}x{self.height})")


def _matrix(data: dict, key: str, rows: int, cols: int, path: str) -> tuple[float, ...]:
    block = data.get(key)
    if not isinstance(block, dict) or "data" not in block:
        raise CameraError(f"{path}: missing {key} {{rows, cols, data}}")
    values = tuple(float(v) for v in block["data"])
    if len(values) != rows * cols:
        raise CameraError(f"{path}: {key} needs {rows * cols} numbers, has {len(values)}")
    return values


def load_calibration(path: Path | str) -> CameraCalibration:
    """Read a ROS camera_info YAML file (the ``camera_calibration`` / camera_info_manager format)."""
    path = Path(path)
    if not path.is_file():
        raise CameraError(f"camera calibration file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CameraError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or "camera_matrix" not in data:
        raise CameraError(f"{path}: not a camera_info YAML (needs image_width, image_height, camera_matrix, ...)")
    d_block = data.get("distortion_coefficients") or {"data": []}
    calib = CameraCalibration(
        width=int(data["image_width"]), height=int(data["image_height"]),
        k=_matrix(data, "camera_matrix", 3, 3, str(path)),
        d=tuple(float(v) for v in d_block.get("data", [])),
        r=_matrix(data, "rectification_matrix", 3, 3, str(path)) if "rectification_matrix" in data else CameraCalibration.r,
        p=_matrix(data, "projection_matrix", 3, 4, str(path)) if "projection_matrix" in data else (),
        distortion_model=str(data.get("distortion_model", "plumb_bob")),
        name=str(data.get("camera_name", "")), source=str(path),
    )
    if calib.width <= 0 or calib.height <= 0 or calib.k[0] <= 0 or calib.k[4] <= 0:
        raise CameraError(f"{path}: image size and focal lengths must be positive")
    return calib


def fov_calibration(width: int, height: int, hfov_deg: float = 69.0) -> CameraCalibration:
    """An undistorted pinhole camera with the given horizontal field of view, centred principal point."""
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    k = (f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0)
    return CameraCalibration(width, height, k, (0.0,) * 5, source=f"fov approximation ({hfov_deg:g} deg)")


# --------------------------------------------------------------------------------------------
# Frame sources
# --------------------------------------------------------------------------------------------


class FrameSource(ABC):
    """Something that yields RGB frames; ``read`` blocks until the next frame (or raises)."""

    name = "source"
    width = 0
    height = 0

    @abstractmethod
    def read(self) -> np.ndarray:
        """The next frame, (H, W, 3) uint8 RGB; ``CameraError`` when the device stopped delivering."""

    def close(self) -> None:  # noqa: B027 - optional hook: sources without a device have nothing to release
        """Release the device."""


class TestPatternSource(FrameSource):
    """Colour bars with a moving square and the frame number, paced at ``fps``."""

    name = "test_pattern"
    __test__ = False  # not a pytest test class despite the name

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0):
        if width < 16 or height < 16 or fps <= 0:
            raise CameraError("test pattern needs width, height >= 16 and fps > 0")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        bars = np.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0],
                         [255, 0, 255], [255, 0, 0], [0, 0, 255], [0, 0, 0]], dtype=np.uint8)
        columns = np.minimum(np.arange(self.width) * len(bars) // self.width, len(bars) - 1)
        self._base = np.repeat(bars[columns][None, :, :], self.height, axis=0)
        self.frames = 0
        self._next = time.monotonic()

    def read(self) -> np.ndarray:
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        frame = self._base.copy()
        size = max(4, self.height // 8)
        x = int((self.frames * 4) % max(1, self.width - size))
        y = (self.height - size) // 2
        frame[y:y + size, x:x + size] = (128, 128, 128)
        # Frame counter as 16 binary blocks along the bottom (readable by tests, no font needed).
        block = max(1, self.width // 16)
        for bit in range(16):
            on = (self.frames >> bit) & 1
            frame[-block:, bit * block:(bit + 1) * block] = 255 * on
        self.frames += 1
        return frame


def _device_argument(device: str):
    """'0' -> 0 (index); anything else stays a path / URL."""
    text = str(device).strip()
    return int(text) if text.isdigit() else text


class OpenCVSource(FrameSource):
    """``cv2.VideoCapture`` on a device index, a device path, a video file or a stream URL."""

    name = "opencv"

    def __init__(self, device: str = "0", width: int = 0, height: int = 0, fps: float = 0.0, fourcc: str = "",
                 read_timeout: float = 2.0):
        import cv2

        self.device = str(device)
        target = _device_argument(device)
        if isinstance(target, str) and target.startswith("/dev/") and not os.path.exists(target):
            raise CameraError(
                f"camera device {target} does not exist: is the camera plugged in? "
                f"(list devices with `v4l2-ctl --list-devices` or `ls /dev/video*`; set the camera node's `device`)"
            )
        if isinstance(target, int) and not os.path.exists(f"/dev/video{target}"):
            raise CameraError(
                f"no camera at index {target} (/dev/video{target} does not exist): is the camera plugged in? "
                f"(list devices with `ls /dev/video*`; set the camera node's `device`)"
            )
        if isinstance(target, str) and "://" not in target and not target.startswith("/dev/") and not os.path.exists(target):
            raise CameraError(f"camera source {target!r} is neither a device index, a /dev path, an existing video file nor a URL")
        # CAP_V4L2 for devices avoids OpenCV probing GStreamer/FFmpeg backends first.
        backend = cv2.CAP_V4L2 if isinstance(target, int) or str(target).startswith("/dev/") else cv2.CAP_ANY
        self._cap = cv2.VideoCapture(target, backend)
        if not self._cap.isOpened():
            self._cap.release()
            raise CameraError(
                f"OpenCV could not open camera {target!r}: the device exists but did not start "
                f"(another program using it? permissions: is your user in the 'video' group?)"
            )
        if fourcc:
            self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc[:4]))
        if width and height:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        if fps:
            self._cap.set(cv2.CAP_PROP_FPS, float(fps))
        self._cv2 = cv2
        self.read_timeout = read_timeout
        first = self.read()  # fail now, not later, if the device opens but sends nothing
        self.height, self.width = first.shape[:2]
        self._first: np.ndarray | None = first

    def read(self) -> np.ndarray:
        if getattr(self, "_first", None) is not None:
            frame, self._first = self._first, None
            return frame
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise CameraError(f"camera {self.device!r} delivered no frame (unplugged, or end of the video file)")
        if frame.ndim == 2:
            frame = np.repeat(frame[:, :, None], 3, axis=2)
        return np.ascontiguousarray(frame[:, :, 2::-1])  # BGR(A) -> RGB

    def close(self) -> None:
        self._cap.release()


class RealSenseSource(FrameSource):
    """Colour stream of an Intel RealSense via ``pyrealsense2`` (optional dependency)."""

    name = "realsense"

    def __init__(self, serial: str = "", width: int = 640, height: int = 480, fps: float = 30.0, timeout_ms: int = 2000):
        try:
            import pyrealsense2 as rs
        except ImportError as exc:
            raise CameraError(
                "the realsense source needs the Intel RealSense SDK's Python package: `pip install pyrealsense2` "
                "(or use source:=opencv with the RealSense's colour /dev/video device)"
            ) from exc
        devices = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        if not devices:
            raise CameraError("no Intel RealSense connected (check the USB 3 cable; `rs-enumerate-devices` lists them)")
        if serial and serial not in devices:
            raise CameraError(f"no RealSense with serial {serial}; connected: {', '.join(devices)}")
        self._rs = rs
        self.timeout_ms = int(timeout_ms)
        self._pipeline = rs.pipeline()
        config = rs.config()
        if serial:
            config.enable_device(serial)
        config.enable_stream(rs.stream.color, int(width), int(height), rs.format.rgb8, int(fps) or 30)
        try:
            self._pipeline.start(config)
        except RuntimeError as exc:
            raise CameraError(f"the RealSense refused {width}x{height} rgb8 at {fps:g} fps: {exc}") from exc
        self.width, self.height = int(width), int(height)

    def read(self) -> np.ndarray:
        try:
            frames = self._pipeline.wait_for_frames(self.timeout_ms)
        except RuntimeError as exc:
            raise CameraError(f"the RealSense delivered no frame within {self.timeout_ms} ms: {exc}") from exc
        color = frames.get_color_frame()
        return np.asanyarray(color.get_data()).copy()

    def close(self) -> None:
        try:
            self._pipeline.stop()
        except RuntimeError:
            pass


SOURCES = ("opencv", "realsense", "test_pattern")


def open_source(source: str, *, device: str = "0", width: int = 640, height: int = 480, fps: float = 30.0,
                serial: str = "", fourcc: str = "") -> FrameSource:
    """Open a frame source by name (see the module docstring); ``CameraError`` when it cannot."""
    if source == "opencv":
        return OpenCVSource(device, width, height, fps, fourcc)
    if source == "realsense":
        return RealSenseSource(serial, width, height, fps)
    if source == "test_pattern":
        return TestPatternSource(width, height, fps)
    raise CameraError(f"unknown camera source {source!r}; expected one of {SOURCES}")


def read_pattern_counter(frame: np.ndarray) -> int:
    """The frame number a ``TestPatternSource`` frame carries (for tests and latency checks)."""
    width = frame.shape[1]
    block = max(1, width // 16)
    row = frame[-max(1, block // 2), :, 0].astype(int)
    return sum(1 << bit for bit in range(16) if row[bit * block + block // 2] > 127)
