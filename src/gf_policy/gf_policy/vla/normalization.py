"""Per-dimension normalisation of proprio and actions (stored in the checkpoint).

Two kinds, chosen per training run (``NORMALIZATION_KINDS``):

* ``quantile`` (``NormStats``, the default for fresh models): the 1st percentile goes to -1 and
  the 99th to +1, then clipped to [-1, 1]: robust to the outliers teleoperated and scripted
  demonstrations contain, and the range the flow-matching noise lives in. Unnormalising inverts
  the affine map exactly for values that were inside the [q01, q99] range.
* ``mean_std`` (``MeanStdStats``): ``(x - mean) / (std + eps)``, unclipped. This is what pi0
  checkpoints were trained with (LeRobot's MEAN_STD mode), so imported pi0 weights expect it.

``norm_stats.json`` holds ``{"proprio": {...}, "actions": {...}}``; the keys of each entry
(``q01``/``q99`` or ``mean``/``std``) say which kind it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NORM_STATS_NAME = "norm_stats.json"
# Added to the range so that constant dimensions do not divide by zero (they normalise to -1
# and unnormalise back to their constant value).
_EPS = 1e-6
# Added to the standard deviation: LeRobot's value, so imported pi0 weights see the inputs they
# were trained on.
MEAN_STD_EPS = 1e-8
NORMALIZATION_KINDS = ("quantile", "mean_std")

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class NormStats:
    """1st / 99th percentile of each dimension of one quantity (e.g. actions)."""

    q01: np.ndarray
    q99: np.ndarray

    def __post_init__(self) -> None:
        self.q01 = np.asarray(self.q01, dtype=np.float64).reshape(-1)
        self.q99 = np.asarray(self.q99, dtype=np.float64).reshape(-1)
        if self.q01.shape != self.q99.shape:
            raise ValueError(f"q01 {self.q01.shape} and q99 {self.q99.shape} differ in shape")
        if not (np.isfinite(self.q01).all() and np.isfinite(self.q99).all()):
            raise ValueError("normalisation statistics must be finite")
        if (self.q99 < self.q01).any():
            raise ValueError("q99 must be >= q01 in every dimension")

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def from_data(cls, data: ArrayLike) -> NormStats:
        """Statistics of ``data`` with shape (..., dim); every leading axis is a sample axis."""
        arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        arr = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
        if arr.shape[0] == 0:
            raise ValueError("cannot compute statistics of an empty array")
        return cls(q01=np.quantile(arr, 0.01, axis=0), q99=np.quantile(arr, 0.99, axis=0))

    def _check(self, x: ArrayLike) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"last dimension {x.shape[-1]} does not match the statistics ({self.dim})")

    def normalize(self, x: ArrayLike) -> ArrayLike:
        """Map to [-1, 1] (clipped). Works on numpy arrays and torch tensors of shape (..., dim)."""
        self._check(x)
        lo, span = self.q01, self.q99 - self.q01 + _EPS
        if isinstance(x, torch.Tensor):
            lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
            span_t = torch.as_tensor(span, dtype=x.dtype, device=x.device)
            return ((x - lo_t) / span_t * 2.0 - 1.0).clamp(-1.0, 1.0)
        out = (np.asarray(x, dtype=np.float64) - lo) / span * 2.0 - 1.0
        return np.clip(out, -1.0, 1.0).astype(np.result_type(x, np.float32))

    def clip_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Model outputs limited to the range training targets had ([-1, 1]: beyond is extrapolation)."""
        return x.clamp(-1.0, 1.0)

    def unnormalize(self, x: ArrayLike) -> ArrayLike:
        """Inverse of ``normalize`` for values in [-1, 1]."""
        self._check(x)
        lo, span = self.q01, self.q99 - self.q01 + _EPS
        if isinstance(x, torch.Tensor):
            lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
            span_t = torch.as_tensor(span, dtype=x.dtype, device=x.device)
            return (x + 1.0) / 2.0 * span_t + lo_t
        out = (np.asarray(x, dtype=np.float64) + 1.0) / 2.0 * span + lo
        return out.astype(np.result_type(x, np.float32))

    def to_dict(self) -> dict[str, list[float]]:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> NormStats:
        return cls(q01=np.asarray(data["q01"]), q99=np.asarray(data["q99"]))


