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


def test_no_module_or_doc_points_outside_the_repository():
    """The repository explains itself (docs/architecture.md): no reader is sent to a design note
    that only exists beside some checkouts."""
    root = workspace_root()
    if root is None:
        pytest.skip("needs the source workspace")
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True).stdout.split()
    offenders = []
    for rel in tracked:
        path = root / rel
        if path.suffix not in (".py", ".md", ".yaml", ".txt", ".sh", ".xml", ".toml", ".cfg", "") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        if "DESIGN.md" in text and rel != "src/gf_bringup/test/test_lint.py":
            offenders.append(rel)
    assert offenders == []


def test_topic_names_are_written_only_in_the_names_module():
    """Relative names from gf_bringup.names, so that a namespace moves a whole graph."""
    root = workspace_root()
    if root is None:
        pytest.skip("needs the source workspace")
    import re

    literal = re.compile(r"""["'](/gf/[a-z_]+|/camera/(image_raw|camera_info)|/joint_states|/clock|/diagnostics)["']""")
    offenders = []
    for path in sorted((root / "src").rglob("*.py")) + sorted((root / "training").rglob("*.py")):
        if path.name == "names.py" or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if literal.search(line):
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert offenders == []
