"""Dynamic batching in gf-policy-server, over loopback: concurrent clients share one model call
and each gets its own answer (equal to local inference), a full queue is refused with
``overloaded``, requests time out in the queue without being run, and the metrics are served
over HTTP and logged."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from gf_eval.trials import make_trial
from gf_policy.backend import PolicyObservation
from gf_policy.backends.remote import RemoteBackend, RemotePolicyError
from gf_policy.backends.vla import VLABackend
from gf_policy.server import BatchingConfig, PolicyServer, ServerThread
from gf_policy.vla import VLAInference
from gf_policy.vla.testing import save_tiny_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

CLIENTS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batching_ckpt")
    return save_tiny_checkpoint(out, [make_trial("Val", i).instruction for i in range(5)], action_horizon=5)


@pytest.fixture(scope="module")
def policy(checkpoint) -> VLAInference:
    return VLAInference.from_pretrained(checkpoint)


def observation(index: int, step: int = 0) -> PolicyObservation:
    rng = np.random.default_rng([index, step])
    return PolicyObservation(trial=make_trial("Val", index), step=step, proprio=rng.normal(0, 0.2, 7).astype(np.float32),
                             image=rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))


class GatedPolicy:
    """A policy whose model calls wait until the test opens the gate (to hold requests in the queue)."""

    def __init__(self, policy: VLAInference):
        self.policy, self.model = policy, policy.model
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0

    def predict_batch(self, *args, **kwargs):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.policy.predict_batch(*args, **kwargs)


def get_metrics(server: PolicyServer) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as reply:
        return json.loads(reply.read())


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_concurrent_clients_share_one_model_call_and_get_their_own_answers(policy, checkpoint):
    # A batch closes as soon as it holds max_batch observations, so with a long max_wait the four
    # concurrent requests form exactly one batch, whatever the thread timing.
    batching = BatchingConfig(max_batch=CLIENTS, max_wait_ms=20_000)
    local = VLABackend(str(checkpoint), seed=3)
    observations = [observation(i, step=i) for i in range(CLIENTS)]
    with ServerThread(PolicyServer(policy, "127.0.0.1", 0, batching=batching)) as thread:
        clients = [RemoteBackend(thread.server.url, seed=3, timeout_s=60) for _ in range(CLIENTS)]
        with ThreadPoolExecutor(CLIENTS) as pool:
            plans = list(pool.map(lambda pair: pair[0].act(pair[1]), zip(clients, observations)))
        metrics = get_metrics(thread.server)
        for client in clients:
            client.close()
    assert metrics["batch_size_histogram"] == {str(CLIENTS): 1}
    assert metrics["requests"] == CLIENTS and metrics["batches"] == 1 and metrics["mean_batch_size"] == CLIENTS
    for plan, obs in zip(plans, observations):
        # the same noise seed per observation: batching must not mix answers up
        np.testing.assert_allclose(plan.actions, local.act(obs).actions, atol=1e-5)
    assert all(metrics["latency_ms"][p] is not None for p in ("p50", "p99"))
    assert metrics["latency_ms"]["p99"] >= metrics["latency_ms"]["p50"] >= metrics["queue_wait_ms"]["p50"]


def test_batching_off_runs_one_observation_per_call(policy):
    with ServerThread(PolicyServer(policy, "127.0.0.1", 0, batching=BatchingConfig(max_batch=1))) as thread:
        clients = [RemoteBackend(thread.server.url, timeout_s=60) for _ in range(3)]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda pair: pair[0].act(observation(pair[1])), zip(clients, range(3))))
        metrics = get_metrics(thread.server)
    assert metrics["batch_size_histogram"] == {"1": 3} and metrics["requests"] == 3


def test_a_full_queue_refuses_requests_with_overloaded(policy):
    gated = GatedPolicy(policy)
    batching = BatchingConfig(max_batch=1, max_wait_ms=0, max_queue=1)
    with ServerThread(PolicyServer(gated, "127.0.0.1", 0, batching=batching)) as thread, ThreadPoolExecutor(2) as pool:
        running = pool.submit(RemoteBackend(thread.server.url, timeout_s=60).act, observation(0))
        assert gated.entered.wait(30)
        queued = pool.submit(RemoteBackend(thread.server.url, timeout_s=60).act, observation(1))
        wait_for(lambda: get_metrics(thread.server)["queue_depth"] == 1, "the second request to queue")
        refused = RemoteBackend(thread.server.url, timeout_s=60)
        with pytest.raises(RemotePolicyError, match=r"\(overloaded\): server overloaded: 1 requests already waiting"):
            refused.act(observation(2))
        gated.gate.set()
        assert running.result(60).actions.shape == queued.result(60).actions.shape == (5, 7)
        # the refused client is not broken: once the queue drains it is served
        assert refused.act(observation(2)).actions.shape == (5, 7)
        metrics = get_metrics(thread.server)
    assert metrics["overloaded"] == 1 and metrics["requests"] == 3


def test_a_request_that_times_out_in_the_queue_is_never_run(policy):
    gated = GatedPolicy(policy)
    batching = BatchingConfig(max_batch=1, max_wait_ms=0, request_timeout_s=60)
    with ServerThread(PolicyServer(gated, "127.0.0.1", 0, batching=batching)) as thread, ThreadPoolExecutor(1) as pool:
        running = pool.submit(RemoteBackend(thread.server.url, timeout_s=60).act, observation(0))
        assert gated.entered.wait(30)
        impatient = RemoteBackend(thread.server.url, timeout_s=60)
        # the request's own timeout_s (shorter than the server's) applies
        with pytest.raises(RemotePolicyError, match=r"\(timeout\): no answer within 0.2 s"):
            impatient.request({"type": "predict", "images": [observation(1).image], "instructions": ["x"],
                               "proprio": np.zeros((1, 7), np.float32), "seeds": [0], "timeout_s": 0.2})
        gated.gate.set()
        running.result(60)
        wait_for(lambda: get_metrics(thread.server)["queue_depth"] == 0, "the queue to drain")
        assert impatient.act(observation(2)).actions.shape == (5, 7)
        metrics = get_metrics(thread.server)
    # three requests, two model calls: the timed-out one was dropped, not computed
    assert gated.calls == 2 and metrics["timeouts"] == 1 and metrics["requests"] == 2


def test_metrics_over_websocket_and_in_the_log(policy, caplog):
    caplog.set_level(logging.INFO, logger="gf_policy.server.metrics")
    with ServerThread(PolicyServer(policy, "127.0.0.1", 0, metrics_log_s=0.05)) as thread:
        client = RemoteBackend(thread.server.url, timeout_s=60)
        client.act(observation(0))
        metrics = client.request({"type": "metrics"})
        wait_for(lambda: any("requests 1 in 1 batches" in r.getMessage() for r in caplog.records), "a metrics log line")
        client.close()
    assert metrics["type"] == "metrics" and metrics["requests"] == 1 and metrics["batch_size_histogram"] == {"1": 1}
    line = next(r.getMessage() for r in caplog.records if "requests 1 in 1 batches" in r.getMessage())
    assert "latency p50/p99" in line and "queue wait p50/p99" in line


def test_batching_settings_are_checked():
    with pytest.raises(ValueError, match="invalid batching settings"):
        BatchingConfig(max_batch=0)
    with pytest.raises(ValueError, match="invalid batching settings"):
        BatchingConfig(max_queue=0)
