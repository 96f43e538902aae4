"""Helpers for the driver/camera/robot-graph tests: node processes and an in-process ROS probe.

Every process started here gets the project's environment (root conftest: loopback-only DDS) and
the ROS domain of the fixture that started it; nothing connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import array
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gf_bringup import names
from gf_bringup.domains import claim_domain

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def module_domain():
    """A ROS domain for one test module (its processes and its probe), restored afterwards. It is
    claimed (gf_bringup.domains), so no other test session or gf-launch run takes it meanwhile."""
    old = os.environ.get("ROS_DOMAIN_ID")
    domain, lock = claim_domain(probe=False)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    yield os.environ["ROS_DOMAIN_ID"]
    os.close(lock)
    if old is None:
        os.environ.pop("ROS_DOMAIN_ID", None)
    else:
        os.environ["ROS_DOMAIN_ID"] = old


class NodeProcess:
    """A console-script node in its own process group, output collected for assertions."""

    def __init__(self, executable: str, *ros_args: str, name: str = ""):
        cmd = [str(BIN / executable)]
        if ros_args:
            cmd += ["--ros-args", *ros_args]
        self.name = name or executable
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the pump collect the last lines
                return text in self.output
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (a clean shutdown), then SIGKILL if it does not end in time; returns the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._thread.join(2.0)
        return self.proc.returncode


class Probe:
    """An in-process node that drives and watches the graph under test."""

    def __init__(self, driver: str = "/realman_driver"):
        import rclpy
        from std_msgs.msg import String

        from gf_bringup.rosutil import latched_qos, multi_threaded_executor, reliable_qos
        from gf_interfaces.msg import ActionChunk, EeState, EpisodeStatus, Trial
        from gf_interfaces.srv import Command

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("probe", context=self.context)
        self.cond = threading.Condition()
        self.ee: list[tuple[float, np.ndarray, float]] = []  # (header stamp in s, xyz, gripper fraction)
        self.status: dict = {}
        self.node.create_subscription(EeState, names.EE_STATE, self._on_ee, reliable_qos())
        self.node.create_subscription(String, f"{driver}/status", self._on_status, latched_qos(1))
        self.pub_chunk = self.node.create_publisher(ActionChunk, names.ACTION_CHUNK, reliable_qos())
        self.pub_trial = self.node.create_publisher(Trial, names.TRIAL, latched_qos(1))
        self.pub_episode = self.node.create_publisher(EpisodeStatus, names.EPISODE_STATUS, latched_qos(1))
        self.srv = Command
        self.clients = {n: self.node.create_client(Command, f"{driver}/{n}") for n in ("emergency_stop", "resume", "home")}
        self.ActionChunk, self.Trial, self.EpisodeStatus = ActionChunk, Trial, EpisodeStatus
        self.executor = multi_threaded_executor(2, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def now(self) -> float:
        """ROS time in seconds: the clock the driver stamps its states with (same machine)."""
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_ee(self, msg) -> None:
        p = msg.pose.position
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.cond:
            self.ee.append((stamp, np.array([p.x, p.y, p.z]), float(msg.proprio[6])))
            del self.ee[:-2000]
            self.cond.notify_all()

    def _on_status(self, msg) -> None:
        with self.cond:
            self.status = json.loads(msg.data)
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = 20.0, what: str = "") -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out waiting for {what or predicate}; status {self.status}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait(lambda: len(self.ee) > 3 and self.status.get("connected"), timeout, "driver connected and publishing")
        deadline = time.monotonic() + timeout
        while self.pub_chunk.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)

    def xyz(self) -> np.ndarray:
        with self.cond:
            return self.ee[-1][1].copy()

    def ee_since(self, t: float) -> list[tuple[float, np.ndarray, float]]:
        with self.cond:
            return [e for e in self.ee if e[0] >= t]

    def settle(self, still_for: float = 0.3, tol: float = 2e-4, timeout: float = 10.0) -> np.ndarray:
        """Wait until the EE has not moved more than ``tol`` for ``still_for`` s; return its position."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(still_for)
            window = self.ee_since(self.now() - still_for)
            if len(window) >= 3 and max(np.linalg.norm(e[1] - window[0][1]) for e in window) <= tol:
                return window[-1][1]
        raise AssertionError("the arm did not come to rest")

    def send(self, actions=None, trial_id: str = "test", **fields) -> None:
        """Publish one chunk; ``actions`` is (K, 7); ``fields`` override message fields (data, horizon, ...)."""
        actions = np.zeros((1, 7), np.float32) if actions is None else np.asarray(actions, dtype=np.float32)
        msg = self.ActionChunk(trial_id=trial_id, step_index=0, horizon=actions.shape[0], execute_steps=0,
                               action_dim=actions.shape[1], action_space="ee_delta_pose")
        msg.data = array.array("f", actions.reshape(-1).tobytes())
        for k, v in fields.items():
            setattr(msg, k, array.array("f", np.asarray(v, np.float32).tobytes()) if k == "data" else v)
        self.pub_chunk.publish(msg)

    def call(self, service: str, timeout: float = 30.0) -> bool:
        client = self.clients[service]
        assert client.wait_for_service(timeout_sec=10.0), f"{service} service missing"
        future = client.call_async(self.srv.Request())
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future.done(), f"{service} did not answer"
        return bool(future.result().success)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=10.0)
        self.thread.join(10.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def ros_tools():
    """The helper classes (test modules cannot import a conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(Probe=Probe, NodeProcess=NodeProcess)
