"""Workspace-wide test set-up: the project's runtime environment and an isolated ROS domain."""

from __future__ import annotations

import os

import pytest

from gf_bringup.runtime import configure_environment, random_domain_id

configure_environment()
# One ROS domain per test session, so parallel runs on one machine never see each other.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("GF_TEST_DOMAIN_ID") or str(random_domain_id())


@pytest.fixture
def fresh_domain(monkeypatch) -> str:
    """A ROS domain of its own for one test's processes (graphs that must not meet others)."""
    domain = str(random_domain_id())
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    return domain
