"""SROS2 enclaves of the robot graph (gf_bringup.enclaves, gf_bringup.keystore, network:=robot-secure).

* Each node of the running robot graph (dry run, over DDS on loopback) creates only endpoints that
  its enclave's generated permissions grant: a node that publishes or reads a topic its role does
  not allow fails here, so the permissions cannot drift from the code.
* robot-secure mode refuses, in one line and before any node starts, where the DDS has no
  DDS-Security (the ROS 2 pip wheels: this machine).
* Where the DDS has security, the secured graph runs its trials and an unenrolled publisher of
  action chunks is never matched with the driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gf_bringup import names
from gf_bringup.enclaves import ROLES, endpoint_violations
from gf_bringup.keystore import create_keystore, fastdds_security_support
from gf_bringup.runtime import profile_path
from gf_realman_driver.graphs import ROBOT, ROBOT_CALIBRATE

BIN = Path(sys.executable).parent
CHUNK = names.recorded(names.ACTION_CHUNK)
DDS_SECURITY, DDS_HEADER = fastdds_security_support()


def launch_robot(*assignments: str) -> subprocess.Popen:
    cmd = [str(BIN / "gf-launch"), "robot", "dry_run:=true", "auto_confirm:=true", "console:=disabled", *assignments]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def graph_endpoints(expected_nodes: set[str], ready, timeout: float = 90.0) -> dict[str, dict[str, list[str]]]:
    """Node name -> {"pub"|"sub"|"srv"|"cli": fully qualified names}, as the ROS graph reports
    them, once ``ready(endpoints)`` holds (nodes create some endpoints only when they are set up)
    and two polls a second apart agree: discovery announces a node's endpoints one by one, so a
    single poll can hold its publisher and not yet the subscriptions created beside it."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("enclave_probe", context=context)
    try:
        deadline = time.monotonic() + timeout
        previous = None
        while True:
            seen = {}
            for name, ns in node.get_node_names_and_namespaces():
                if name in expected_nodes:
                    seen[name] = {
                        "pub": [t for t, _ in node.get_publisher_names_and_types_by_node(name, ns)],
                        "sub": [t for t, _ in node.get_subscriber_names_and_types_by_node(name, ns)],
                        "srv": [t for t, _ in node.get_service_names_and_types_by_node(name, ns)],
                        "cli": [t for t, _ in node.get_client_names_and_types_by_node(name, ns)],
                    }
            if set(seen) == expected_nodes and ready(seen):
                if seen == previous:
                    return seen
                previous = seen
                time.sleep(1.0)
                continue
            previous = None
            assert time.monotonic() < deadline, f"graph not complete after {timeout} s: {sorted(seen)}"
            time.sleep(0.5)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def stop(proc: subprocess.Popen) -> str:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def tiny_vla_checkpoint(out: Path) -> Path:
    # the helper of gf_policy's test_backend_vla.py (test modules are not importable by name here)
    import importlib.util

    helper = Path(__file__).parents[2] / "gf_policy" / "test" / "test_backend_vla.py"
    spec = importlib.util.spec_from_file_location("_vla_helpers", helper)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_checkpoint(out)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["touch_oracle", "vla"])  # without and with the camera image
def test_every_node_of_the_robot_graph_uses_only_what_its_enclave_grants(tmp_path, fresh_domain, policy):
    enclave_of = {spec.name: spec.enclave for spec in ROBOT.nodes}
    assert all(enclave_of.values()) and set(enclave_of.values()) <= set(ROLES)
    extra = [f"backend_args:={{checkpoint: {tiny_vla_checkpoint(tmp_path / 'ckpt')}}}"] if policy == "vla" else []
    proc = launch_robot(f"policy:={policy}", *extra, "trials:=30", f"output_dir:={tmp_path / 'touch'}")
    try:
        def ready(seen):  # the policy subscribes once its backend is loaded; the eval node's clients exist
            status = names.recorded(names.EPISODE_STATUS)  # the policy's last subscription
            return (CHUNK in seen["policy"]["pub"] and status in seen["policy"]["sub"]
                    and bool(seen["touch_eval"]["cli"]))

        seen = graph_endpoints(set(enclave_of), ready)
    finally:
        out = stop(proc)
    assert (names.recorded(names.IMAGE) in seen["policy"]["sub"]) is (policy == "vla"), out[-3000:]
    assert CHUNK in seen["realman_driver"]["sub"] and CHUNK in seen["policy"]["pub"]
    for name, endpoints in seen.items():
        assert endpoint_violations(ROLES[enclave_of[name]], endpoints) == [], endpoints


