"""Camera sources and calibration files without ROS: the test pattern, OpenCV on a real video file,
clear errors for a missing device or a missing RealSense SDK, and the camera_info YAML format."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from gf_bringup.runtime import package_file
from gf_realman_driver.camera import (
    CameraError,
    OpenCVSource,
    RealSenseSource,
    TestPatternSource,
    fov_calibration,
    load_calibration,
    open_source,
    read_pattern_counter,
)


def test_the_test_pattern_is_rgb_paced_and_numbered():
    source = TestPatternSource(320, 240, fps=50.0)
    t0 = time.monotonic()
    frames = [source.read() for _ in range(6)]
    assert time.monotonic() - t0 >= 5 / 50 - 0.01  # paced at the frame rate
    assert frames[0].shape == (240, 320, 3) and frames[0].dtype == np.uint8
    assert [read_pattern_counter(f) for f in frames] == list(range(6))
    assert not np.array_equal(frames[0], frames[1])  # the marker moves
    assert tuple(frames[0][5, 5]) == (255, 255, 255) and tuple(frames[0][5, 250]) == (0, 0, 255)  # white ... blue bars


def write_video(path, frames_bgr, fps=10):
    import cv2

    h, w = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames_bgr:
        writer.write(f)
    writer.release()


def test_opencv_reads_a_video_file_and_delivers_rgb(tmp_path):
    video = tmp_path / "clip.avi"
    red_bgr = np.zeros((120, 160, 3), np.uint8)
    red_bgr[:, :, 2] = 255  # pure red in OpenCV's BGR order
    write_video(video, [red_bgr] * 3)
    source = open_source("opencv", device=str(video))
    try:
        frame = source.read()
        assert (source.width, source.height) == (160, 120) and frame.shape == (120, 160, 3)
        r, g, b = frame[60, 80].astype(int)
        assert r > 230 and g < 30 and b < 30  # RGB on the topic
        source.read(), source.read()
        with pytest.raises(CameraError, match="delivered no frame"):  # end of the file
            source.read()
    finally:
        source.close()


@pytest.mark.parametrize("device, message", [
    ("/dev/video97", "camera device /dev/video97 does not exist: is the camera plugged in?"),
    ("97", "no camera at index 97"),
    ("no_such_clip.mp4", "neither a device index"),
])
def test_a_missing_camera_fails_at_once_with_a_clear_error(device, message):
    t0 = time.monotonic()
    with pytest.raises(CameraError, match=message.replace("?", r"\?")):
        OpenCVSource(device)
    assert time.monotonic() - t0 < 2.0


@pytest.mark.skipif(importlib.util.find_spec("pyrealsense2") is not None, reason="pyrealsense2 is installed")
def test_realsense_without_its_sdk_says_how_to_install_it():
    with pytest.raises(CameraError, match="pip install pyrealsense2"):
        RealSenseSource()
    with pytest.raises(CameraError, match="unknown camera source"):
        open_source("kinect")


def test_camera_info_yaml_is_read_and_scaled(tmp_path):
    calib = load_calibration(package_file("gf_realman_driver", "config/camera_info_example.yaml"))
    assert (calib.width, calib.height, calib.name) == (640, 480, "usb_camera")
    assert calib.k == (615.0, 0.0, 319.5, 0.0, 615.0, 239.5, 0.0, 0.0, 1.0) and len(calib.d) == 5
    assert calib.projection[:4] == (615.0, 0.0, 319.5, 0.0)
    half = calib.scaled(320, 240)
    assert half.k[0] == pytest.approx(307.5) and half.k[2] == pytest.approx(159.75) and half.projection[5] == pytest.approx(307.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_width: 640\nimage_height: 480\ncamera_matrix: {rows: 3, cols: 3, data: [1, 2, 3]}\n")
    with pytest.raises(CameraError, match="camera_matrix needs 9 numbers"):
        load_calibration(bad)
    with pytest.raises(CameraError, match="does not exist"):
        load_calibration(tmp_path / "none.yaml")


def test_a_fov_pinhole_has_the_requested_field_of_view():
    calib = fov_calibration(640, 480, hfov_deg=90.0)
    assert calib.k[0] == pytest.approx(320.0) and calib.k[4] == pytest.approx(320.0)
    assert "fov approximation" in calib.source
