"""The `remote` backend and gf-policy-server over loopback: the same actions as local inference,
a clear error on protocol-version and model-shape mismatch, request timeouts, reconnection,
bad requests answered without dropping the connection, the wire format, and the CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gf_eval.trials import make_trial
from gf_policy.backend import PolicyObservation, load_backend
from gf_policy.backends.remote import (
    RemoteBackend,
    RemotePolicyError,
    RemotePolicyTimeout,
)
from gf_policy.backends.vla import VLABackend
from gf_policy.server import BatchingConfig, PolicyServer, ServerThread, pack, unpack
from gf_policy.vla import (
    NormStats,
    PI0StyleVLA,
    VLAConfig,
    VLAInference,
    VLAProcessor,
    train_tiny_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

HORIZON = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("remote_ckpt")
    # A model that crops its camera frame, as the mini rows do: a frame cropped twice (once by the
    # client, again by the server) would show the model another part of the table.
    cfg = VLAConfig.tiny(action_horizon=HORIZON, execution_horizon=3, image_crop=[0.1, 0.15, 0.85, 0.8])
    torch.manual_seed(1)
    model = PI0StyleVLA.from_config(cfg)
    with torch.no_grad():
        model.action_out_proj.weight.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    model.norm_stats = {"proprio": NormStats.from_data(rng.normal(0, 0.2, (300, 7))),
                        "actions": NormStats.from_data(rng.uniform(-0.5, 0.5, (300, 7)))}
    tok = train_tiny_tokenizer([make_trial("Val", i).instruction for i in range(5)], 200, out / "tok")
    model.save_pretrained(out, processor=VLAProcessor(tok, cfg))
    return out


@pytest.fixture(scope="module")
def policy(checkpoint) -> VLAInference:
    return VLAInference.from_pretrained(checkpoint)


@pytest.fixture
def server(policy, checkpoint):
    thread = ServerThread(PolicyServer(policy, "127.0.0.1", 0, checkpoint=str(checkpoint)))
    thread.start()
    yield thread
    thread.stop()


def observation(index: int, step: int = 0) -> PolicyObservation:
    rng = np.random.default_rng([index, step])
    return PolicyObservation(trial=make_trial("Val", index), step=step, proprio=rng.normal(0, 0.2, 7).astype(np.float32),
                             image=rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))


def test_remote_gives_the_same_actions_as_local_inference(server, checkpoint):
    local = VLABackend(str(checkpoint), seed=5)
    remote = load_backend("remote", url=server.server.url, seed=5, timeout_s=30)
    assert isinstance(remote, RemoteBackend) and remote.needs_image and not remote.needs_privileged
    assert remote.metadata["action_horizon"] == HORIZON and remote.execute_steps == 3
    observations = [observation(i, step=2 * i) for i in range(3)]
    for obs in observations:
        remote.reset(obs.trial)
        got, want = remote.act(obs), local.act(obs)
        assert got.actions.shape == (HORIZON, 7) and got.execute_steps == want.execute_steps
        np.testing.assert_array_equal(got.actions, want.actions)
    for got, want in zip(remote.act_batch(observations), local.act_batch(observations)):
        np.testing.assert_array_equal(got.actions, want.actions)
    # full-resolution images give the same chunk: the client's resize is the processor's
    raw = RemoteBackend(server.server.url, seed=5, resize_images=False)
    np.testing.assert_array_equal(raw.act(observations[0]).actions, local.act(observations[0]).actions)
    assert server.server.requests == 5 and remote.reconnects == 0
    remote.close()
    raw.close()


def test_version_mismatch_is_a_clear_error(policy, checkpoint):
    with ServerThread(PolicyServer(policy, "127.0.0.1", 0, version=2)) as thread, \
            pytest.raises(RemotePolicyError, match=r"version mismatch.*v2.*this client v1"):
        RemoteBackend(thread.server.url, retries=0)
    # ... and the server refuses an old client on its side
    from websockets.sync.client import connect

    with ServerThread(PolicyServer(policy, "127.0.0.1", 0)) as thread, connect(thread.server.url) as ws:
        assert unpack(ws.recv(timeout=10))["type"] == "hello"
        ws.send(pack({"type": "hello", "protocol": "gf-policy", "version": 0}))
        reply = unpack(ws.recv(timeout=10))
        assert reply["code"] == "version_mismatch" and "client sent 'gf-policy' v0" in reply["message"]


def test_shape_mismatch_is_a_clear_error(server):
    with pytest.raises(RemotePolicyError, match=r"action_horizon: server 5, expected 8"):
        RemoteBackend(server.server.url, expect_action_horizon=8, retries=0)
    with pytest.raises(RemotePolicyError, match=r"action_space: server 'ee_delta_pose', expected 'joint_pos'"):
        RemoteBackend(server.server.url, expect_action_space="joint_pos", retries=0)


def test_bad_request_is_answered_and_the_connection_survives(server):
    remote = RemoteBackend(server.server.url)
    with pytest.raises(RemotePolicyError, match=r"bad_request.*'proprio' must be an array of shape \(1, 7\)"):
        remote.request({"type": "predict", "images": [np.zeros((8, 8, 3), np.uint8)], "instructions": ["x"],
                        "proprio": np.zeros((1, 6), np.float32), "seeds": [0]})
    with pytest.raises(RemotePolicyError, match="uint8"):
        remote.request({"type": "predict", "images": [np.zeros((8, 8, 3), np.float32)], "instructions": ["x"],
                        "proprio": np.zeros((1, 7), np.float32), "seeds": None})
    assert remote.act(observation(0)).actions.shape == (HORIZON, 7)
    assert remote.reconnects == 0


class SlowPolicy:
    """Wraps a policy so that every inference takes ``delay`` seconds longer."""

    def __init__(self, policy: VLAInference, delay: float):
        self.policy, self.delay, self.model = policy, delay, policy.model

    def predict_batch(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.policy.predict_batch(*args, **kwargs)


def test_timeout_then_recovery(policy):
    slow = SlowPolicy(policy, delay=1.5)
    with ServerThread(PolicyServer(slow, "127.0.0.1", 0)) as thread:
        remote = RemoteBackend(thread.server.url, timeout_s=0.3)
        started = time.monotonic()
        # whichever end's deadline fires first (both are 0.3 s)
        with pytest.raises(RemotePolicyTimeout, match=r"did not answer (within 0.3 s|in time \(timeout\): no answer within 0.3 s)"):
            remote.act(observation(0))
        assert time.monotonic() - started < 1.2
        slow.delay = 0.0
        remote.timeout_s = 10.0
        # a fresh connection: the late answer to the abandoned request can never be read as this one
        assert remote.act(observation(1)).actions.shape == (HORIZON, 7)


def test_a_timeout_the_server_reports_first_is_a_timeout(policy):
    """The server holds a request to its own deadline too; when that fires before the client's
    (here it is shorter; on a loaded machine it can simply arrive first), the client still says
    timeout, not "refused"."""
    slow = SlowPolicy(policy, delay=1.5)
    server = PolicyServer(slow, "127.0.0.1", 0, batching=BatchingConfig(request_timeout_s=0.2))
    with ServerThread(server) as thread:
        remote = RemoteBackend(thread.server.url, timeout_s=10.0)
        with pytest.raises(RemotePolicyTimeout, match=r"did not answer in time \(timeout\): no answer within 0.2 s"):
            remote.act(observation(0))


def test_reconnects_after_a_server_restart(policy):
    first = ServerThread(PolicyServer(policy, "127.0.0.1", 0))
    first.start()
    port = first.server.port
    remote = RemoteBackend(first.server.url, retries=5, retry_delay_s=0.1)
    before = remote.act(observation(2)).actions
    first.stop()
    with ServerThread(PolicyServer(policy, "127.0.0.1", port)):
        after = remote.act(observation(2)).actions
    np.testing.assert_array_equal(before, after)
    assert remote.reconnects == 1
    # nobody listening any more: a clear error after the retries, not a hang
    started = time.monotonic()
    with pytest.raises(RemotePolicyError, match="cannot reach"):
        remote.act(observation(2))
    assert time.monotonic() - started < 10
    with pytest.raises(RemotePolicyError, match="cannot reach"):
        RemoteBackend(f"ws://127.0.0.1:{port}", retries=1, retry_delay_s=0.05)
    with pytest.raises(ValueError, match="ws://"):
        RemoteBackend("http://127.0.0.1:1", connect=False)


def test_wire_format_roundtrip_and_refusals():
    msg = {"type": "t", "a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones((2, 2, 3), np.uint8),
           "c": [np.int64(3), np.bool_(True)], "s": "é"}
    out = unpack(pack(msg))
    assert out["a"].dtype == np.float32 and np.array_equal(out["a"], msg["a"]) and out["a"].flags.writeable
    assert out["b"].shape == (2, 2, 3) and out["c"] == [3, True] and out["s"] == "é"
    with pytest.raises(TypeError):
        pack({"type": "t", "x": np.array([object()])})
    import msgpack

    forged = msgpack.packb({"type": "t", "x": {"__ndarray__": True, "dtype": "<f4", "shape": [10], "data": b"\0" * 8}})
    with pytest.raises(ValueError, match="does not fit"):
        unpack(forged)
    forged = msgpack.packb({"type": "t", "x": {"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"\0" * 8}})
    with pytest.raises(ValueError):
        unpack(forged)
    with pytest.raises(ValueError):
        unpack(msgpack.packb([1, 2]))


def test_gf_policy_server_command(checkpoint):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gf_policy.server", "--checkpoint", str(checkpoint), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on (ws://127\.0\.0\.1:\d+) ", line)
        assert match, line + (proc.stdout.read() if proc.poll() is not None else "")
        remote = RemoteBackend(match.group(1), timeout_s=30)
        local = VLABackend(str(checkpoint))
        np.testing.assert_array_equal(remote.act(observation(4)).actions, local.act(observation(4)).actions)
        remote.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_gf_policy_server_refuses_a_missing_checkpoint(checkpoint, capsys):
    from gf_policy.server import main

    assert main(["--checkpoint", str(checkpoint / "nope")]) == 1
    assert "cannot load" in capsys.readouterr().err
