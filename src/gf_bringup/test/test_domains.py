"""Machine-wide ROS domain claims: project processes never pick a domain another one holds."""

from __future__ import annotations

import os
import subprocess
import sys

from gf_bringup import domains


def test_a_claimed_domain_is_not_handed_out_again_until_released(monkeypatch, tmp_path):
    monkeypatch.setattr(domains, "LOCK_DIR", tmp_path)
    monkeypatch.setattr(domains, "CANDIDATES", range(1, 4))
    claims = [domains.claim_domain(probe=False) for _ in range(3)]
    assert sorted(d for d, _ in claims) == [1, 2, 3]
    assert domains.lock_domain(2) is None
    os.close(claims[1][1])
    assert domains.claim_domain(probe=False)[0] == claims[1][0]


def test_a_domain_held_by_another_process_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(domains, "LOCK_DIR", tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gf_bringup import domains; from pathlib import Path;"
         f"domains.LOCK_DIR = Path({str(tmp_path)!r}); assert domains.lock_domain(7) is not None;"
         "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert domains.lock_domain(7) is None
        monkeypatch.setattr(domains, "CANDIDATES", range(7, 9))
        assert domains.claim_domain(probe=False)[0] == 8
    finally:
        holder.kill()
        holder.wait()
    assert domains.lock_domain(7) is not None  # released with the process
