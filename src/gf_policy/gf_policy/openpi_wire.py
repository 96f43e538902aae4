"""The wire format of openpi's policy protocol (websocket + msgpack with numpy arrays).

The protocol, as openpi's ``openpi-client`` package and its policy server speak it:

1. on connect the server sends one binary frame: its metadata (a mapping);
2. the client sends an observation (a mapping of the served policy's input keys, arrays and a
   ``prompt`` string), the server answers a mapping with ``actions`` (H x D) and optional
   ``server_timing``; repeat;
3. a failed inference is answered with a *text* frame holding the error (a traceback), after
   which the server closes the connection.

Arrays travel as maps with byte-string keys ``__ndarray__`` / ``data`` / ``dtype`` / ``shape``
(numpy scalars as ``__npgeneric__`` / ``data`` / ``dtype``). The codec here is written for this
workspace: ``openpi-client`` itself requires numpy < 2 and cannot be installed beside the pinned
stack.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_ALLOWED_KINDS = "biuf"  # bool, int, uint, float: never object arrays from the wire


class OpenPIWireError(ValueError):
    """A frame that is not a valid openpi protocol message."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot send scalars of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _field(obj: dict, name: str) -> Any:
    # Keys arrive as bytes from openpi's packer; accept str keys too (other msgpack writers).
    return obj[name.encode()] if name.encode() in obj else obj[name]


def _decode(obj: dict) -> Any:
    if obj.get(b"__ndarray__") is True or obj.get("__ndarray__") is True:
        dtype = np.dtype(_field(obj, "dtype"))
        if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
            raise ValueError(f"refusing array dtype {dtype}")
        shape = tuple(int(s) for s in _field(obj, "shape"))
        data = _field(obj, "data")
        if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"array payload of {len(data)} bytes does not fit {dtype} {shape}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if obj.get(b"__npgeneric__") is True or obj.get("__npgeneric__") is True:
        dtype = np.dtype(_field(obj, "dtype"))
        if dtype.kind not in _ALLOWED_KINDS:
            raise ValueError(f"refusing scalar dtype {dtype}")
        return dtype.type(_field(obj, "data"))
    return obj


def pack(message: dict[str, Any]) -> bytes:
    """A mapping (numpy arrays included) -> one binary frame."""
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(data: bytes | str) -> dict[str, Any]:
    """One frame -> a mapping; a text frame is the server's error report (``OpenPIWireError``)."""
    if isinstance(data, str):
        raise OpenPIWireError(data)
    try:
        message = msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError, KeyError) as exc:
        raise OpenPIWireError(f"undecodable message: {exc}") from exc
    if not isinstance(message, dict):
        raise OpenPIWireError(f"expected a mapping, got {type(message).__name__}")
    return message


def last_line(error: str) -> str:
    """The last non-empty line of a server's error report (a traceback ends with the exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else "(empty error report)"
