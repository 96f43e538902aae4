"""camera node: a USB/V4L2 camera (OpenCV), an Intel RealSense, or a test pattern on ROS topics.

Publishes ``/camera/image_raw`` (rgb8) and ``/camera/camera_info`` (same stamp) with sensor-data
QoS, one pair per captured frame. Intrinsics come from ``calibration_file`` (ROS camera_info YAML,
scaled if the device delivers another resolution) or, without one, from ``hfov_deg``. A device
that cannot be opened at start-up ends the node with a clear error (exit code 2); a device that
stops delivering later is reopened with backoff.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from gf_bringup import names
from gf_bringup.images import image_to_msg
from gf_bringup.rosutil import config_field, config_help, create_publisher, declare_config, run_node, sensor_qos

from .camera import CameraCalibration, CameraError, FrameSource, fov_calibration, load_calibration, open_source
from .driver import Backoff


@dataclass
class CameraConfig:
    source: str = config_field("opencv", "frame source: opencv (USB/V4L2 device, index, video file or URL), realsense, test_pattern")
    device: str = config_field("0", "opencv: device index (0), path (/dev/video0), video file or stream URL")
    serial: str = config_field("", "realsense: serial number ('' = the only one connected)")
    width: int = config_field(640, "requested frame width (px)")
    height: int = config_field(480, "requested frame height (px)")
    fps: float = config_field(30.0, "requested frame rate")
    fourcc: str = config_field("", "opencv: pixel format to request, e.g. MJPG ('' = the device default)")
    calibration_file: str = config_field("", "ROS camera_info YAML with the intrinsics ('' = pinhole from hfov_deg)")
    hfov_deg: float = config_field(69.0, "horizontal field of view used without a calibration file (deg)")
    frame_id: str = config_field("camera_optical_frame", "frame of the images")
    reopen_max_s: float = config_field(5.0, "retry delays for a camera that stopped delivering double up to this")


class CameraNode(Node):
    """Adapter: FrameSource -> image and camera_info topics (capture runs in its own thread)."""

    def __init__(self, **node_kwargs):
        super().__init__("camera", **node_kwargs)
        self.cfg = declare_config(self, CameraConfig)
        self.calibration: CameraCalibration | None = (
            load_calibration(self.cfg.calibration_file) if self.cfg.calibration_file else None
        )
        self.source: FrameSource = self._open()  # raises CameraError: main() reports it and exits 2
        self.pub_image = create_publisher(self, Image, names.IMAGE, sensor_qos())
        self.pub_info = create_publisher(self, CameraInfo, names.CAMERA_INFO, sensor_qos())
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name="camera-capture", daemon=True)
        self._thread.start()

    def _open(self) -> FrameSource:
        c = self.cfg
        source = open_source(c.source, device=c.device, width=c.width, height=c.height, fps=c.fps, serial=c.serial,
                             fourcc=c.fourcc)
        calib = self.calibration
        if calib is None:
            calib = fov_calibration(source.width, source.height, c.hfov_deg)
            self.get_logger().warning(f"no calibration_file: camera_info is a {c.hfov_deg:g} deg pinhole approximation")
        elif (calib.width, calib.height) != (source.width, source.height):
            self.get_logger().warning(
                f"{calib.source} is for {calib.width}x{calib.height} but the camera delivers "
                f"{source.width}x{source.height}: intrinsics scaled"
            )
            calib = calib.scaled(source.width, source.height)
        self._calib = calib
        what = c.device if c.source == "opencv" else (c.serial or "first device") if c.source == "realsense" else "synthetic"
        self.get_logger().info(f"camera {c.source} ({what}) at {source.width}x{source.height}, intrinsics from {calib.source}")
        return source

    def _info(self, stamp) -> CameraInfo:
        calib = self._calib
        msg = CameraInfo()
        msg.header.stamp = stamp
        msg.header.frame_id = self.cfg.frame_id
        msg.width, msg.height = calib.width, calib.height
        msg.distortion_model = calib.distortion_model
        msg.d = list(calib.d)
        msg.k = list(calib.k)
        msg.r = list(calib.r)
        msg.p = list(calib.projection)
        return msg

    def _capture(self) -> None:
        backoff = Backoff(0.5, max(0.5, self.cfg.reopen_max_s))
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except CameraError as exc:
                delay = backoff.next()
                self.get_logger().error(f"{exc}; reopening in {delay:.1f} s")
                self.source.close()
                if self._stop.wait(delay):
                    return
                try:
                    self.source = self._open()
                except CameraError as again:
                    self.get_logger().error(f"reopen failed: {again}")
                    self.source = _Closed(again)
                continue
            backoff.reset()
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: the publishers may already be gone
            stamp = self.get_clock().now().to_msg()
            try:
                self.pub_image.publish(image_to_msg(frame, stamp, self.cfg.frame_id))
                self.pub_info.publish(self._info(stamp))
            except Exception:  # noqa: BLE001 - only expected while the context shuts down
                if self._stop.is_set() or not self.context.ok():
                    return
                raise
            self.frames += 1

    def _stop_capture(self) -> None:
        thread = getattr(self, "_thread", None)  # None: the device did not open, rclpy destroys the node
        if thread is not None:
            self._stop.set()
            if thread is not threading.current_thread():
                thread.join(timeout=3.0)

    def destroy_node(self) -> None:
        # The capture thread publishes outside the executor; once, on Ctrl-C, destroy_node hung
        # while it was still alive and launch had to SIGKILL the camera. Nothing else may touch
        # the node's publishers while rclpy tears them down.
        self._stop_capture()
        super().destroy_node()

    def close(self) -> None:
        """Stop capturing and release the device."""
        self._stop_capture()
        self.source.close()


class _Closed(FrameSource):
    """Placeholder while a device is gone: every read raises the last error (so the loop retries)."""

    def __init__(self, error: CameraError):
        self.error = error

    def read(self):
        raise self.error


def main(args=None) -> int:
    try:
        return run_node(CameraNode, args, help_text=f"gf-camera --ros-args [-p name:=value ...]\n\nparameters:\n{config_help(CameraConfig)}")
    except CameraError as exc:
        print(f"[camera] ERROR: {exc}", file=sys.stderr, flush=True)
        return 2