def test_the_calibration_graph_has_an_enclave_for_each_node():
    assert {spec.name: spec.enclave for spec in ROBOT_CALIBRATE.nodes} == {"realman_driver": names.ENCLAVE_DRIVER,
                                                                          "calibrate": names.ENCLAVE_CALIBRATE}


@pytest.mark.skipif(DDS_SECURITY, reason=f"this DDS has DDS-Security ({DDS_HEADER}): robot-secure can start")
def test_robot_secure_refuses_in_one_line_where_the_dds_has_no_security(tmp_path, fresh_domain):
    keystore = tmp_path / "keystore"
    create_keystore(keystore, domain=int(fresh_domain))
    proc = subprocess.run([str(BIN / "gf-launch"), "robot", "dry_run:=true", "network:=robot-secure",
                           f"keystore:={keystore}", f"output_dir:={tmp_path / 'touch'}"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "HAVE_SECURITY 0" in proc.stderr, proc.stderr
    assert "[realman_driver]" not in proc.stdout and not (tmp_path / "touch").exists()  # no node started
    # The driver on its own (started by hand or by ros2 launch) refuses the same way.
    driver = subprocess.run([str(BIN / "gf-realman-driver"), "--ros-args", "--enclave", names.ENCLAVE_DRIVER, "-p", "dry_run:=true"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                            env={**os.environ, "GF_NETWORK": "robot-secure", "ROS_SECURITY_KEYSTORE": str(keystore)})
    assert driver.returncode == 2 and driver.stderr.strip().count("\n") == 0, driver.stderr
    assert driver.stderr.startswith("gf-realman-driver: robot-secure needs a DDS with DDS-Security")


@pytest.mark.slow
@pytest.mark.skipif(not DDS_SECURITY, reason=f"SROS2 needs a DDS with DDS-Security; this Fast DDS has none "
                                             f"(HAVE_SECURITY 0 in {DDS_HEADER}), as in the ROS 2 pip wheels")
def test_the_secured_graph_runs_and_an_unenrolled_publisher_never_meets_the_driver(tmp_path, fresh_domain, monkeypatch):
    # Secured, but still on loopback: explicit DDS settings win over the robot network's defaults.
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(profile_path("loopback")))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    keystore = tmp_path / "keystore"
    create_keystore(keystore, domain=int(fresh_domain))
    proc = launch_robot("network:=robot-secure", f"keystore:={keystore}", "trials:=30", f"output_dir:={tmp_path / 'touch'}")
    try:
        # Enrolled nodes meet: trials are scored through the secured graph.
        deadline = time.monotonic() + 120
        while not (tmp_path / "touch" / "results.jsonl").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no trial finished in the secured graph"
            time.sleep(1)
        # A process without security on the same domain: its writer never matches the driver's reader.
        unsecured = {k: v for k, v in os.environ.items() if not k.startswith("ROS_SECURITY") and k != "GF_NETWORK"}
        intruder = subprocess.run([sys.executable, "-c", INTRUDER], env=unsecured, capture_output=True, text=True, timeout=60)
        assert intruder.stdout.strip() == "matched 0", intruder.stdout + intruder.stderr
    finally:
        stop(proc)


INTRUDER = """
import time, rclpy
from gf_bringup.rosutil import reliable_qos
from gf_bringup.runtime import configure_environment
configure_environment()
from gf_interfaces.msg import ActionChunk
rclpy.init()
node = rclpy.create_node("intruder")
pub = node.create_publisher(ActionChunk, "gf/action_chunk", reliable_qos())
matched = 0
end = time.monotonic() + 10
while time.monotonic() < end:
    matched = max(matched, pub.get_subscription_count())
    pub.publish(ActionChunk())
    time.sleep(0.1)
print("matched", matched)
"""
