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
   "proprio": float32 (B, proprio_dim), "seeds": [int, ...] | null, "fitted": bool}``; server ->
   ``{"type": "actions", "id": n, "actions": float32 (B, H, action_dim), "infer_ms": t}`` or
   ``{"type": "error", "id": n, "code": "bad_request" | "inference_failed", "message": ...}`` (the
   connection stays usable). A seed gives the same noise as the local ``vla`` backend. An optional
   ``"timeout_s"`` in the request shortens the server's per-request timeout (the client stopped
   waiting: no use computing the answer). ``"fitted": true`` says the images are already cropped
   and resized by the model's rule (``gf_bringup.images.fit_image`` with the hello's
   ``image_size`` and ``image_crop``: fewer bytes); otherwise they are camera frames, which the
   server fits itself. Further error codes: ``"overloaded"`` (the queue is full,
   the request was not accepted: back off or add servers) and ``"timeout"``.
4. client -> ``{"type": "metrics", "id": n}``; server -> ``{"type": "metrics", "id": n, ...}`` (as ``GET /metrics``).

Dynamic batching: requests from all connections are gathered until ``max_batch`` observations or
``max_wait_ms`` after the first one, then run as one ``predict_batch`` call and the answers routed
back; ``max_batch 1`` turns batching off (one inference at a time). At most ``max_queue``
requests wait; further ones are refused at once with ``overloaded`` instead of piling up in memory.
Metrics (batch sizes, queue wait, latency p50/p99 over the recent requests) are served over HTTP
on the same port (``GET /metrics``, JSON) and logged every ``--metrics-log-s`` seconds.

``--openpi-port`` also answers openpi's policy protocol (see ``gf_policy.openpi_wire``), so
openpi's clients (and the ``openpi`` backend) can use the served model: the observation keys are
``observation/image`` (uint8 H x W x 3), ``observation/state`` (proprio) and ``prompt``, plus an
optional integer ``seed``; the answer holds ``actions`` (H x action_dim) and ``server_timing``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gf_bringup.images import fit_image

PROTOCOL = "gf-policy"
PROTOCOL_VERSION = 1
DEFAULT_PORT = 8765
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a batch of full-resolution camera images fits
_ALLOWED_KINDS = "biuf"  # bool, int, uint, float: never object arrays from the wire

METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
# What the openpi face of the server reads from an observation, in this order: image, state, prompt.
OPENPI_INPUT_KEYS = ("observation/image", "observation/state", "prompt")

log = logging.getLogger("gf_policy.server")
metrics_log = logging.getLogger("gf_policy.server.metrics")


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
        "image_crop": cfg.image_crop,
        "num_images": int(cfg.num_images),
        "num_inference_steps": int(cfg.num_inference_steps),
    }


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchingConfig:
    """How the server gathers requests into one model call."""

    max_batch: int = 8  # observations per model call; 1 = batching off
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # requests waiting for a batch before new ones are refused ("overloaded")
    request_timeout_s: float = 30.0  # a request not answered by then gets a "timeout" error

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError(f"invalid batching settings {self}")


class ServerOverloaded(RuntimeError):
    """The request queue is full: the request was not accepted."""


class RequestTimedOut(TimeoutError):
    """The request was not answered within its timeout."""


def _percentiles(values: Any) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p99": round(float(np.percentile(arr, 99)), 3)}


