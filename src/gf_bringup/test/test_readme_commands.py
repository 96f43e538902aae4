"""Every command the two READMEs show names a tool that is installed and options that it accepts.

The commands are read from the READMEs themselves (README.md's bash blocks, training/README.md's
inline commands), so a renamed option or graph argument fails here rather than in a user's shell:
- our console scripts exist in the venv, and every ``--option`` written is in that (sub)command's
  ``--help``;
- ``gf-launch GRAPH name:=value ...`` and ``ros2 launch PKG FILE name:=value ...`` are run as
  written with ``--print``, which resolves and type-checks every argument and exits before any
  node starts;
- ``make TARGET`` names a Makefile target, and the config files named exist.
Running them at full size is what the end-to-end tests do with small sizes.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
PROMPT = re.compile(r"^\s*[a-z]+\$\s+")  # "gpu$ ", "head$ ": which machine a line runs on
LAUNCH_FILES = {"sim_eval.launch.py": "sim_eval", "robot.launch.py": "robot", "demos.launch.py": "demos",
                "teleop_sim.launch.py": "teleop_sim", "robot_calibrate.launch.py": "robot_calibrate"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|\.\.\.|^\[")  # DIR, CKPT, ..., [optional]


def readme_bash_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = PROMPT.sub("", line)
            for part in re.split(r"\s+&&\s+", line):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(shlex.join(words))
    return commands


def training_readme_commands() -> list[str]:
    text = (ROOT / "training" / "README.md").read_text(encoding="utf-8")
    spans = re.findall(r"`((?:gf-[a-z0-9-]+|make) [^`]+)`", text)
    return [s.replace("\\|", "|") for s in spans]


def ours(command: str) -> bool:
    """Our tools and targets (set-up, ROS 2 CLI and Ray commands are other projects')."""
    words = shlex.split(command)
    tool = words[0].removeprefix(".venv/bin/")
    return tool.startswith("gf") or tool == "make" or words[:2] == ["ros2", "launch"]


ALL_COMMANDS = sorted(c for c in set(readme_bash_commands()) | set(training_readme_commands()) if ours(c))


@functools.lru_cache(maxsize=None)
def help_text(tool: str, sub: str) -> str:
    run = lambda *a: subprocess.run([str(BIN / tool), *a, "--help"], capture_output=True, text=True, timeout=120)  # noqa: E731
    proc = run(sub) if sub else run()
    if sub and proc.returncode != 0:  # not a subcommand: the tool's own help
        proc = run()
    assert proc.returncode == 0, f"{tool} {sub} --help: {proc.stderr[-1000:]}"
    return proc.stdout


def check_launch(graph: str, assignments: list[str], options: list[str]) -> None:
    proc = subprocess.run([str(BIN / "gf-launch"), graph, *options, *assignments, "--print"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"gf-launch {graph} {' '.join(assignments)}: {proc.stderr[-1500:]}"


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_a_readme_command_names_an_installed_tool_and_options_it_accepts(command):
    words = shlex.split(command)
    words[0] = tool = words[0].removeprefix(".venv/bin/")
    if tool == "make":
        targets = re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M)
        assert words[1] in targets, f"no Makefile target {words[1]!r}"
        return
    if tool == "ros2" and words[1] == "launch":
        graph = LAUNCH_FILES[words[3]]
        assert any((ROOT / "src" / words[2]).glob(f"launch/{words[3]}")), f"no launch file {words[2]}/{words[3]}"
        check_launch(graph, [w for w in words[4:] if ":=" in w], [])
        return
    assert (BIN / tool).exists(), f"{tool} is not installed in the venv"
    if tool == "gf-launch":
        graph = next(w for w in words[1:] if not w.startswith("-"))
        options = [w for w in words[1:] if w.startswith("--")]
        if "--show-args" in options:
            return check_launch(graph, [], ["--show-args"])
        assignments = [w for w in words[1:] if ":=" in w and not PLACEHOLDER.search(w.split(":=", 1)[1])]
        if "..." in words:  # a sketch of a command: check the arguments it names
            assignments = [a for a in assignments if "{" not in a]
        return check_launch(graph, assignments, options)
    sub = words[1] if len(words) > 1 and re.fullmatch(r"[a-z][a-z0-9-]*", words[1]) else ""
    helped = help_text(tool, sub)
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helped), f"{tool} {sub}: no option {option}"
    for word in words[1:]:
        if re.fullmatch(r"[\w/.-]+\.yaml", word) and not word.startswith(("/", "runs/", "demos/")):
            configs = ROOT / "training" / "gf_training" / "configs"
            assert (configs / word).exists() or (ROOT / word).exists(), f"{tool}: no config {word}"


def test_the_commands_were_found():
    """The extraction itself: a README rewrite that hides its commands from this test fails here."""
    tools = {shlex.split(c)[0].replace(".venv/bin/", "") for c in ALL_COMMANDS}
    assert {"make", "gf-launch", "gf-demos", "gf-replay", "gf-train", "gf-sweep", "gf-mini", "gf-fig3", "gf-data"} <= tools, tools
    assert len(ALL_COMMANDS) >= 40


# Small sizes for the walk: what a command's size argument becomes, by pattern.
SMALL = ((r"--episodes \d+", "--episodes 2 --image-size 64"), (r"trials:=\d+", "trials:=1"), (r" --loop", ""))


@pytest.mark.slow
def test_the_demonstrations_section_runs_as_written_with_small_sizes(tmp_path):
    """The README's demonstration commands, in order, in a fresh directory, with small sizes: each
    exits 0 on what the ones before it wrote (generate -> stats -> replay -> evaluate the replay).
    Commands with a placeholder the user fills in (SRC, DIR) are left to their own tests."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "gf-demos generate" in b)
    commands = [c for c in (shlex.split(line, comments=True) for line in block.splitlines()) if c]
    ran = []
    for words in commands:
        if any(re.fullmatch(r"[A-Z]+", w) or "{checkpoint: DIR}" in w for w in words):
            continue
        command = shlex.join([str(BIN / words[0].removeprefix(".venv/bin/")), *words[1:]])
        if "sim_eval" in words and not any(w.startswith("trials:=") for w in words):
            command += " trials:=1"
        for pattern, small in SMALL:
            command = re.sub(pattern, small, command)
        if "gf-replay" in command and " play " in command:
            command += " --rate 50"  # one pass at 50x: the walk checks it runs, not its pacing
        proc = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(words)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        ran.append(words[1])
    assert ran.count("generate") == 3 and {"stats", "sim", "play", "sim_eval"} <= set(ran), ran
