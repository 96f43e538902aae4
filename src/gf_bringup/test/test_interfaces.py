"""Every gf_interfaces message and the ResetTrial service survive a trip to another process over DDS."""

import importlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from gf_bringup.rosutil import reliable_qos

MESSAGES = ["ActionChunk", "EeState", "EmojiCard", "EmojiLayout", "Trial", "EpisodeStatus", "TrialResult", "SimState"]

ECHO = """
import importlib, sys, time, rclpy
from gf_bringup.rosutil import reliable_qos
from gf_interfaces.srv import ResetTrial
rclpy.init()
node = rclpy.create_node("echo")
pubs = {}
for name in sys.argv[1:]:
    cls = getattr(importlib.import_module("gf_interfaces.msg"), name)
    pubs[name] = node.create_publisher(cls, f"/echo/out/{name}", reliable_qos())
    node.create_subscription(cls, f"/echo/in/{name}", (lambda n: lambda m: pubs[n].publish(m))(name), reliable_qos())
def reset(req, resp):
    resp.ok, resp.message = True, "reset " + req.trial.trial_id + " " + req.trial.layout.cards[1].character
    return resp
node.create_service(ResetTrial, "reset_trial", reset)
print("ready", flush=True)
end = time.time() + 60
while time.time() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
"""


def populated(cls, rng, depth=0):
    """An instance of a rosidl message class with every field set to a non-default value."""
    msg = cls()
    for name, typ in msg.get_fields_and_field_types().items():
        value = getattr(msg, name)
        if typ == "string":
            setattr(msg, name, f"{name}-{rng.integers(1000)}-ü😀")
        elif typ == "boolean":
            setattr(msg, name, True)
        elif typ == "float":  # float32 on the wire: use a value float32 represents exactly
            setattr(msg, name, float(np.float32(rng.normal())))
        elif typ == "double":
            setattr(msg, name, float(rng.normal()))
        elif typ.startswith(("uint", "int", "octet")):
            setattr(msg, name, int(rng.integers(1, 100)))
        elif typ.startswith(("sequence<float", "float[")) or typ.startswith(("sequence<double", "double[")):
            n = len(value) if "[" in typ else 5
            setattr(msg, name, rng.normal(size=n).astype(np.float32 if "float" in typ else np.float64).tolist())
        elif typ.startswith("sequence<") and "/" in typ:
            inner = typ[len("sequence<"):-1].split(",")[0]
            pkg, _, sub = inner.partition("/")
            sub_cls = getattr(importlib.import_module(f"{pkg}.msg"), sub)
            setattr(msg, name, [populated(sub_cls, rng, depth + 1) for _ in range(3)])
        elif "/" in typ:
            pkg, _, sub = typ.partition("/")
            sub_cls = getattr(importlib.import_module(f"{pkg}.msg"), sub)
            setattr(msg, name, populated(sub_cls, rng, depth + 1))
    return msg


@pytest.fixture
def echo_process():
    proc = subprocess.Popen([sys.executable, "-c", ECHO, *MESSAGES], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def test_every_message_and_the_service_round_trip_between_processes(echo_process):
    import gf_interfaces.msg as msgs
    from gf_interfaces.srv import ResetTrial

    rng = np.random.default_rng(0)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("tester", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        sent, received, pubs = {}, {}, {}
        for name in MESSAGES:
            cls = getattr(msgs, name)
            sent[name] = populated(cls, rng)
            pubs[name] = node.create_publisher(cls, f"/echo/in/{name}", reliable_qos())
            node.create_subscription(cls, f"/echo/out/{name}", (lambda n: lambda m: received.setdefault(n, m))(name), reliable_qos())
        deadline = time.time() + 30
        while len(received) < len(MESSAGES) and time.time() < deadline:
            for name, pub in pubs.items():
                if name not in received:
                    pub.publish(sent[name])
            executor.spin_once(timeout_sec=0.1)
        assert set(received) == set(MESSAGES)
        for name in MESSAGES:
            assert received[name] == sent[name], name

        client = node.create_client(ResetTrial, "reset_trial")
        assert client.wait_for_service(timeout_sec=10)
        request = ResetTrial.Request(trial=sent["Trial"])
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=10)
        response = future.result()
        assert response.ok
        assert response.message == f"reset {sent['Trial'].trial_id} {sent['Trial'].layout.cards[1].character}"
    finally:
        rclpy.shutdown(context=context)
