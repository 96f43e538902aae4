"""`gf-policy-server`: serve a VLA checkpoint over a websocket (for the ``remote`` backend).

Run it on the GPU host, point the robot's policy node at it::

    gpu-host$ gf-policy-server --checkpoint runs/ft/checkpoints/step_030000 --device cuda --host 0.0.0.0
    robot$    gf-launch ... policy:=remote backend_args:='{url: ws://gpu-host:8765}'

(``--host`` defaults to 127.0.0.1: listening on other interfaces is an explicit choice; the
protocol has no authentication, so use it on a trusted network or through an SSH tunnel.)

Protocol ``gf-policy`` (every message one binary websocket frame, msgpack; numpy arrays as
``{"__ndarray__": true, "dtype", "shape", "data"}``):

1. server -> ``{"type": "hello", "protocol": "gf-policy", "version": V, "model": {...}}`` with the
   model's shapes (action_horizon, action_dim, proprio_dim, image_size, ...);
2. client -> ``{"type": "hello", "protocol": "gf-policy", "version": V}``; the server answers
   ``{"type": "ready"}``, or ``{"type": "error", "code": "version_mismatch", ...}`` and closes;
3. client -> ``{"type": "predict", "id": n, "images": [uint8 HxWx3, ...], "instructions": [...],
   "proprio": float32 (B, proprio_dim), "seeds": [int, ...] | null}``; server ->
   ``{"type": "actions", "id": n, "actions": float32 (B, H, action_dim), "infer_ms": t}`` or
   ``{"type": "error", "id": n, "code": "bad_request" | "inference_failed", "message": ...}`` (the
   connection stays usable). A seed gives the same noise as the local ``vla`` backend.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

PROTOCOL = "gf-policy"
PROTOCOL_VERSION = 1
DEFAULT_PORT = 8765
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a batch of full-resolution camera images fits
_ALLOWED_KINDS = "biuf"  # bool, int, uint, float: never object arrays from the wire

log = logging.getLogger("gf_policy.server")


# ---------------------------------------------------------------------------------------------
# wire format
# ---------------------------------------------------------------------------------------------


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        return {"__ndarray__": True, "dtype": obj.dtype.str, "shape": list(obj.shape),
                "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if obj.get("__ndarray__") is True:
        dtype = np.dtype(obj["dtype"])
        if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
            raise ValueError(f"refusing array dtype {dtype}")
        shape = tuple(int(s) for s in obj["shape"])
        data = obj["data"]
        if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"array payload of {len(data)} bytes does not fit {dtype} {shape}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return obj


def pack(message: dict[str, Any]) -> bytes:
    """A message -> bytes (msgpack, numpy arrays included)."""
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(data: bytes | str) -> dict[str, Any]:
    """Bytes -> a message; raises ``ValueError`` on anything that is not a protocol message."""
    if isinstance(data, str):
        raise ValueError("expected a binary frame")
    try:
        message = msgpack.unpackb(data, object_hook=_decode, raw=False)
    except (msgpack.UnpackException, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"undecodable message: {exc}") from exc
    if not isinstance(message, dict) or "type" not in message:
        raise ValueError("a message must be a mapping with a 'type'")
    return message


def model_metadata(policy: Any, checkpoint: str = "") -> dict[str, Any]:
    """What a client needs to know about the served model (sent in the hello)."""
    cfg = policy.model.config
    return {
        "checkpoint": Path(checkpoint).name if checkpoint else "",
        "action_horizon": int(cfg.action_horizon),
        "execution_horizon": int(cfg.execution_horizon),
        "action_dim": int(cfg.action_dim),
        "model_action_dim": int(cfg.model_action_dim),
        "proprio_dim": int(cfg.proprio_dim),
        "action_space": str(cfg.action_space),
        "image_size": int(cfg.image_size),
        "num_images": int(cfg.num_images),
        "num_inference_steps": int(cfg.num_inference_steps),
    }


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------


class PolicyServer:
    """Serves ``policy`` (a ``VLAInference``) to any number of clients, one inference at a time."""

    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, checkpoint: str = "",
                 version: int = PROTOCOL_VERSION):
        self.policy = policy
        self.host, self.port = host, port
        self.metadata = model_metadata(policy, checkpoint)
        self.version = version
        self._lock = threading.Lock()  # one model: inferences run one after another
        self.requests = 0

    # ---------------------------------------------------------------- request handling
    def _validate(self, msg: dict[str, Any]) -> tuple[list[np.ndarray], list[str], np.ndarray, list[int] | None]:
        meta = self.metadata
        images, instructions, proprio, seeds = msg.get("images"), msg.get("instructions"), msg.get("proprio"), msg.get("seeds")
        if not isinstance(images, list) or not images:
            raise ValueError("'images' must be a non-empty list of uint8 H x W x 3 arrays")
        for img in images:
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(f"each image must be uint8 H x W x 3, got {desc}")
        batch = len(images)
        if not isinstance(instructions, list) or len(instructions) != batch or not all(isinstance(t, str) for t in instructions):
            raise ValueError(f"'instructions' must be a list of {batch} strings")
        if not isinstance(proprio, np.ndarray) or proprio.shape != (batch, meta["proprio_dim"]):
            shape = proprio.shape if isinstance(proprio, np.ndarray) else type(proprio).__name__
            raise ValueError(f"'proprio' must be an array of shape ({batch}, {meta['proprio_dim']}), got {shape}")
        if not np.isfinite(proprio).all():
            raise ValueError("'proprio' contains NaN or infinite values")
        if seeds is not None and (not isinstance(seeds, list) or len(seeds) != batch
                                  or not all(isinstance(s, int) and s >= 0 for s in seeds)):
            raise ValueError(f"'seeds' must be null or a list of {batch} non-negative integers")
        return images, instructions, proprio.astype(np.float32), seeds

    def predict(self, images: list[np.ndarray], instructions: list[str], proprio: np.ndarray,
                seeds: list[int] | None) -> np.ndarray:
        """Run the model (blocking); the same noise as the local ``vla`` backend for given seeds."""
        import torch

        from gf_policy.backends.vla import chunk_noise

        noise = None
        if seeds is not None:
            meta = self.metadata
            noise = torch.stack([chunk_noise(meta["action_horizon"], meta["model_action_dim"], s) for s in seeds])
        with self._lock:
            return self.policy.predict_batch(images, instructions, proprio, noise=noise)

    async def _handle_predict(self, msg: dict[str, Any]) -> dict[str, Any]:
        request_id = msg.get("id")
        try:
            args = self._validate(msg)
        except ValueError as exc:
            return {"type": "error", "id": request_id, "code": "bad_request", "message": str(exc)}
        started = time.perf_counter()
        try:
            actions = await asyncio.to_thread(self.predict, *args)
        except Exception as exc:  # report, keep serving: one bad request must not take the server down
            log.exception("inference failed")
            return {"type": "error", "id": request_id, "code": "inference_failed", "message": f"{type(exc).__name__}: {exc}"}
        self.requests += 1
        return {"type": "actions", "id": request_id, "actions": np.asarray(actions, dtype=np.float32),
                "infer_ms": round(1000 * (time.perf_counter() - started), 3)}

    async def handler(self, ws: Any) -> None:
        """One client connection: handshake, then requests until it closes."""
        from websockets.exceptions import ConnectionClosed

        peer = ws.remote_address
        try:
            await ws.send(pack({"type": "hello", "protocol": PROTOCOL, "version": self.version, "model": self.metadata}))
            try:
                hello = unpack(await asyncio.wait_for(ws.recv(), timeout=30))
            except (TimeoutError, ValueError) as exc:
                await ws.send(pack({"type": "error", "code": "bad_handshake", "message": str(exc) or "no hello"}))
                return
            if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL or hello.get("version") != self.version:
                await ws.send(pack({
                    "type": "error", "code": "version_mismatch",
                    "message": f"this server speaks {PROTOCOL} v{self.version}; the client sent "
                               f"{hello.get('protocol')!r} v{hello.get('version')}",
                }))
                return
            await ws.send(pack({"type": "ready"}))
            log.info("client %s connected", peer)
            async for raw in ws:
                try:
                    msg = unpack(raw)
                except ValueError as exc:
                    await ws.send(pack({"type": "error", "id": None, "code": "bad_request", "message": str(exc)}))
                    continue
                if msg["type"] == "predict":
                    await ws.send(pack(await self._handle_predict(msg)))
                else:
                    await ws.send(pack({"type": "error", "id": msg.get("id"), "code": "bad_request",
                                        "message": f"unknown message type {msg['type']!r}"}))
        except ConnectionClosed:
            pass
        finally:
            log.info("client %s disconnected", peer)

    async def serve(self, ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (forever without one)."""
        from websockets.asyncio.server import serve

        async with serve(self.handler, self.host, self.port, max_size=MAX_MESSAGE_BYTES, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
            if ready is not None:
                ready.set()
            await (stop.wait() if stop is not None else asyncio.Future())

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"


class ServerThread:
    """A ``PolicyServer`` on its own event loop in a background thread (tests, notebooks)."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> str:
        """Start serving; returns the URL."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            try:
                self._loop.run_until_complete(self.server.serve(ready, self._stop))
            except BaseException as exc:  # surfaced by start()
                self._error = exc
                ready.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="gf-policy-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the policy server did not start: {self._error}")
        return self.server.url

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listening socket and every connection."""
        if self._loop is not None and self._stop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-policy-server``."""
    parser = argparse.ArgumentParser(prog="gf-policy-server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (VLAInference.from_pretrained)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")

    import torch

    from gf_policy.vla import VLAInference

    try:
        policy = VLAInference.from_pretrained(args.checkpoint, device=args.device, dtype=getattr(torch, args.dtype))
    except (OSError, ValueError) as exc:
        print(f"gf-policy-server: cannot load {args.checkpoint}: {exc}", file=sys.stderr)
        return 1
    server = PolicyServer(policy, args.host, args.port, checkpoint=args.checkpoint)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready = threading.Event()
        task = asyncio.create_task(server.serve(ready, stop))
        while not ready.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await task  # raises the bind error
        meta = server.metadata
        print(f"gf-policy-server: serving {args.checkpoint} on {server.url} ({PROTOCOL} v{PROTOCOL_VERSION}; "
              f"actions {meta['action_horizon']} x {meta['action_dim']}, {args.device})", flush=True)
        await task

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"gf-policy-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