class ServerMetrics:
    """Counters over the server's life, percentiles over its recent requests."""

    WINDOW = 4096  # recent samples kept for percentiles: memory stays bounded on a long-running server

    def __init__(self) -> None:
        self.counts = {"requests": 0, "observations": 0, "batches": 0, "overloaded": 0, "timeouts": 0,
                       "failed": 0, "bad_requests": 0}
        self.batch_sizes: Counter[int] = Counter()  # observations per model call -> how many calls
        self.queue_ms: deque[float] = deque(maxlen=self.WINDOW)
        self.latency_ms: deque[float] = deque(maxlen=self.WINDOW)
        self.infer_ms: deque[float] = deque(maxlen=self.WINDOW)

    def count(self, what: str) -> None:
        self.counts[what] += 1

    def record_batch(self, observations: int, infer_ms: float) -> None:
        self.counts["batches"] += 1
        self.batch_sizes[observations] += 1
        self.infer_ms.append(infer_ms)

    def record_answer(self, observations: int, queue_ms: float, latency_ms: float) -> None:
        self.counts["requests"] += 1
        self.counts["observations"] += observations
        self.queue_ms.append(queue_ms)
        self.latency_ms.append(latency_ms)

    def snapshot(self) -> dict[str, Any]:
        batches = self.counts["batches"]
        mean = sum(size * n for size, n in self.batch_sizes.items()) / batches if batches else None
        return {
            **self.counts,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "mean_batch_size": None if mean is None else round(mean, 3),
            "queue_wait_ms": _percentiles(self.queue_ms),
            "latency_ms": _percentiles(self.latency_ms),
            "infer_ms": _percentiles(self.infer_ms),
        }

    def summary(self) -> str:
        m = self.snapshot()
        return (f"requests {m['requests']} in {m['batches']} batches (mean size {m['mean_batch_size']}), "
                f"latency p50/p99 {m['latency_ms']['p50']}/{m['latency_ms']['p99']} ms, queue wait p50/p99 "
                f"{m['queue_wait_ms']['p50']}/{m['queue_wait_ms']['p99']} ms, overloaded {m['overloaded']}, "
                f"timeouts {m['timeouts']}, failed {m['failed']}")


@dataclass
class _Pending:
    """One accepted request waiting for (or in) a batch."""

    images: list[np.ndarray]
    instructions: list[str]
    proprio: np.ndarray
    seeds: list[int | None]
    enqueued: float
    future: asyncio.Future
    started: float = 0.0  # when its batch started (queue wait ends)

    @property
    def size(self) -> int:
        return len(self.images)


class Batcher:
    """Gathers requests into batches and runs each batch as one call of ``run`` in a thread.

    ``run(images, instructions, proprio, seeds) -> actions (B, H, D)``. Lives on one event loop:
    create it and call ``start`` from a coroutine.
    """

    def __init__(self, run: Callable[[list[np.ndarray], list[str], np.ndarray, list[int | None]], np.ndarray],
                 config: BatchingConfig, metrics: ServerMetrics):
        self.run = run
        self.config = config
        self.metrics = metrics
        self._pending: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="gf-policy-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, images: list[np.ndarray], instructions: list[str], proprio: np.ndarray,
                     seeds: list[int | None], timeout_s: float | None = None) -> tuple[np.ndarray, float, float]:
        """Queue one request; returns (actions, queue wait ms, latency ms).

        Raises ``ServerOverloaded`` at once when ``max_queue`` requests are waiting, and
        ``RequestTimedOut`` when no answer is ready within the timeout.
        """
        if len(self._pending) >= self.config.max_queue:
            self.metrics.count("overloaded")
            raise ServerOverloaded(f"server overloaded: {len(self._pending)} requests already waiting "
                                   f"(max_queue {self.config.max_queue}); retry later or add policy servers")
        loop = asyncio.get_running_loop()
        request = _Pending(images, instructions, proprio, seeds, time.perf_counter(), loop.create_future())
        self._pending.append(request)
        self._wakeup.set()
        timeout = self.config.request_timeout_s if timeout_s is None else min(float(timeout_s), self.config.request_timeout_s)
        try:
            actions = await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except TimeoutError:
            # Not answered in time: the batch loop skips it if it has not started yet.
            request.future.cancel()
            self.metrics.count("timeouts")
            raise RequestTimedOut(f"no answer within {timeout:g} s (queue and inference)") from None
        done = time.perf_counter()
        queue_ms, latency_ms = 1000 * (request.started - request.enqueued), 1000 * (done - request.enqueued)
        self.metrics.record_answer(request.size, queue_ms, latency_ms)
        return actions, queue_ms, latency_ms

    async def _next_batch(self) -> list[_Pending]:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [self._pending.popleft()]
        size = batch[0].size
        deadline = time.perf_counter() + self.config.max_wait_ms / 1000
        while size < self.config.max_batch:
            if self._pending:
                if size + self._pending[0].size > self.config.max_batch:
                    break  # it starts the next batch
                batch.append(self._pending.popleft())
                size += batch[-1].size
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = [r for r in await self._next_batch() if not r.future.done()]  # timed out meanwhile
            if not batch:
                continue
            started = time.perf_counter()
            for r in batch:
                r.started = started
            images = [img for r in batch for img in r.images]
            instructions = [t for r in batch for t in r.instructions]
            proprio = np.concatenate([r.proprio for r in batch])
            seeds = [s for r in batch for s in r.seeds]
            try:
                actions = await asyncio.to_thread(self.run, images, instructions, proprio, seeds)
            except Exception as exc:  # every request of the batch gets the error; the server keeps serving
                log.exception("inference failed")
                self.metrics.count("failed")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            self.metrics.record_batch(len(images), 1000 * (time.perf_counter() - started))
            offset = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(np.asarray(actions[offset:offset + r.size], dtype=np.float32))
                offset += r.size


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------


