"""The workspace's Python passes ruff (pyflakes errors, import order, bugbear) with ruff.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gf_bringup.runtime import workspace_root


def test_ruff_is_clean():
    root = workspace_root()
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if root is None or not Path(ruff).exists():
        pytest.skip("needs the source workspace and ruff")
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "src", "training", "conftest.py"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
