"""The workspace on the real ROS 2 tooling: colcon, ``ros2 launch``, ``ros2 run`` / ``node``, Ctrl-C.

The README's "On a ROS 2 install" block is run word for word in a copy of the checkout, with the
launch / launch_ros / ros2cli / colcon that set-up installs from a wheel directory
(``GF_ROS2_TOOLS``, or ``../shared/ros2-tools`` next to the checkout). Every shell gets what a user's
shell has: the venv activated, a ROS domain of its own, the user's own DDS profile file.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gf_bringup.domains import claim_domain
from gf_bringup.graphs import load_graphs
from gf_bringup.names import SIM_STATE, recorded
from gf_bringup.runtime import profile_path, workspace_root

ROOT = workspace_root()
VENV = Path(sys.prefix)
MIRROR = ROOT.parent / "shared" / "ros2-tools" if ROOT else None
README_MARKER = "<!-- The block below is run word for word by src/gf_bringup/test/test_ros2_tooling.py. -->"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _require_tooling() -> None:
    if ROOT is None:
        pytest.skip("not running from the source workspace")
    if (VENV / "bin" / "ros2").exists() and (VENV / "bin" / "colcon").exists():
        return
    if MIRROR is not None and MIRROR.is_dir():
        pytest.fail(f"{MIRROR} exists but the ROS 2 tooling is not installed in {VENV}: run scripts/setup.sh")
    pytest.skip("the ROS 2 launch/CLI tooling is not installed in this venv (GF_ROS2_TOOLS=DIR scripts/setup.sh installs it)")


def readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert README_MARKER in text, "the README's tested ROS 2 block lost its marker"
    block = text.split(README_MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def readme_line(prefix: str) -> str:
    lines = [line for line in readme_block() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, readme_block())
    return lines[0]


class Shell:
    """Runs commands as a user's shell in the workspace copy would: venv active, install sourced."""

    def __init__(self, workdir: Path, domain: str, profile: Path):
        self.workdir = workdir
        self.env = {
            "PATH": os.defpath, "HOME": os.environ.get("HOME", str(workdir)), "LANG": "C.UTF-8",
            "ROS_DOMAIN_ID": domain, "FASTDDS_DEFAULT_PROFILES_FILE": str(profile),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOG_DIR": str(workdir / "ros_log"),
            "MS_ASSET_DIR": os.environ["MS_ASSET_DIR"],
        }
        self.prefix = f"source {shlex.quote(str(VENV / 'bin' / 'activate'))} && "
        self.started: list[subprocess.Popen] = []

    def script(self, command: str, sourced: bool = True) -> list[str]:
        source = "source install/setup.bash && " if sourced else ""
        return ["bash", "-c", self.prefix + source + command]

    def run(self, command: str, timeout: float, sourced: bool = True) -> subprocess.CompletedProcess:
        """``command`` to its end; one still running after ``timeout`` s fails the test (see ``ended``)."""
        proc = subprocess.Popen(self.script(command, sourced), cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.started.append(proc)
        out, err = ended(proc, timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self, command: str) -> subprocess.Popen:
        # Own session: SIGINT to the group is what a terminal's Ctrl-C does to its foreground job.
        proc = subprocess.Popen(self.script(command), cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.started.append(proc)
        return proc

    def kill_leftovers(self) -> None:
        """Whatever a failed test left running: it must not load the machine for the tests after it."""
        for proc in self.started:
            if proc.poll() is None:
                kill_tree(proc, signal.SIGKILL)
                proc.communicate()


def kill_tree(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to ``proc``'s process group and to every process below it (a node in a group of its own too)."""
    for pid in descendants(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def ended(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of ``proc``, which must end within ``timeout`` s. One that hangs is sent
    SIGTERM (each node then prints its threads' stacks), then killed with all it started, and the
    test fails with its output: a hung graph never outlives its test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc, signal.SIGTERM)
        time.sleep(3.0)
        kill_tree(proc, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[-1][-200:]!r} did not end within {timeout:.0f} s; its output:\n"
                    f"{(out or '')[-6000:]}\n{(err or '')[-3000:]}")
    return out or "", err or ""


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """A copy of the checkout built with the README's colcon line."""
    _require_tooling()
    work = tmp_path_factory.mktemp("colcon_ws")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    profile = work / "my_fastdds_profile.xml"  # the user's own profile: must reach the nodes unchanged
    shutil.copy(profile_path("loopback"), profile)
    domain, lock = claim_domain(probe=False)  # no other test session or gf-launch run may take it meanwhile
    sh = Shell(work, str(domain), profile)
    try:
        build = sh.run(readme_line("python -m colcon build"), timeout=900, sourced=False)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        assert (work / readme_line("source install/").split()[1]).is_file()
        yield sh
    finally:
        sh.kill_leftovers()
        os.close(lock)


def clean_run_problems(output: str) -> list[str]:
    """Lines of a launch log that would tell a user something crashed."""
    bad = ("Traceback", "process has died", "Exception ignored", "KeyboardInterrupt", "Failed to publish log message")
    return [line for line in output.splitlines() if any(b in line for b in bad)]


def descendants(root: int) -> list[int]:
    """Pids of every process below ``root``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def node_pids(root: int) -> dict[str, int]:
    """Node name -> pid of the ROS nodes below ``root`` (by their ``__node:=`` remap)."""
    return {arg.split(b":=", 1)[1].decode(): pid for pid in descendants(root) for arg in cmdline(pid)
            if arg.startswith(b"__node:=")}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_colcon_build_installs_every_node_for_ros2_run(shell):
    listed = shell.run("ros2 pkg executables", timeout=120)
    assert listed.returncode == 0, listed.stderr
    executables = {tuple(line.split()) for line in listed.stdout.splitlines()}
    for graph in load_graphs().values():
        for node in graph.nodes:
            assert (node.package, node.executable) in executables, (graph.name, node.executable)
    help_text = shell.run("ros2 run gf_eval gf-eval --help", timeout=120)
    assert help_text.returncode == 0 and "policy_timeout_s" in help_text.stdout


def interrupt_after_first_results(shell: Shell, command: str, results_file: Path, trials: int) -> int:
    """Start ``command``, press Ctrl-C once two trials are recorded; check it stopped cleanly and said
    where it stands. Returns the number of recorded trials."""
    proc = shell.start(command)
    deadline = time.monotonic() + 300
    while len(results(results_file)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    output = ended(proc, 120)[0]
    recorded = len(results(results_file))
    assert proc.returncode == 0, output[-3000:]
    assert clean_run_problems(output) == [], output[-3000:]
    stopped = [line for line in output.splitlines() if "evaluation stopped before the end" in line]
    assert len(stopped) == 1 and f"{recorded} of {trials} trials are recorded" in stopped[0], output[-3000:]
    assert "process has finished cleanly" in output
    return recorded


def test_sim_eval_stops_cleanly_on_ctrl_c_and_the_same_command_resumes_to_a_report(shell):
    command = readme_line("ros2 launch gf_eval sim_eval.launch.py")
    out_dir = shell.workdir / "outputs" / "sim_eval" / "oracle"
    recorded = interrupt_after_first_results(shell, command, out_dir / "results.jsonl", 60)
    rerun = shell.run(command, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert f"{recorded} already in" in rerun.stdout
    assert clean_run_problems(rerun.stdout + rerun.stderr) == [], rerun.stdout[-3000:]
    trial_ids = [r["trial_id"] for r in results(out_dir / "results.jsonl")]
    assert len(trial_ids) == len(set(trial_ids)) == 60
    assert (out_dir / "report" / "summary.md").is_file()


def test_robot_dry_run_stops_cleanly_on_ctrl_c_and_completes_its_trials_with_the_users_environment(shell):
    command = readme_line("ros2 launch gf_realman_driver robot.launch.py")
    out_dir = shell.workdir / "outputs" / "touch_eval" / "touch_oracle_dry_run"
    interrupt_after_first_results(shell, command, out_dir / "results.jsonl", 3)
    proc = shell.start(command)
    seen: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(seen) < 4 and time.monotonic() < deadline:
        for name, pid in node_pids(proc.pid).items():
            try:
                seen.setdefault(name, environ(pid))
            except OSError:
                pass
        time.sleep(0.1)
    output = ended(proc, 600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert clean_run_problems(output) == [], output[-3000:]
    assert set(seen) == {"realman_driver", "camera", "policy", "touch_eval"}, (sorted(seen), output[-2000:])
    users_prefixes = shell.run("echo $AMENT_PREFIX_PATH", timeout=60).stdout.strip()  # what the user's shell has
    assert users_prefixes.startswith(str(shell.workdir / "install"))
    for name, env in seen.items():
        assert env["ROS_DOMAIN_ID"] == shell.env["ROS_DOMAIN_ID"], name
        assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == shell.env["FASTDDS_DEFAULT_PROFILES_FILE"], name
        assert env["AMENT_PREFIX_PATH"] == users_prefixes, name
    assert len(results(out_dir / "results.jsonl")) == 3
    assert (out_dir / "report" / "summary.md").is_file()


def test_ros2_launch_refuses_robot_secure_in_one_line_where_the_dds_has_no_security(shell):
    from gf_bringup.keystore import create_keystore, fastdds_security_support

    if fastdds_security_support()[0]:
        pytest.skip("this DDS has DDS-Security: robot-secure can start (gf_realman_driver's test_robot_enclaves)")
    keystore = shell.workdir / "keystore"
    create_keystore(keystore, domain=int(shell.env["ROS_DOMAIN_ID"]))
    proc = shell.run(f"ros2 launch gf_realman_driver robot.launch.py dry_run:=true network:=robot-secure keystore:={keystore}",
                     timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "robot-secure needs a DDS with DDS-Security" in output, output[-3000:]
    assert "process started" not in output, output[-3000:]  # refused before any node started


def test_teleop_graph_starts_and_answers_ros2_node_list(shell):
    proc = shell.start(f"ros2 launch gf_teleop teleop_sim.launch.py demo_dir:={shell.workdir / 'teleop_demos'}")
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and "sim_bridge" not in node_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        expected, listed = {"/sim_bridge", "/eval", "/recorder"}, set()
        for _ in range(10):  # nodes still starting up appear on a later call
            nodes = shell.run('eval "$(ros2 run gf_bringup gf env)" && ros2 node list --no-daemon --spin-time 3', timeout=120)
            assert nodes.returncode == 0, nodes.stderr
            listed = set(nodes.stdout.split())
            if expected <= listed:
                break
        assert expected <= listed, listed
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        output = ended(proc, 120)[0]
    assert proc.returncode == 0 and clean_run_problems(output) == [], output[-3000:]


def test_demos_launch_records_the_scripted_experts_episodes_with_ground_truth(shell):
    demo_dir = shell.workdir / "demos"
    done = shell.run(f"ros2 launch gf_teleop demos.launch.py demo_dir:={demo_dir} trials:=2 record_ground_truth:=true",
                     timeout=600)
    assert done.returncode == 0 and clean_run_problems(done.stdout + done.stderr) == [], done.stdout[-3000:]
    manifest = [json.loads(line) for line in (demo_dir / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 2 and all(entry["success"] for entry in manifest), manifest
    for entry in manifest:  # record_ground_truth:=true reached the recorder through ros2 launch
        info = yaml.safe_load((demo_dir / entry["bag"] / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        counts = {t["topic_metadata"]["name"]: t["message_count"] for t in info["topics_with_message_count"]}
        assert counts.get(recorded(SIM_STATE), 0) > 10, counts


def test_ros2_topic_echo_reads_a_running_graph(shell):
    check = shell.run("python -c 'import rosidl_runtime_py'", timeout=60, sourced=False)
    if check.returncode != 0:
        pytest.skip("ros2 topic needs rosidl_runtime_py, which has no PyPI wheel and is not in the tooling "
                    "directory: 'Failed to load entry point ... No module named rosidl_runtime_py'")
    proc = shell.start(readme_line("ros2 launch gf_eval sim_eval.launch.py").replace("trials:=20", "trials:=5")
                       + f" output_dir:={shell.workdir / 'outputs' / 'echo'}")
    try:
        echo = shell.run('eval "$(ros2 run gf_bringup gf env)" && ros2 topic echo /gf/episode_status --once', timeout=120)
        assert echo.returncode == 0 and "trial_id:" in echo.stdout, echo.stdout + echo.stderr
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        ended(proc, 120)
