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


def _package_imports(root: Path) -> dict[str, tuple[set[str], dict[str, set[str]]]]:
    """Per ROS package: its declared run dependencies and the ROS packages its modules import."""
    import ast
    import re

    ros_python = {"rclpy", "ament_index_python", "launch", "launch_ros", "rosidl_runtime_py", "rcl_interfaces", "builtin_interfaces"}
    packages = {p.parent.name: p.parent for p in (root / "src").glob("*/package.xml")}
    out = {}
    for name, directory in packages.items():
        declared = set(re.findall(r"<(?:depend|exec_depend)>([^<]+)</", (directory / "package.xml").read_text()))
        used: dict[str, set[str]] = {}
        for module in (directory / name).rglob("*.py") if (directory / name).is_dir() else ():
            for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported = [node.module]
                else:
                    continue
                for top in {m.split(".")[0] for m in imported} - {name}:
                    if top in packages or top.endswith("_msgs") or top in ros_python:
                        used.setdefault(top, set()).add(str(module.relative_to(root)))
        out[name] = (declared, used)
    return out


def test_every_package_declares_the_ros_packages_its_code_imports():
    root = workspace_root()
    if root is None:
        pytest.skip("needs the source workspace")
    undeclared = {name: {dep: sorted(where) for dep, where in used.items() if dep not in declared}
                  for name, (declared, used) in _package_imports(root).items()}
    assert {name: deps for name, deps in undeclared.items() if deps} == {}


def test_workspace_packages_depend_in_one_direction():
    """No cycle among the gf_* packages: ROS-free cores at the bottom, nodes and tools above."""
    root = workspace_root()
    if root is None:
        pytest.skip("needs the source workspace")
    graph = {name: {d for d in declared if d.startswith("gf_")} for name, (declared, _) in _package_imports(root).items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for dep in graph.get(name, ()):
                visit(dep, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())
