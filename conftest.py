"""Workspace-wide test set-up: the project's runtime environment and an isolated ROS domain."""

from __future__ import annotations

import os

import pytest

from gf_bringup.domains import claim_domain
from gf_bringup.runtime import configure_environment

configure_environment()
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
