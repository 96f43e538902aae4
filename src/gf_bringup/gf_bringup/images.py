"""numpy <-> sensor_msgs/Image and CameraInfo, without cv_bridge (docs/architecture.md, "Facts about the platform"),
and the one rule by which a camera frame becomes a model input (``fit_image``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "mono8": 1}


def image_to_msg(image: np.ndarray, stamp, frame_id: str = "camera_optical_frame", encoding: str = "rgb8"):
    """An (H, W, 3) uint8 array -> sensor_msgs/Image (data copied once)."""
    from sensor_msgs.msg import Image

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] != _CHANNELS[encoding]:
        raise ValueError(f"{encoding} needs {_CHANNELS[encoding]} channels, got {image.shape}")
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(image.shape[1] * image.shape[2])
    msg.data = image.tobytes()
    return msg


def msg_to_image(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, mono8) -> (H, W, 3) uint8 RGB array (a copy)."""
    if msg.encoding not in _CHANNELS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    channels = _CHANNELS[msg.encoding]
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    image = raw[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
    if msg.encoding == "bgr8":
        image = image[:, :, ::-1]
    elif msg.encoding == "rgba8":
        image = image[:, :, :3]
    elif msg.encoding == "mono8":
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def camera_info_msg(intrinsics: np.ndarray, width: int, height: int, stamp, frame_id: str = "camera_optical_frame"):
    """A pinhole CameraInfo without distortion from a 3x3 intrinsic matrix."""
    from sensor_msgs.msg import CameraInfo

    k = np.asarray(intrinsics, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = k.flatten().tolist()
    msg.r = np.eye(3).flatten().tolist()
    msg.p = np.hstack([k, np.zeros((3, 1))]).flatten().tolist()
    return msg


def fit_image(image: np.ndarray, size: int | None, crop: Sequence[float] | None = None) -> np.ndarray:
    """uint8 H x W x 3 -> the part ``crop`` ([left, top, right, bottom] fractions) resized to
    size x size (bicubic, as PaliGemma's own processor); the image itself when there is nothing to do (``size`` None: no resize)."""
    if crop is not None:
        h, w = image.shape[:2]
        left, top, right, bottom = (round(crop[0] * w), round(crop[1] * h), round(crop[2] * w), round(crop[3] * h))
        if (left, top, right, bottom) != (0, 0, w, h):
            image = np.ascontiguousarray(image[top:bottom, left:right])
    if size is None or image.shape[:2] == (size, size):
        return image
    from PIL import Image  # lazy: the ROS nodes that only convert messages do not need Pillow

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
