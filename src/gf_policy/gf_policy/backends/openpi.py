"""``openpi``: evaluate a policy served with openpi's websocket protocol (pi0, pi0-FAST, pi0.5, ...).

    gf-launch sim_eval policy:=openpi backend_args:='{url: ws://gpu-host:8000, mapping: pi0_mapping.yaml}'

openpi serves each policy with its own observation keys and action layout, so a small mapping
file says how our observation (camera image, 7-D proprio, instruction) fills the served policy's
inputs and which columns of its action chunk are our ``ee_delta_pose`` actions::

    inputs:                          # served input key -> what goes there
      observation/image: image       # camera, uint8 H x W x 3
      observation/wrist_image: zeros_image   # a camera we do not have: black
      observation/state: state       # the 7-D proprio; state[0:6] sends a slice
      prompt: instruction
    image_size: 224                  # optional: resize images (bicubic) before sending
    outputs:
      key: actions                   # the answer's action chunk, H x D
      dims: [0, 1, 2, 3, 4, 5, 6]    # the columns that are dx dy dz droll dpitch dyaw gripper
      scale: 1.0                     # optional, a number or 7: ours = served[dims] * scale + offset
      offset: 0.0

Sources: ``image``, ``zeros_image``, ``state``, ``state[a:b]``, ``instruction``, ``seed`` (the
noise seed the ``vla`` backend would use; gf-policy-server reads it). Without a mapping file the
backend uses gf-policy-server's own openpi keys (``gf-policy-server --openpi-port``).

At start-up the backend connects and sends one mapped probe observation; a mapping the served
policy cannot use (missing or unknown keys, too few action columns) stops it there with a
one-line ``OpenPIMappingError``, never with garbage actions mid-trial. The protocol is spoken
by ``gf_policy.openpi_wire`` (the ``openpi-client`` package needs numpy < 2).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gf_bringup.images import fit_image
from gf_eval.action_space import EE_DELTA_POSE
from gf_eval.trials import TrialSpec, make_trial
from gf_policy import openpi_wire
from gf_policy.backend import ActionPlan, PolicyBackend, PolicyObservation
from gf_policy.backends.vla import observation_seed
from gf_policy.server import MAX_MESSAGE_BYTES, OPENPI_INPUT_KEYS

PROPRIO_DIM = 7
_SLICE = re.compile(r"^state\[(\d*):(\d*)\]$")
_SOURCES = ("image", "zeros_image", "state", "state[a:b]", "instruction", "seed")


class OpenPIMappingError(ValueError):
    """The mapping file is invalid or does not fit the served policy (one line, at start-up)."""


class OpenPIError(RuntimeError):
    """The openpi server cannot be reached or failed a request."""


@dataclass(frozen=True)
class OpenPIMapping:
    """Our observation -> the served policy's inputs; its actions -> ours."""

    inputs: dict[str, str]
    actions_key: str = "actions"
    dims: tuple[int, ...] = tuple(range(EE_DELTA_POSE.dim))
    scale: tuple[float, ...] = (1.0,) * EE_DELTA_POSE.dim
    offset: tuple[float, ...] = (0.0,) * EE_DELTA_POSE.dim
    image_size: int | None = None
    source: str = "the gf-policy-server default"

    @classmethod
    def gf_server(cls) -> OpenPIMapping:
        """gf-policy-server's openpi face: its keys, our action layout, the vla backend's seeds."""
        image_key, state_key, prompt_key = OPENPI_INPUT_KEYS
        return cls({image_key: "image", state_key: "state", prompt_key: "instruction", "seed": "seed"})

    @classmethod
    def from_dict(cls, data: Any, source: str) -> OpenPIMapping:
        def fail(message: str) -> OpenPIMappingError:
            return OpenPIMappingError(f"openpi mapping {source}: {message}")

        if not isinstance(data, dict):
            raise fail("must be a mapping with 'inputs' and 'outputs'")
        unknown = sorted(set(data) - {"inputs", "outputs", "image_size"})
        if unknown:
            raise fail(f"unknown entries {unknown} (allowed: inputs, outputs, image_size)")
        inputs = data.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise fail("'inputs' must map served input keys to sources")
        for key, src in inputs.items():
            if not isinstance(src, str) or (src not in _SOURCES and not _SLICE.match(src)):
                raise fail(f"input {key!r} has unknown source {src!r} (use one of {', '.join(_SOURCES)})")
        outputs = data.get("outputs") or {}
        if not isinstance(outputs, dict) or set(outputs) - {"key", "dims", "scale", "offset"}:
            raise fail("'outputs' may hold key, dims, scale, offset")
        dims = outputs.get("dims", list(range(EE_DELTA_POSE.dim)))
        if (not isinstance(dims, list) or len(dims) != EE_DELTA_POSE.dim
                or not all(isinstance(d, int) and d >= 0 for d in dims)):
            raise fail(f"outputs.dims must list {EE_DELTA_POSE.dim} column indices ({', '.join(EE_DELTA_POSE.names)})")

        def per_dim(name: str, default: float) -> tuple[float, ...]:
            value = outputs.get(name, default)
            values = [value] * EE_DELTA_POSE.dim if isinstance(value, (int, float)) else value
            if not isinstance(values, list) or len(values) != EE_DELTA_POSE.dim or \
                    not all(isinstance(v, (int, float)) for v in values):
                raise fail(f"outputs.{name} must be a number or {EE_DELTA_POSE.dim} numbers")
            return tuple(float(v) for v in values)

        size = data.get("image_size")
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise fail("image_size must be a positive integer")
        return cls({str(k): v for k, v in inputs.items()}, str(outputs.get("key", "actions")), tuple(dims),
                   per_dim("scale", 1.0), per_dim("offset", 0.0), size, source)

    @classmethod
    def load(cls, path: str | Path) -> OpenPIMapping:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise OpenPIMappingError(f"openpi mapping {path}: cannot read it ({' '.join(str(exc).split())})") from exc
        return cls.from_dict(data, str(path))

    # ------------------------------------------------------------------ conversion
    def observation(self, obs: PolicyObservation, seed: int) -> dict[str, Any]:
        """Our observation -> the served policy's input mapping."""
        image = fit_image(np.asarray(obs.image), self.image_size)
        state = np.asarray(obs.proprio, dtype=np.float32)
        out: dict[str, Any] = {}
        for key, src in self.inputs.items():
            if src == "image":
                out[key] = np.ascontiguousarray(image)
            elif src == "zeros_image":
                out[key] = np.zeros_like(image)
            elif src == "state":
                out[key] = state
            elif src == "instruction":
                out[key] = obs.trial.instruction
            elif src == "seed":
                out[key] = int(seed)
            else:
                lo, hi = _SLICE.match(src).groups()
                out[key] = state[int(lo) if lo else None:int(hi) if hi else None]
        return out

    def actions(self, answer: dict[str, Any], where: str) -> np.ndarray:
        """The served answer -> our actions (H, 7); raises ``OpenPIMappingError`` when it does not fit."""
        if self.actions_key not in answer:
            raise OpenPIMappingError(f"{where} answered keys {sorted(map(str, answer))}; the mapping ({self.source}) "
                                     f"reads {self.actions_key!r}")
        served = answer[self.actions_key]
        if not isinstance(served, np.ndarray) or served.ndim not in (1, 2) or served.dtype.kind not in "iuf":
            desc = f"{served.dtype} {served.shape}" if isinstance(served, np.ndarray) else type(served).__name__
            raise OpenPIMappingError(f"{where} answered {self.actions_key!r} as {desc}; expected a numeric H x D chunk")
        chunk = served[None] if served.ndim == 1 else served
        if max(self.dims) >= chunk.shape[1]:
            raise OpenPIMappingError(f"{where} answered actions of shape {tuple(served.shape)}; the mapping ({self.source}) "
                                     f"reads columns {list(self.dims)}")
        return (chunk[:, list(self.dims)] * np.asarray(self.scale) + np.asarray(self.offset)).astype(np.float32)