class PolicyServer:
    """Serves ``policy`` (a ``VLAInference``) to any number of clients, batching their requests."""

    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, checkpoint: str = "",
                 version: int = PROTOCOL_VERSION, batching: BatchingConfig | None = None,
                 openpi_port: int | None = None, metrics_log_s: float = 0.0):
        self.policy = policy
        self.host, self.port = host, port
        self.openpi_port = openpi_port  # None: openpi's protocol is not served
        self.metadata = model_metadata(policy, checkpoint)
        self.version = version
        self.batching = batching or BatchingConfig()
        self.metrics = ServerMetrics()
        self.metrics_log_s = float(metrics_log_s)
        self._batcher: Batcher | None = None

    @property
    def requests(self) -> int:
        """Requests answered with actions."""
        return self.metrics.counts["requests"]

    def metrics_snapshot(self) -> dict[str, Any]:
        """The metrics with the current queue depth and batching settings (endpoint, ``metrics`` message)."""
        return {**self.metrics.snapshot(), "queue_depth": self._batcher.queue_depth if self._batcher else 0,
                "max_batch": self.batching.max_batch, "max_queue": self.batching.max_queue}

    # ---------------------------------------------------------------- request handling
    def _validate(self, msg: dict[str, Any]) -> tuple[list[np.ndarray], list[str], np.ndarray, list[int | None]]:
        meta = self.metadata
        images, instructions, proprio, seeds = msg.get("images"), msg.get("instructions"), msg.get("proprio"), msg.get("seeds")
        if not isinstance(images, list) or not images:
            raise ValueError("'images' must be a non-empty list of uint8 H x W x 3 arrays")
        for img in images:
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(f"each image must be uint8 H x W x 3, got {desc}")
        size, crop = meta["image_size"], meta["image_crop"]
        if msg.get("fitted"):  # the client cropped and resized them by the model's rule (fit_image)
            wrong = next((img.shape for img in images if img.shape[:2] != (size, size)), None)
            if wrong is not None:
                raise ValueError(f"'fitted' images must be {size} x {size} (the model's view), got {wrong[0]} x {wrong[1]}")
        else:  # camera frames: fitted here, so every batch reaches the model in one form
            images = [fit_image(img, size, crop) for img in images]
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
        return images, instructions, proprio.astype(np.float32), list(seeds) if seeds is not None else [None] * batch

    def predict(self, images: list[np.ndarray], instructions: list[str], proprio: np.ndarray,
                seeds: list[int | None] | None) -> np.ndarray:
        """Run the model once on a batch (blocking); a seed gives the same noise as the local ``vla``
        backend, observations without one get fresh random noise."""
        import torch

        from gf_policy.backends.vla import chunk_noise

        meta = self.metadata
        seeds = seeds if seeds is not None else [None] * len(images)
        noise = torch.stack([chunk_noise(meta["action_horizon"], meta["model_action_dim"], s) if s is not None
                             else torch.randn(meta["action_horizon"], meta["model_action_dim"]) for s in seeds])
        return self.policy.predict_batch(images, instructions, proprio, noise=noise, fitted=True)

    async def _submit(self, args: tuple, timeout_s: Any = None) -> tuple[np.ndarray, float, float]:
        if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0:
            timeout_s = None
        return await self._batcher.submit(*args, timeout_s=timeout_s)

    async def _handle_predict(self, msg: dict[str, Any]) -> dict[str, Any]:
        request_id = msg.get("id")
        try:
            args = self._validate(msg)
        except ValueError as exc:
            self.metrics.count("bad_requests")
            return {"type": "error", "id": request_id, "code": "bad_request", "message": str(exc)}
        try:
            actions, queue_ms, latency_ms = await self._submit(args, msg.get("timeout_s"))
        except ServerOverloaded as exc:
            return {"type": "error", "id": request_id, "code": "overloaded", "message": str(exc)}
        except RequestTimedOut as exc:
            return {"type": "error", "id": request_id, "code": "timeout", "message": str(exc)}
        except Exception as exc:  # report, keep serving: one bad request must not take the server down
            return {"type": "error", "id": request_id, "code": "inference_failed", "message": f"{type(exc).__name__}: {exc}"}
        return {"type": "actions", "id": request_id, "actions": actions,
                "infer_ms": round(latency_ms - queue_ms, 3), "queue_ms": round(queue_ms, 3)}

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
                elif msg["type"] == "metrics":
                    await ws.send(pack({"type": "metrics", "id": msg.get("id"), **self.metrics_snapshot()}))
                else:
                    await ws.send(pack({"type": "error", "id": msg.get("id"), "code": "bad_request",
                                        "message": f"unknown message type {msg['type']!r}"}))
        except ConnectionClosed:
            pass
        finally:
            log.info("client %s disconnected", peer)

    def _http(self, connection: Any, request: Any) -> Any:
        """Plain HTTP on the websocket port: ``GET /metrics`` (JSON) and ``GET /healthz``."""
        if request.path == METRICS_PATH:
            return connection.respond(HTTPStatus.OK, json.dumps(self.metrics_snapshot()) + "\n")
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        return None  # a websocket client: go on with the handshake

    async def openpi_handler(self, ws: Any) -> None:
        """One openpi-protocol client: metadata first, then observation -> actions until it closes."""
        from websockets.exceptions import ConnectionClosed
        from websockets.frames import CloseCode

        from gf_policy import openpi_wire

        try:
            await ws.send(openpi_wire.pack({**self.metadata, "protocol": "openpi", "input_keys": list(OPENPI_INPUT_KEYS)}))
            async for raw in ws:
                try:
                    args, seed = self._openpi_request(openpi_wire.unpack(raw))
                    actions, queue_ms, latency_ms = await self._submit(args + ([seed],))
                except Exception as exc:  # openpi's way: the error as a text frame, then close
                    if isinstance(exc, ValueError):
                        self.metrics.count("bad_requests")
                    await ws.send(f"{type(exc).__name__}: {exc}")
                    await ws.close(CloseCode.INTERNAL_ERROR, "request failed")
                    return
                await ws.send(openpi_wire.pack({
                    "actions": actions[0],
                    "server_timing": {"infer_ms": round(latency_ms - queue_ms, 3), "queue_ms": round(queue_ms, 3)},
                }))
        except ConnectionClosed:
            pass

    def _openpi_request(self, obs: dict[str, Any]) -> tuple[tuple, int | None]:
        """An openpi observation -> the arguments of one predict request, and its seed."""
        missing = [k for k in OPENPI_INPUT_KEYS if k not in obs]
        if missing:
            raise ValueError(f"observation lacks {missing}; this server reads {list(OPENPI_INPUT_KEYS)} "
                             f"(got {sorted(map(str, obs))})")
        image, state, prompt = (obs[k] for k in OPENPI_INPUT_KEYS)
        proprio = np.asarray(state, dtype=np.float32).reshape(1, -1) if isinstance(state, (np.ndarray, list)) else state
        seed = obs.get("seed")
        seed = int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0 else None
        args = self._validate({"images": [image], "instructions": [prompt], "proprio": proprio})
        return args[:3], seed

    async def _log_metrics(self) -> None:
        logged = 0  # nothing to report until the first answer
        while True:
            await asyncio.sleep(self.metrics_log_s)
            if self.metrics.counts["requests"] != logged:
                logged = self.metrics.counts["requests"]
                metrics_log.info("%s", self.metrics.summary())

    async def serve(self, ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (forever without one)."""
        from websockets.asyncio.server import serve

        self._batcher = Batcher(self.predict, self.batching, self.metrics)
        self._batcher.start()
        logger = asyncio.get_running_loop().create_task(self._log_metrics()) if self.metrics_log_s > 0 else None
        try:
            async with contextlib.AsyncExitStack() as stack:
                server = await stack.enter_async_context(serve(
                    self.handler, self.host, self.port, max_size=MAX_MESSAGE_BYTES, compression=None,
                    process_request=self._http))
                self.port = server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
                if self.openpi_port is not None:
                    openpi = await stack.enter_async_context(serve(
                        self.openpi_handler, self.host, self.openpi_port, max_size=MAX_MESSAGE_BYTES, compression=None,
                        process_request=self._http))
                    self.openpi_port = openpi.sockets[0].getsockname()[1]
                if ready is not None:
                    ready.set()
                await (stop.wait() if stop is not None else asyncio.Future())
        finally:
            if logger is not None:
                logger.cancel()
            await self._batcher.stop()
            if self.metrics_log_s > 0:
                metrics_log.info("final: %s", self.metrics.summary())

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def openpi_url(self) -> str | None:
        return None if self.openpi_port is None else f"ws://{self.host}:{self.openpi_port}"


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
    defaults = BatchingConfig()
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help=f"observations per model call (default {defaults.max_batch}; 1 = batching off)")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help=f"how long a batch waits for more requests after its first (default {defaults.max_wait_ms:g})")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help=f"waiting requests before new ones are refused as overloaded (default {defaults.max_queue})")
    parser.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s,
                        help=f"per-request timeout, queue wait included (default {defaults.request_timeout_s:g})")
    parser.add_argument("--openpi-port", type=int, help="also answer openpi's policy protocol on this port (0 = any free)")
    parser.add_argument("--metrics-log-s", type=float, default=60.0,
                        help="log the metrics every this many seconds (default 60; 0 = never)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    metrics_log.setLevel(logging.INFO)
    try:
        batching = BatchingConfig(args.max_batch, args.max_wait_ms, args.max_queue, args.request_timeout_s)
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    from gf_policy.vla import VLAInference

    try:
        policy = VLAInference.from_pretrained(args.checkpoint, device=args.device, dtype=getattr(torch, args.dtype))
    except (OSError, ValueError) as exc:
        print(f"gf-policy-server: cannot load {args.checkpoint}: {exc}", file=sys.stderr)
        return 1
    server = PolicyServer(policy, args.host, args.port, checkpoint=args.checkpoint, batching=batching,
                          openpi_port=args.openpi_port, metrics_log_s=args.metrics_log_s)

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
              f"actions {meta['action_horizon']} x {meta['action_dim']}, {args.device}; max batch {batching.max_batch}, "
              f"metrics at http://{args.host}:{server.port}{METRICS_PATH})", flush=True)
        if server.openpi_url:
            print(f"gf-policy-server: openpi protocol on {server.openpi_url}", flush=True)
        await task

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"gf-policy-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
