"""Workspace-wide test set-up: the project's runtime environment and an isolated ROS domain."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import time

import pytest

from gf_bringup.domains import claim_domain
from gf_bringup.runtime import configure_environment

configure_environment()
# A shell starts background jobs (`nohup make test &`) with SIGINT ignored, and an ignored signal
# stays ignored across exec: every tool a test starts would then shrug off the Ctrl-C that the
# tests of Ctrl-C handling send it, and hang. Tests run with Ctrl-C working as in a terminal;
# a handler (unlike SIG_IGN) is reset to the default in the children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# One ROS domain per test session, so parallel runs on one machine never see each other: its
# lock (gf_bringup.domains) keeps other test sessions and gf-launch runs off it until we exit.
if os.environ.get("GF_TEST_DOMAIN_ID"):
    os.environ["ROS_DOMAIN_ID"] = os.environ["GF_TEST_DOMAIN_ID"]
else:
    _SESSION_DOMAIN, _SESSION_LOCK = claim_domain(probe=False)
    os.environ["ROS_DOMAIN_ID"] = str(_SESSION_DOMAIN)


@pytest.fixture
def fresh_domain(monkeypatch) -> str:
    """A ROS domain of its own for one test's processes (graphs that must not meet others)."""
    domain, lock = claim_domain(probe=False)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    yield str(domain)
    os.close(lock)


def output_when_ended(proc: subprocess.Popen, timeout: float) -> str:
    """The output of ``proc`` (started with ``stdout=PIPE, text=True``), which must end within
    ``timeout`` s. One that hangs is asked for its threads' stacks (SIGUSR1: the tool registers
    ``faulthandler`` for it), killed, and the test fails with them: a hung process never outlives
    its test, where it would publish into the next test that is given the same ROS domain."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        proc.kill()
        output = proc.communicate()[0]
        pytest.fail(f"{proc.args[:3]} did not end within {timeout:.0f} s; its output and stacks:\n{output[-6000:]}")


@pytest.fixture
def ended():
    """``ended(proc, timeout)``: see ``output_when_ended``."""
    return output_when_ended


# pytest-timeout ends a hung test by raising in it once; if the test's clean-up then hangs as
# well (a thread join, a process that ignores its signal), the run would sit silent until the CI
# limit. So past a test's timeout plus this grace, every thread's stack goes to the real stderr
# and the run ends with a failure.
HANG_GRACE_S = 300.0
_REAL_STDERR = pytest.StashKey[int]()


def pytest_configure(config) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        config.stash[_REAL_STDERR] = os.dup(2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ARG001
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0] if marker and marker.args else
                    item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)
    if timeout > 0:
        faulthandler.dump_traceback_later(timeout + HANG_GRACE_S, exit=True, file=item.config.stash[_REAL_STDERR])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
