"""Helpers shared by the gf_teleop tests: synthetic episodes, processes, waiting."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

VENV_BIN = Path(sys.executable).parent


def exe(name: str) -> str:
    """Path of a console script of the workspace."""
    return shutil.which(name) or str(VENV_BIN / name)


def synthetic_arrays(steps: int = 6, size: tuple[int, int] = (24, 32), seed: int = 0):
    """Distinct images, proprio and in-range actions for a fabricated episode."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (steps, *size, 3), dtype=np.uint8)
    proprio = rng.normal(size=(steps, 7)).astype(np.float32)
    actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    return images, proprio, actions


@pytest.fixture
def demo_trial():
    from gf_eval.trials import make_trial

    return make_trial("Demo", 7, 0)


@pytest.fixture
def synthetic_demo(tmp_path, demo_trial):
    """A demo directory with one fabricated, complete, successful episode; returns (dir, arrays)."""
    from gf_teleop.importer import write_array_episode

    images, proprio, actions = synthetic_arrays()
    write_array_episode(tmp_path / "demos", images=images, proprio=proprio, actions=actions, trial=demo_trial,
                        success=True, operator="tester", source="test")
    return tmp_path / "demos", (images, proprio, actions)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
    """Stop a process started with start_new_session=True (and its children)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def helpers():
    """The helper functions of this conftest (test modules cannot import it by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(exe=exe, synthetic_arrays=synthetic_arrays, wait_for=wait_for, stop_process=stop_process)
