"""`gf doctor`: check that this machine can run the workspace, and say what is missing.

Checks are plain functions registered under the ``gf.doctor`` entry-point group, so each
package contributes the checks for what it needs (ROS 2 here; fonts in gf_eval; Vulkan,
ManiSkill and robot assets in gf_sim_bridge; the model stack in gf_policy). A check returns a
one-line detail on success and raises ``DoctorError`` (or any exception) naming what is
missing and how to fix it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from gf_bringup.keystore import SecureNetworkError, fastdds_security_support
from gf_bringup.runtime import configure_environment, random_domain_id


class DoctorError(RuntimeError):
    """A failed check; the message says what is missing and how to fix it."""


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


def registered_checks() -> list[tuple[str, Callable[[], str]]]:
    """All checks of the installed packages, in a stable order."""
    found = sorted(entry_points(group="gf.doctor"), key=lambda e: (e.value.split(":")[0], e.name))
    return [(e.name, e.load()) for e in found]


def run_checks(only: list[str] | None = None) -> list[CheckResult]:
    results = []
    for name, check in registered_checks():
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            detail, ok = check(), True
        except Exception as exc:  # noqa: BLE001 - every failure becomes a report line
            detail, ok = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DoctorError) else str(exc), False
        results.append(CheckResult(name, ok, str(detail), time.perf_counter() - start))
    return results


def run_python(code: str, timeout: float = 120.0, env: dict | None = None) -> str:
    """Run a snippet in a fresh interpreter (a crash in a native library cannot take us down)."""
    import os

    child_env = dict(os.environ if env is None else env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=child_env
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise DoctorError(tail or f"exit code {proc.returncode}")
    return proc.stdout.strip()


# --- checks owned by gf_bringup ------------------------------------------------------------

_ECHO = """
import sys, time, rclpy
from gf_interfaces.msg import Trial
rclpy.init()
node = rclpy.create_node("gf_doctor_echo")
pub = node.create_publisher(Trial, "/gf_doctor/pong", 10)
def echo(msg):
    msg.instruction = "pong: " + msg.instruction
    pub.publish(msg)
node.create_subscription(Trial, "/gf_doctor/ping", echo, 10)
print("ready", flush=True)
end = time.time() + 30
while time.time() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
"""


def check_ros_round_trip() -> str:
    """rclpy + gf_interfaces: a Trial message goes to another process over DDS and back."""
    import os

    configure_environment()
    os.environ.setdefault("ROS_DOMAIN_ID", str(random_domain_id()))
    env = dict(os.environ)
    try:
        import rclpy

        from gf_interfaces.msg import Trial
    except ImportError as exc:
        raise DoctorError(f"cannot import rclpy/gf_interfaces ({exc}); run scripts/setup.sh") from exc
    child = subprocess.Popen([sys.executable, "-c", _ECHO], env=env, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            raise DoctorError("the echo process did not start (rclpy or gf_interfaces broken)")
        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node("gf_doctor", context=context)
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        replies = []
        node.create_subscription(Trial, "/gf_doctor/pong", lambda m: replies.append(m), 10)
        pub = node.create_publisher(Trial, "/gf_doctor/ping", 10)
        start = time.perf_counter()
        while not replies and time.perf_counter() - start < 15:
            pub.publish(Trial(trial_id="doctor", instruction="ping"))
            executor.spin_once(timeout_sec=0.1)
        elapsed = time.perf_counter() - start
        node.destroy_node()
        rclpy.shutdown(context=context)
        if not replies:
            raise DoctorError("no reply over DDS within 15 s (Fast DDS profile / discovery broken?)")
        if replies[0].instruction != "pong: ping":
            raise DoctorError(f"garbled reply {replies[0].instruction!r}")
        return (f"Trial message round trip in {elapsed * 1000:.0f} ms "
                f"(domain {env['ROS_DOMAIN_ID']}, {env['GF_NETWORK']} profile)")
    finally:
        child.kill()
        child.wait()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="gf doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run only these checks (names as printed)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    configure_environment()
    if args.list:
        for name, check in registered_checks():
            print(f"{name:18s} {(check.__doc__ or '').strip().splitlines()[0]}")
        return 0
    results = run_checks(args.only)
    for r in results:
        mark = "\033[32m ok \033[0m" if r.ok else "\033[31mFAIL\033[0m"
        print(f"[{mark}] {r.name:18s} {r.detail}  ({r.seconds:.1f} s)")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(results)} checks passed")
    return 0


def check_dds_security() -> str:
    """Whether SROS2 (DDS-Security) is possible here; signed commands work either way."""
    try:
        supported, where = fastdds_security_support()
    except SecureNetworkError as exc:
        raise DoctorError(str(exc)) from exc
    if supported:
        return (f"Fast DDS has DDS-Security (HAVE_SECURITY 1 in {where}): SROS2 enclaves can be used "
                "(network:=robot-secure keystore:=DIR)")
    return (f"Fast DDS without DDS-Security (HAVE_SECURITY 0 in {where}): no SROS2 here; on the robot network "
            "use signed action chunks (key_file:=..., see README 'Real robot')")
