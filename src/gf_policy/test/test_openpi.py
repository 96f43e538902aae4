"""The ``openpi`` backend and gf-policy-server's openpi face, over loopback: the backend maps our
observation to a served policy's keys and its actions back, a wrong mapping stops it at start-up
with a one-line error, and openpi-protocol clients get the same actions from our server as the
local ``vla`` backend."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gf_eval.trials import make_trial
from gf_policy import openpi_wire
from gf_policy.backend import PolicyObservation, load_backend
from gf_policy.backends.openpi import OpenPIBackend, OpenPIError, OpenPIMappingError
from gf_policy.backends.vla import VLABackend
from gf_policy.server import PolicyServer, ServerThread
from gf_policy.vla import VLAInference
from gf_policy.vla.testing import save_tiny_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

SERVED_HORIZON = 10
SERVED_ACTION_DIM = 8  # e.g. a policy trained with two gripper columns


def served_policy(obs: dict) -> dict:
    """A stand-in for a policy served by openpi: its own keys, an 8-column action chunk."""
    image, wrist, state, prompt = obs["observation/image"], obs["observation/wrist_image"], obs["observation/state"], obs["prompt"]
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3) and wrist.shape == image.shape and not wrist.any()
    assert isinstance(prompt, str)
    if state.shape != (6,):
        raise ValueError(f"state must have 6 dims, got {state.shape}")
    row = np.concatenate([state, [float(image.mean()) / 255, len(prompt) / 100]]).astype(np.float32)
    return {"actions": np.tile(row, (SERVED_HORIZON, 1)) * np.arange(1, SERVED_HORIZON + 1, dtype=np.float32)[:, None],
            "policy_timing": {"infer_ms": 1.0}}


class FakeOpenPIServer:
    """openpi's protocol on 127.0.0.1: metadata on connect, observation -> answer, a failure is
    reported as a text frame and the connection closed."""

    def __init__(self):
        self.port = 0
        self.requests = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handler(self, ws):
        from websockets.exceptions import ConnectionClosed
        from websockets.frames import CloseCode

        await ws.send(openpi_wire.pack({"policy": "fake-pi0", "action_horizon": SERVED_HORIZON}))
        try:
            async for raw in ws:
                self.requests += 1
                try:
                    answer = served_policy(openpi_wire.unpack(raw))
                except Exception as exc:
                    await ws.send(f"Traceback (most recent call last):\n  File \"serve.py\"\n{type(exc).__name__}: {exc}")
                    await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
                    return
                await ws.send(openpi_wire.pack(answer))
        except ConnectionClosed:
            pass

    def _run(self):
        from websockets.asyncio.server import serve

        async def main():
            async with serve(self._handler, "127.0.0.1", 0) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._stop = asyncio.Event()
                self._ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}"


MAPPING = {
    "inputs": {"observation/image": "image", "observation/wrist_image": "zeros_image",
               "observation/state": "state[0:6]", "prompt": "instruction"},
    "image_size": 64,
    "outputs": {"key": "actions", "dims": [0, 1, 2, 3, 4, 5, 7], "scale": [1, 1, 1, 1, 1, 1, 2], "offset": 0.5},
}


def write_mapping(tmp_path: Path, mapping: dict) -> str:
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return str(path)


def observation(index: int, step: int = 0) -> PolicyObservation:
    rng = np.random.default_rng([index, step])
    return PolicyObservation(trial=make_trial("Val", index), step=step, proprio=rng.normal(0, 0.2, 7).astype(np.float32),
                             image=rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))


def test_the_mapping_fills_the_served_keys_and_maps_actions_back(tmp_path):
    with FakeOpenPIServer() as server:
        backend = load_backend("openpi", url=server.url, mapping=write_mapping(tmp_path, MAPPING), execute_steps=4)
        assert isinstance(backend, OpenPIBackend) and backend.metadata["policy"] == "fake-pi0"
        obs = observation(3)
        plan = backend.act(obs)
        backend.close()
    sent_state = obs.proprio[:6]
    assert plan.actions.shape == (SERVED_HORIZON, 7) and plan.actions.dtype == np.float32 and plan.execute_steps == 4
    steps = np.arange(1, SERVED_HORIZON + 1, dtype=np.float32)
    np.testing.assert_allclose(plan.actions[:, :6], np.outer(steps, sent_state) + 0.5, rtol=1e-6)
    np.testing.assert_allclose(plan.actions[:, 6], steps * len(obs.trial.instruction) / 100 * 2 + 0.5, rtol=1e-6)
    assert server.requests == 2  # the start-up probe and the real request


@pytest.mark.parametrize("change, message", [
    (lambda m: m["inputs"].pop("observation/wrist_image"),
     r"rejected the mapped probe observation \(keys \['observation/image', 'observation/state', 'prompt'\].*\): "
     r".*failed the request: KeyError: 'observation/wrist_image'$"),
    (lambda m: m["inputs"].update({"observation/state": "state"}),
     r"rejected the mapped probe observation .*ValueError: state must have 6 dims, got \(7,\)$"),
    (lambda m: m["outputs"].update({"dims": [0, 1, 2, 3, 4, 5, 8]}),
     r"answered actions of shape \(10, 8\); the mapping \(.*mapping.yaml\) reads columns \[0, 1, 2, 3, 4, 5, 8\]$"),
    (lambda m: m["outputs"].update({"key": "action"}),
     r"answered keys \['actions', 'policy_timing'\]; the mapping \(.*\) reads 'action'$"),
])
def test_a_wrong_mapping_stops_the_backend_at_start_up_with_one_line(tmp_path, change, message):
    mapping = yaml.safe_load(yaml.safe_dump(MAPPING))
    change(mapping)
    with FakeOpenPIServer() as server, pytest.raises(OpenPIMappingError, match=message) as info:
        OpenPIBackend(server.url, mapping=write_mapping(tmp_path, mapping), retries=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mapping, message", [
    ({"inputs": {"prompt": "text"}}, r"input 'prompt' has unknown source 'text'"),
    ({"inputs": {"prompt": "instruction"}, "outputs": {"dims": [0, 1]}}, r"outputs.dims must list 7 column indices"),
    ({"inputs": {"prompt": "instruction"}, "camera": 1}, r"unknown entries \['camera'\]"),
    ({"inputs": {"prompt": "instruction"}, "outputs": {"scale": [1, 2]}}, r"outputs.scale must be a number or 7 numbers"),
])
def test_an_invalid_mapping_file_is_refused_before_connecting(tmp_path, mapping, message):
    with pytest.raises(OpenPIMappingError, match=message) as info:
        OpenPIBackend("ws://127.0.0.1:9", mapping=write_mapping(tmp_path, mapping), retries=0)
    assert "\n" not in str(info.value)


def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(OpenPIError, match=r"cannot reach ws://127.0.0.1:9 after 1 attempts"):
        OpenPIBackend("ws://127.0.0.1:9", retries=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("openpi_ckpt")
    return save_tiny_checkpoint(out, [make_trial("Val", i).instruction for i in range(5)], action_horizon=5)


def test_openpi_clients_get_our_models_actions(checkpoint):
    policy = VLAInference.from_pretrained(checkpoint)
    local = VLABackend(str(checkpoint), seed=7)
    with ServerThread(PolicyServer(policy, "127.0.0.1", 0, openpi_port=0)) as thread:
        backend = OpenPIBackend(thread.server.openpi_url, seed=7)  # the default mapping: gf-policy-server's keys
        assert backend.metadata["protocol"] == "openpi" and backend.metadata["action_horizon"] == 5
        for i in range(3):
            obs = observation(i, step=4 * i)
            np.testing.assert_allclose(backend.act(obs).actions, local.act(obs).actions, atol=1e-5)
        backend.close()
        # a plain openpi-protocol client sending a bad observation gets openpi's error report
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        with connect(thread.server.openpi_url) as ws:
            openpi_wire.unpack(ws.recv(timeout=10))
            ws.send(openpi_wire.pack({"observation/image": np.zeros((8, 8, 3), np.uint8), "prompt": "x"}))
            report = ws.recv(timeout=30)
            assert isinstance(report, str) and "observation lacks ['observation/state']" in report
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        assert thread.server.metrics_snapshot()["requests"] == 4  # probe + 3
