"""``remote``: a client of ``gf-policy-server`` (the VLA runs on another host, e.g. a GPU box).

    gf-launch ... policy:=remote backend_args:='{url: ws://gpu-host:8765, timeout_s: 2.0}'

On connecting, the server's protocol version and model shapes are checked against this client
(``expect_*`` arguments), so a wrong server fails at start-up with a message saying what differs,
not with garbage actions mid-trial. A lost connection is re-established (``retries`` attempts with
growing delay) and the request re-sent -- predictions are pure functions of the request and its
noise seed, so a retry returns the same chunk. A request that gets no answer within ``timeout_s``
raises ``RemotePolicyTimeout``; the connection is then dropped so a late answer can never be
taken for the next one.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any

import numpy as np

from gf_bringup.images import fit_image
from gf_eval.action_space import EE_DELTA_POSE
from gf_eval.trials import TrialSpec
from gf_policy.backend import ActionPlan, PolicyBackend, PolicyObservation
from gf_policy.backends.vla import (
    check_observations,
    observation_seed,
    resolve_execute_steps,
)
from gf_policy.server import MAX_MESSAGE_BYTES, PROTOCOL, PROTOCOL_VERSION, pack, unpack


class RemotePolicyError(RuntimeError):
    """The server cannot be used: unreachable, incompatible, or it refused a request."""


class RemotePolicyUnreachable(RemotePolicyError, ConnectionError):
    """No connection to the server could be made (a ``ConnectionError``: at start-up, one line)."""


class RemotePolicyTimeout(RemotePolicyError, TimeoutError):
    """The server did not answer in time."""


class RemoteBackend(PolicyBackend):
    """Sends observations to ``gf-policy-server`` and returns its action chunks."""

    name = "remote"
    needs_image = True
    needs_privileged = False

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765",
        timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        retries: int = 3,
        retry_delay_s: float = 0.5,
        execute_steps: int = 0,
        seed: int = 0,
        resize_images: bool = True,
        expect_action_horizon: int | None = None,
        expect_action_dim: int = EE_DELTA_POSE.dim,
        expect_proprio_dim: int = 7,
        expect_action_space: str = EE_DELTA_POSE.name,
        connect: bool = True,
    ):
        """``timeout_s``: per request; ``retries``: reconnection attempts after a lost connection;
        ``execute_steps``: 0 = the served checkpoint's execution horizon; ``seed``: noise seed base
        (same meaning as the ``vla`` backend's); ``resize_images``: send images already resized to
        the model's input size (same pixels the server would compute, a fraction of the bytes);
        ``expect_*``: what the served model must look like."""
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {url!r}")
        self.url = url
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.retries = int(retries)
        self.retry_delay_s = float(retry_delay_s)
        self.seed = int(seed)
        self.resize = bool(resize_images)
        self.expect = {"action_horizon": expect_action_horizon, "action_dim": expect_action_dim,
                       "proprio_dim": expect_proprio_dim, "action_space": expect_action_space}
        self._execute_steps_arg = int(execute_steps)
        self._ws: Any = None
        self._ids = itertools.count(1)
        self.metadata: dict[str, Any] | None = None
        self.reconnects = 0
        self.trial: TrialSpec | None = None
        if connect:
            self.connect()

    # ------------------------------------------------------------------ connection
    def _open(self) -> None:
        """One connection attempt with the handshake; raises OSError-like errors for retry."""
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        try:
            ws = connect(self.url, open_timeout=self.connect_timeout_s, max_size=MAX_MESSAGE_BYTES, compression=None)
        except InvalidURI as exc:
            raise RemotePolicyError(f"bad server url {self.url!r}: {exc}") from exc
        except InvalidHandshake as exc:
            raise ConnectionError(f"websocket handshake with {self.url} failed: {exc}") from exc
        try:
            hello = unpack(ws.recv(timeout=self.connect_timeout_s))
            if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL:
                raise RemotePolicyError(f"{self.url} is not a {PROTOCOL} server (first message: {hello.get('type')!r})")
            if hello.get("version") != PROTOCOL_VERSION:
                raise RemotePolicyError(
                    f"protocol version mismatch: {self.url} speaks {PROTOCOL} v{hello.get('version')}, this client "
                    f"v{PROTOCOL_VERSION}; install the same gf_policy version on both hosts"
                )
            ws.send(pack({"type": "hello", "protocol": PROTOCOL, "version": PROTOCOL_VERSION}))
            reply = unpack(ws.recv(timeout=self.connect_timeout_s))
            if reply.get("type") != "ready":
                raise RemotePolicyError(f"{self.url} refused the connection: {reply.get('message', reply)}")
            self._check_model(hello.get("model") or {})
        except ValueError as exc:
            ws.close()
            raise RemotePolicyError(f"{self.url} sent an invalid handshake: {exc}") from exc
        except BaseException:
            ws.close()
            raise
        self._ws = ws

    def _check_model(self, model: dict[str, Any]) -> None:
        mismatches = [f"{k}: server {model.get(k)!r}, expected {v!r}" for k, v in self.expect.items()
                      if v is not None and model.get(k) != v]
        if mismatches:
            raise RemotePolicyError(f"the model served at {self.url} does not fit this client ({'; '.join(mismatches)})")
        if self.metadata is not None and model != self.metadata:
            raise RemotePolicyError(
                f"the model served at {self.url} changed since the first connection ({self.metadata} -> {model}); "
                "restart the policy to use the new one"
            )
        self.metadata = dict(model)
        self.execute_steps = resolve_execute_steps(self._execute_steps_arg, model["action_horizon"],
                                                   model.get("execution_horizon", model["action_horizon"]))

    def connect(self) -> None:
        """(Re)connect, retrying ``retries`` times on network errors."""
        from websockets.exceptions import ConnectionClosed

        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay_s * attempt)
            try:
                self._open()
                return
            except (OSError, ConnectionClosed) as exc:  # refused, reset, DNS, open timeout
                last = exc
        raise RemotePolicyUnreachable(f"cannot reach {self.url} after {self.retries + 1} attempt(s): {last}; "
                                      "is gf-policy-server running there?") from last

    def _drop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail; it is gone either way
                self._ws.close()
            self._ws = None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its answer, reconnecting on a lost connection."""
        from websockets.exceptions import ConnectionClosed

        message = dict(message, id=next(self._ids))
        payload = pack(message)
        for attempt in range(self.retries + 1):
            if self._ws is None:
                self.connect()
                if attempt:
                    self.reconnects += 1
            deadline = time.monotonic() + self.timeout_s
            try:
                self._ws.send(payload)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    reply = unpack(self._ws.recv(timeout=remaining))
                    if reply.get("id") == message["id"]:
                        break  # answers to abandoned requests are skipped
            except TimeoutError:
                self._drop()
                raise RemotePolicyTimeout(f"{self.url} did not answer within {self.timeout_s:g} s") from None
            except (ConnectionClosed, OSError) as exc:
                self._drop()
                if attempt == self.retries:
                    raise RemotePolicyError(f"lost the connection to {self.url}: {exc}") from exc
                time.sleep(self.retry_delay_s * (attempt + 1))
                continue
            except ValueError as exc:
                self._drop()
                raise RemotePolicyError(f"{self.url} sent an invalid message: {exc}") from exc
            if reply.get("type") == "error" and reply.get("code") == "timeout":
                # The server holds the request to our timeout_s too; on a busy machine its own
                # deadline can fire before ours: the same timeout, seen from the other end.
                raise RemotePolicyTimeout(f"{self.url} did not answer in time (timeout): {reply.get('message')}")
            if reply.get("type") == "error":
                raise RemotePolicyError(f"{self.url} refused the request ({reply.get('code')}): {reply.get('message')}")
            return reply
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ PolicyBackend
    def reset(self, trial: TrialSpec) -> None:
        self.trial = trial

    def _prepare_images(self, observations: list[PolicyObservation]) -> tuple[list[np.ndarray], bool]:
        """The camera frames, or (``resize``) the frames fitted by the server's own rule: identical
        pixels, fewer bytes on the wire; the request then says so (``fitted``)."""
        size = self.metadata["image_size"] if self.metadata else None
        images = [np.asarray(o.image) for o in observations]
        if self.resize and size and all(i.dtype == np.uint8 and i.ndim == 3 for i in images):
            crop = self.metadata.get("image_crop")
            return [np.ascontiguousarray(fit_image(i, size, crop)) for i in images], True
        return [np.ascontiguousarray(i) for i in images], False

    def act(self, obs: PolicyObservation) -> ActionPlan:
        return self.act_batch([obs])[0]

    def act_batch(self, observations: list[PolicyObservation]) -> list[ActionPlan]:
        if not observations:
            return []
        if self.metadata is None:
            self.connect()
        meta = self.metadata
        check_observations(observations, meta["proprio_dim"])
        images, fitted = self._prepare_images(observations)
        reply = self.request({
            "type": "predict",
            "images": images,
            "fitted": fitted,
            "instructions": [o.trial.instruction for o in observations],
            "proprio": np.stack([np.asarray(o.proprio, dtype=np.float32) for o in observations]),
            "seeds": [observation_seed(self.seed, o.trial.seed, o.step) for o in observations],
            "timeout_s": self.timeout_s,  # the server drops the request once this client stopped waiting
        })
        actions = reply.get("actions")
        expected = (len(observations), meta["action_horizon"], meta["action_dim"])
        if not isinstance(actions, np.ndarray) or actions.shape != expected:
            got = actions.shape if isinstance(actions, np.ndarray) else type(actions).__name__
            raise RemotePolicyError(f"{self.url} answered actions of shape {got}, expected {expected}")
        return [ActionPlan(np.ascontiguousarray(a, dtype=np.float32), self.execute_steps) for a in actions]

    def close(self) -> None:
        self._drop()
