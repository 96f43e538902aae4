"""Per-dimension quantile normalisation of proprio and actions (stored in the checkpoint).

Values are mapped so that the 1st percentile goes to -1 and the 99th to +1, then clipped to
[-1, 1]: robust to the outliers teleoperated and scripted demonstrations contain, and the range
the flow-matching noise lives in. Unnormalising inverts the affine map exactly for values that
were inside the [q01, q99] range.
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


def save_norm_stats(stats: dict[str, NormStats], path: str | Path) -> None:
    """Write a mapping such as ``{"proprio": ..., "actions": ...}`` as JSON."""
    payload = {name: s.to_dict() for name, s in stats.items()}
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_norm_stats(path: str | Path) -> dict[str, NormStats]:
    """Read statistics written by ``save_norm_stats``."""
    data = json.loads(Path(path).read_text())
    return {name: NormStats.from_dict(d) for name, d in data.items()}
