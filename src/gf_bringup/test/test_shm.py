"""Fast DDS shared memory left by killed processes (gf_bringup.shm): gf doctor reports it, and
`gf shm-clean` removes a killed node's segment while a live node keeps its own."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gf_bringup import shm

BIN = Path(sys.executable).parent
NODE = """
import time, rclpy
from gf_bringup.runtime import configure_environment
configure_environment()
rclpy.init()
node = rclpy.create_node("shm_holder")
node.create_publisher(__import__("std_msgs.msg", fromlist=["String"]).String, "shm_test", 10)
print("up", flush=True)
time.sleep(120)
"""


def segments() -> set[str]:
    """The data segments (not lock files, not port queues) of every Fast DDS participant."""
    return {p.name for p in shm.SHM_DIR.iterdir() if p.name.startswith(shm.SEGMENT_PREFIXES)
            and not p.name.endswith("_el") and "_port" not in p.name}


def start_node() -> tuple[subprocess.Popen, set[str]]:
    before = segments()
    proc = subprocess.Popen([sys.executable, "-c", NODE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    deadline = time.monotonic() + 10
    while not segments() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, segments() - before


@pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="no /dev/shm")
def test_shm_clean_removes_a_killed_nodes_segment_and_keeps_a_live_ones(fresh_domain):
    killed, killed_segments = start_node()
    live, live_segments = start_node()
    try:
        assert killed_segments and live_segments
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_segments <= segments()  # SIGKILL: nobody removed it
        proc = subprocess.run([str(BIN / "gf"), "shm-clean"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "gf shm-clean:" in proc.stdout and "zombie segments cleaned" in proc.stdout
        assert not killed_segments & segments() and live_segments <= segments()
    finally:
        for p in (killed, live):
            p.kill()
            p.wait()


def test_doctor_asks_for_a_clean_up_when_the_leftovers_grow_large(tmp_path, monkeypatch):
    from gf_bringup.doctor import DoctorError

    (tmp_path / "fastrtps_0123").write_bytes(b"x" * 8192)
    (tmp_path / "fastrtps_0123_el").write_bytes(b"")
    (tmp_path / "unrelated").write_bytes(b"x" * 8192)
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    assert shm.segment_bytes(tmp_path) == (2, 8192)
    assert "2 Fast DDS shared-memory files" in shm.check_dds_shared_memory()
    monkeypatch.setattr(shm, "LARGE_BYTES", 4096)
    with pytest.raises(DoctorError, match="gf shm-clean"):
        shm.check_dds_shared_memory()
