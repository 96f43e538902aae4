"""Fast DDS shared-memory segments a killed process left in /dev/shm, and cleaning them.

Every participant with the shared-memory transport maps a segment (16 MiB with the workspace's
profiles) in /dev/shm. A process that exits normally removes its segment; one killed with
SIGKILL (a test timeout, an OOM kill, a hung node ended by launch) cannot, and the segment keeps
its memory (tmpfs is RAM) until somebody removes it. Fast DDS's own tool tells the zombies from
the segments in use by their lock files; ``gf shm-clean`` runs it with this interpreter (its
``python3`` may lack psutil), and ``gf doctor`` reports when the leftovers grow large.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SHM_DIR = Path("/dev/shm")
SEGMENT_PREFIXES = ("fastrtps_", "fastdds_")
LARGE_BYTES = 1 << 30  # beyond this, gf doctor asks for a clean-up


def segment_bytes(shm_dir: Path | None = None) -> tuple[int, int]:
    """(files, bytes of memory they hold) of Fast DDS in ``shm_dir`` (/dev/shm), in use or not."""
    shm_dir = SHM_DIR if shm_dir is None else shm_dir
    count = size = 0
    for path in shm_dir.iterdir() if shm_dir.is_dir() else ():
        if path.name.startswith(SEGMENT_PREFIXES) and path.is_file():
            count += 1
            size += path.stat().st_blocks * 512  # what tmpfs holds, not the sparse length
    return count, size


def clean_command() -> list[str]:
    """Fast DDS's ``fastdds shm clean``, run by this interpreter when the tool ships beside it."""
    tool = Path(sys.prefix) / "tools" / "fastdds" / "fastdds.py"
    if tool.is_file():
        return [sys.executable, str(tool), "shm", "clean"]
    found = shutil.which("fastdds")
    if found is None:
        raise FileNotFoundError("Fast DDS's `fastdds` tool is not installed (pip wheels: tools/fastdds in the venv; "
                                "ROS 2: the fastdds package)")
    return [found, "shm", "clean"]


def clean() -> str:
    """Remove the zombie segments (those of processes that are gone); returns the tool's report."""
    proc = subprocess.run(clean_command(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr or proc.stdout).strip() or f"fastdds shm clean: exit code {proc.returncode}")
    return proc.stdout.strip()


def check_dds_shared_memory() -> str:
    """gf doctor: how much memory Fast DDS segments hold in /dev/shm."""
    from gf_bringup.doctor import DoctorError

    count, size = segment_bytes()
    text = f"{count} Fast DDS shared-memory files in {SHM_DIR}, {size / 2**20:.0f} MiB"
    if size > LARGE_BYTES:
        raise DoctorError(f"{text}: most are likely left by killed processes; `gf shm-clean` removes those no process uses")
    return text


def main(argv: list[str] | None = None) -> int:
    """``gf shm-clean``."""
    import argparse

    argparse.ArgumentParser(prog="gf shm-clean", description=__doc__.split("\n\n")[0]).parse_args(argv)
    before = segment_bytes()
    try:
        report = clean()
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"gf shm-clean: {exc}", file=sys.stderr)
        return 1
    after = segment_bytes()
    print(report)
    print(f"gf shm-clean: {before[0]} -> {after[0]} files, {before[1] / 2**20:.0f} -> {after[1] / 2**20:.0f} MiB in {SHM_DIR}")
    return 0