class OpenPIBackend(PolicyBackend):
    """Sends mapped observations to an openpi policy server and maps its action chunks back."""

    name = "openpi"
    needs_image = True
    needs_privileged = False

    def __init__(self, url: str = "ws://127.0.0.1:8000", mapping: str = "", timeout_s: float = 30.0,
                 connect_timeout_s: float = 10.0, retries: int = 3, retry_delay_s: float = 0.5,
                 execute_steps: int = 0, seed: int = 0, probe: bool = True):
        """``mapping``: the mapping file ('' = gf-policy-server's openpi keys); ``timeout_s``: per
        request; ``retries``: reconnections after a lost connection; ``execute_steps``: steps run
        before asking again (0 = the whole chunk); ``seed``: base of the ``seed`` source;
        ``probe``: check the mapping with one request at start-up."""
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {url!r}")
        self.url = url
        self.mapping = OpenPIMapping.load(mapping) if mapping else OpenPIMapping.gf_server()
        self.timeout_s, self.connect_timeout_s = float(timeout_s), float(connect_timeout_s)
        self.retries, self.retry_delay_s = int(retries), float(retry_delay_s)
        self.execute_steps, self.seed = int(execute_steps), int(seed)
        self.metadata: dict[str, Any] = {}
        self.trial: TrialSpec | None = None
        self._ws: Any = None
        self._connect()
        if probe:
            self._probe()

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay_s * attempt)
            try:
                ws = connect(self.url, open_timeout=self.connect_timeout_s, max_size=MAX_MESSAGE_BYTES, compression=None)
            except InvalidURI as exc:
                raise OpenPIError(f"bad server url {self.url!r}: {exc}") from exc
            except (OSError, InvalidHandshake, ConnectionClosed) as exc:
                last = exc
                continue
            try:
                self.metadata = openpi_wire.unpack(ws.recv(timeout=self.connect_timeout_s))
            except (TimeoutError, ConnectionClosed, openpi_wire.OpenPIWireError) as exc:
                ws.close()
                raise OpenPIError(f"{self.url} did not send openpi policy metadata on connect: {exc}") from exc
            self._ws = ws
            return
        raise OpenPIError(f"cannot reach {self.url} after {self.retries + 1} attempts: {last}") from last

    def _drop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail; it is gone either way
                self._ws.close()
            self._ws = None

    def infer(self, observation: dict[str, Any]) -> dict[str, Any]:
        """One request -> the served answer; reconnects after a lost connection."""
        from websockets.exceptions import ConnectionClosed

        payload = openpi_wire.pack(observation)
        for attempt in range(self.retries + 1):
            if self._ws is None:
                self._connect()
            try:
                self._ws.send(payload)
                raw = self._ws.recv(timeout=self.timeout_s)
            except TimeoutError:
                self._drop()  # a late answer must never be taken for the next request's
                raise OpenPIError(f"{self.url} did not answer within {self.timeout_s:g} s") from None
            except (ConnectionClosed, OSError) as exc:
                self._drop()
                if attempt == self.retries:
                    raise OpenPIError(f"lost the connection to {self.url}: {exc}") from exc
                continue
            try:
                return openpi_wire.unpack(raw)
            except openpi_wire.OpenPIWireError as exc:
                self._drop()  # openpi closes the connection after an error report
                raise OpenPIError(f"{self.url} failed the request: {openpi_wire.last_line(str(exc))}") from exc
        raise AssertionError("unreachable")

    def _probe(self) -> None:
        """One mapped observation through the served policy: a mapping that does not fit fails here."""
        trial = make_trial("Val", 0)
        size = self.mapping.image_size or 224
        obs = PolicyObservation(trial=trial, step=0, proprio=np.zeros(PROPRIO_DIM, np.float32),
                                image=np.zeros((size, size, 3), np.uint8))
        sent = self.mapping.observation(obs, 0)
        try:
            answer = self.infer(sent)
        except OpenPIError as exc:
            self.close()
            raise OpenPIMappingError(f"the openpi policy at {self.url} rejected the mapped probe observation "
                                     f"(keys {sorted(sent)}, mapping {self.mapping.source}): {exc}") from exc
        try:
            self.mapping.actions(answer, f"the openpi policy at {self.url}")
        except OpenPIMappingError:
            self.close()
            raise

    # ------------------------------------------------------------------ PolicyBackend
    def reset(self, trial: TrialSpec) -> None:
        self.trial = trial

    def act(self, obs: PolicyObservation) -> ActionPlan:
        if obs.image is None:
            raise ValueError("the openpi backend needs the camera image")
        if np.asarray(obs.proprio).shape != (PROPRIO_DIM,):
            raise ValueError(f"proprio must have shape ({PROPRIO_DIM},), got {np.asarray(obs.proprio).shape}")
        answer = self.infer(self.mapping.observation(obs, observation_seed(self.seed, obs.trial.seed, obs.step)))
        actions = self.mapping.actions(answer, f"the openpi policy at {self.url}")
        steps = self.execute_steps if 0 < self.execute_steps <= len(actions) else 0
        return ActionPlan(np.ascontiguousarray(actions), steps)

    def close(self) -> None:
        self._drop()