@dataclass
class MeanStdStats:
    """Mean and standard deviation of each dimension of one quantity (pi0's normalisation)."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean {self.mean.shape} and std {self.std.shape} differ in shape")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            raise ValueError("normalisation statistics must be finite")
        if (self.std < 0).any():
            raise ValueError("std must be >= 0 in every dimension")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_data(cls, data: ArrayLike) -> MeanStdStats:
        """Statistics of ``data`` with shape (..., dim); every leading axis is a sample axis."""
        arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        arr = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
        if arr.shape[0] == 0:
            raise ValueError("cannot compute statistics of an empty array")
        return cls(mean=arr.mean(axis=0), std=arr.std(axis=0))

    def first(self, dim: int) -> MeanStdStats:
        """The statistics of the first ``dim`` dimensions (pi0 pads to 32; robots use fewer)."""
        if dim > self.dim:
            raise ValueError(f"the statistics have {self.dim} dimensions, {dim} were asked for")
        return MeanStdStats(self.mean[:dim], self.std[:dim])

    def _check(self, x: ArrayLike) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"last dimension {x.shape[-1]} does not match the statistics ({self.dim})")

    def normalize(self, x: ArrayLike) -> ArrayLike:
        """``(x - mean) / (std + eps)`` on numpy arrays or torch tensors of shape (..., dim)."""
        self._check(x)
        scale = self.std + MEAN_STD_EPS
        if isinstance(x, torch.Tensor):
            mean_t = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
            return (x - mean_t) / torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        out = (np.asarray(x, dtype=np.float64) - self.mean) / scale
        return out.astype(np.result_type(x, np.float32))

    def clip_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Unchanged: mean/std targets are unbounded (a pi0 output of 2 std is a real action)."""
        return x

    def unnormalize(self, x: ArrayLike) -> ArrayLike:
        """Inverse of ``normalize``."""
        self._check(x)
        scale = self.std + MEAN_STD_EPS
        if isinstance(x, torch.Tensor):
            mean_t = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
            return x * torch.as_tensor(scale, dtype=x.dtype, device=x.device) + mean_t
        out = np.asarray(x, dtype=np.float64) * scale + self.mean
        return out.astype(np.result_type(x, np.float32))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> MeanStdStats:
        return cls(mean=np.asarray(data["mean"]), std=np.asarray(data["std"]))


Normalizer = NormStats | MeanStdStats
_KINDS: dict[str, type[NormStats] | type[MeanStdStats]] = {"quantile": NormStats, "mean_std": MeanStdStats}


def stats_from_data(data: ArrayLike, kind: str = "quantile") -> Normalizer:
    """Statistics of one quantity for a normalisation ``kind`` (see ``NORMALIZATION_KINDS``)."""
    if kind not in _KINDS:
        raise ValueError(f"normalisation kind must be one of {NORMALIZATION_KINDS}, not {kind!r}")
    return _KINDS[kind].from_data(data)


def stats_from_dict(data: dict[str, list[float]]) -> Normalizer:
    """``NormStats`` or ``MeanStdStats``, whichever the keys describe."""
    if {"q01", "q99"} <= set(data):
        return NormStats.from_dict(data)
    if {"mean", "std"} <= set(data):
        return MeanStdStats.from_dict(data)
    raise ValueError(f"normalisation statistics need q01/q99 or mean/std, got {sorted(data)}")


def save_norm_stats(stats: dict[str, Normalizer], path: str | Path) -> None:
    """Write a mapping such as ``{"proprio": ..., "actions": ...}`` as JSON."""
    payload = {name: s.to_dict() for name, s in stats.items()}
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_norm_stats(path: str | Path) -> dict[str, Normalizer]:
    """Read statistics written by ``save_norm_stats`` (either kind)."""
    data = json.loads(Path(path).read_text())
    return {name: stats_from_dict(d) for name, d in data.items()}
