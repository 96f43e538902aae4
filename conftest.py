"""Workspace-wide test set-up: the project's runtime environment and an isolated ROS domain."""

from __future__ import annotations

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
