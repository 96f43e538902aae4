"""The policy camera of the benchmark, and where a trial's cards appear in its image.

The simulated policy camera is upstream's BridgeData-aligned third-person view: a pinhole camera
at ``CAMERA_EYE`` looking at ``CAMERA_TARGET`` (world frame, +z up) with a vertical field of view
of ``CAMERA_FOV``. Its OpenCV matrices follow from those constants alone, so card positions known
from a ``TrialSpec`` project into any (square) policy image without rendering: the simulator
builds its camera from these constants, contact sheets outline target cards, co-training scenes
name the cards by position, and attention maps measure the attention mass on each card.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POSITION_NAMES = ("left", "middle", "right")


CAMERA_EYE = (-0.15, 0.49, 0.564)  # m, world frame
CAMERA_TARGET = (0.15, 0.65, 0.0)
CAMERA_FOV = 1.2  # rad, vertical


@dataclass(frozen=True)
class PinholeCamera:
    """OpenCV-convention camera: ``intrinsics`` 3x3, ``extrinsics`` 4x4 world -> camera."""

    intrinsics: np.ndarray
    extrinsics: np.ndarray

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> pixel coordinates (..., 2) (u right, v down)."""
        pts = np.asarray(points, dtype=np.float64)
        cam = pts @ self.extrinsics[:3, :3].T + self.extrinsics[:3, 3]
        pix = cam @ self.intrinsics.T
        return pix[..., :2] / pix[..., 2:3]


def look_at_camera(
    eye: Sequence[float], target: Sequence[float], fov_y: float, width: int, height: int,
) -> PinholeCamera:
    """A camera at ``eye`` looking at ``target`` with +z up (SAPIEN's look_at), in OpenCV form."""
    eye_v, forward = np.asarray(eye, float), np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    left = np.cross([0.0, 0.0, 1.0], forward)
    left /= np.linalg.norm(left)
    up = np.cross(forward, left)
    rotation = np.stack([-left, -up, forward])  # rows: camera x (right), y (down), z (forward)
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = rotation
    extrinsics[:3, 3] = -rotation @ eye_v
    focal = (height / 2.0) / math.tan(fov_y / 2.0)
    intrinsics = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    return PinholeCamera(intrinsics, extrinsics)


def policy_camera(image_size: int) -> PinholeCamera:
    """The simulator's policy camera for a square image of ``image_size`` pixels."""
    return look_at_camera(CAMERA_EYE, CAMERA_TARGET, CAMERA_FOV, image_size, image_size)


def card_quads(trial: object, camera: PinholeCamera) -> np.ndarray:
    """Image corners (3 cards, 4 corners, uv) of the cards' top faces, in card order.

    ``trial`` is a ``TrialSpec`` or its dict (cards with x, y, yaw; geometry with card sizes)."""
    cards, geometry = _cards_and_geometry(trial)
    half, z = geometry["card_half_size"], 2 * geometry["card_half_thickness"]
    quads = []
    for card in cards:
        c, s = math.cos(card["yaw"]), math.sin(card["yaw"])
        local = np.array([[half, half], [half, -half], [-half, -half], [-half, half]])
        xy = local @ np.array([[c, s], [-s, c]]) + np.array([card["x"], card["y"]])
        quads.append(camera.project(np.column_stack([xy, np.full(4, z)])))
    return np.stack(quads)


def cube_pixel(trial: object, camera: PinholeCamera) -> np.ndarray:
    """Image position (u, v) of the centre of the cube's top face as a trial places it."""
    data = trial if isinstance(trial, dict) else trial.to_dict()  # type: ignore[attr-defined]
    half = float(dict(data.get("geometry") or {}).get("cube_half_size", 0.015))
    x, y = data["cube_xy"]
    return camera.project(np.array([float(x), float(y), 2 * half]))


def positions_left_to_right(trial: object, camera: PinholeCamera) -> list[int]:
    """Card indices ordered by their centre's horizontal image position, left first."""
    cards, geometry = _cards_and_geometry(trial)
    centres = camera.project(np.array([[c["x"], c["y"], 2 * geometry["card_half_thickness"]] for c in cards]))
    return [int(i) for i in np.argsort(centres[:, 0], kind="stable")]


def quad_coverage(quad: np.ndarray, image_size: int, grid: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each of ``grid`` x ``grid`` patches covered by a convex image quad (grid, grid)."""
    n = grid * supersample
    step = image_size / n
    centres = (np.arange(n) + 0.5) * step
    uu, vv = np.meshgrid(centres, centres)  # [row (v), col (u)]
    quad = np.asarray(quad, dtype=np.float64)
    nxt = np.roll(quad, -1, axis=0)
    orientation = np.sign(np.sum(quad[:, 0] * nxt[:, 1] - nxt[:, 0] * quad[:, 1]))  # signed area
    inside = np.ones_like(uu, dtype=bool)
    for (u0, v0), (u1, v1) in zip(quad, nxt):  # a point of a convex polygon is left of every edge
        inside &= ((u1 - u0) * (vv - v0) - (v1 - v0) * (uu - u0)) * orientation >= 0
    return inside.reshape(grid, supersample, grid, supersample).mean(axis=(1, 3))


def _cards_and_geometry(trial: object) -> tuple[list[dict], dict]:
    data = trial if isinstance(trial, dict) else trial.to_dict()  # type: ignore[attr-defined]
    geometry = dict(data.get("geometry") or {})
    geometry.setdefault("card_half_size", 0.07)
    geometry.setdefault("card_half_thickness", 0.001)
    cards = [{"x": float(c["x"]), "y": float(c["y"]), "yaw": float(c.get("yaw", 0.0))} for c in data["cards"]]
    return cards, geometry
