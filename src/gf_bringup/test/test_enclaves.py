"""SROS2 roles, permissions and keystore (gf_bringup.enclaves, gf_bringup.keystore), without a DDS.

What the running graph's nodes really use is checked against these roles in gf_realman_driver's
test_robot_enclaves; here: the ROS -> DDS names, the documents, the signatures (verified with the
openssl command, independently of the code that made them) and robot-secure's refusals.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gf_bringup import names
from gf_bringup.enclaves import ROLES, endpoint_violations, parse_permissions, role_permissions
from gf_bringup.keystore import (
    ENCLAVE_FILES,
    SecureNetworkError,
    check_node_enclave,
    create_keystore,
    enclave_dir,
    secure_environment,
)

BIN = Path(sys.executable).parent
HAS_SECURITY = (True, "test: a DDS with DDS-Security")


def test_ros_names_become_the_dds_topics_sros2_uses():
    driver = role_permissions(ROLES[names.ENCLAVE_DRIVER])
    assert "rt/gf/action_chunk" in driver.subscribe and "rt/realman_driver/status" in driver.publish
    assert "rq/realman_driver/homeRequest" in driver.subscribe and "rr/realman_driver/homeReply" in driver.publish
    assert "rq/realman_driver/get_type_descriptionRequest" in driver.subscribe  # Jazzy+ nodes serve it
    assert "rt/diagnostics" in driver.publish and "rt/rosout" in driver.publish
    evaluator = role_permissions(ROLES[names.ENCLAVE_EVALUATOR], namespace="arm1")
    assert "rt/arm1/gf/trial" in evaluator.publish and "rt/arm1/touch_eval/prompt" in evaluator.publish
    assert "rq/arm1/realman_driver/homeRequest" in evaluator.publish and "rr/arm1/realman_driver/homeReply" in evaluator.subscribe
    assert "rt/diagnostics" not in evaluator.publish and "rt/rosout" in evaluator.publish  # absolute names stay absolute


def test_only_the_policy_and_the_calibration_jogger_may_command_the_arm():
    chunk = "rt/" + names.ACTION_CHUNK
    may_publish = {e for e, role in ROLES.items() if role_permissions(role).allows("publish", chunk)}
    assert may_publish == {names.ENCLAVE_POLICY, names.ENCLAVE_CALIBRATE}
    assert role_permissions(ROLES[names.ENCLAVE_DRIVER]).allows("subscribe", chunk)
    camera = role_permissions(ROLES[names.ENCLAVE_CAMERA])
    assert camera.subscribe == {"rq/camera/" + s[2:] + "Request" for s in
                                ("~/describe_parameters", "~/get_parameter_types", "~/get_parameters", "~/list_parameters",
                                 "~/set_parameters", "~/set_parameters_atomically", "~/get_type_description")}
    # Only the operator may clear a latched controller error; the evaluation may not.
    clear = "rq/realman_driver/clear_errorRequest"
    assert {e for e, role in ROLES.items() if role_permissions(role).allows("publish", clear)} == {names.ENCLAVE_OPERATOR}


def test_a_node_using_what_its_role_does_not_grant_is_reported():
    camera = ROLES[names.ENCLAVE_CAMERA]
    chunk, image, truth = (names.recorded(n) for n in (names.ACTION_CHUNK, names.IMAGE, names.SIM_STATE))
    assert endpoint_violations(camera, {"pub": [image, "/rosout"]}) == []
    assert endpoint_violations(camera, {"pub": [chunk]}) == [f"{names.ENCLAVE_CAMERA} may not publish rt/gf/action_chunk"]
    assert endpoint_violations(ROLES[names.ENCLAVE_DRIVER], {"cli": ["/realman_driver/home"]}) == [
        f"{names.ENCLAVE_DRIVER} may not publish rq/realman_driver/homeRequest",
        f"{names.ENCLAVE_DRIVER} may not subscribe rr/realman_driver/homeReply"]
    assert endpoint_violations(ROLES[names.ENCLAVE_POLICY], {"sub": [truth]}) == [
        f"{names.ENCLAVE_POLICY} may not subscribe rt/gf/sim_state"]


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd, timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_gf_keys_keystore_writes_what_rcl_loads_signed_by_its_ca(tmp_path):
    keystore = tmp_path / "ks"
    proc = subprocess.run([str(BIN / "gf-keys"), "keystore", str(keystore), "--domain", "42"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ROS domain 42" in proc.stdout and names.ENCLAVE_DRIVER in proc.stdout
    assert stat.S_IMODE((keystore / "private" / "ca.key.pem").stat().st_mode) == 0o600
    governance = keystore / "enclaves" / "governance.xml"
    assert "<id>42</id>" in governance.read_text() and "<allow_unauthenticated_participants>false" in governance.read_text()
    for enclave, role in ROLES.items():
        where = enclave_dir(keystore, enclave)
        assert all((where / f).is_file() for f in ENCLAVE_FILES), enclave
        assert stat.S_IMODE((where / "key.pem").stat().st_mode) == 0o600
        assert openssl("verify", "-CAfile", "identity_ca.cert.pem", "cert.pem", cwd=where).returncode == 0
        subject = openssl("x509", "-in", "cert.pem", "-noout", "-subject", "-nameopt", "RFC2253", cwd=where).stdout
        for document in ("permissions", "governance"):
            verified = openssl("smime", "-verify", "-text", "-in", f"{document}.p7s", "-CAfile", "permissions_ca.cert.pem",
                               cwd=where)
            assert verified.returncode == 0, verified.stderr
            source = (where / "permissions.xml") if document == "permissions" else governance
            assert verified.stdout.replace("\r\n", "\n") == source.read_text()  # the signature covers this very text
        grant_subject, domains, granted = parse_permissions((where / "permissions.xml").read_text())
        assert subject.strip() == f"subject={grant_subject}" == f"subject=CN={enclave}"
        assert domains == {42} and granted == role_permissions(role)
    # A tampered document no longer verifies.
    where = enclave_dir(keystore, names.ENCLAVE_CAMERA)
    signed = (where / "permissions.p7s").read_text()
    (where / "permissions.p7s").write_text(signed.replace("rt/camera/image_raw", "rt/gf/action_chunk"))
    assert openssl("smime", "-verify", "-in", "permissions.p7s", "-CAfile", "permissions_ca.cert.pem", cwd=where).returncode != 0
    # A keystore is made once.
    again = subprocess.run([str(BIN / "gf-keys"), "keystore", str(keystore), "--domain", "42"], capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_robot_secure_enforces_security_on_the_keystore_domain(tmp_path):
    keystore = tmp_path / "ks"
    create_keystore(keystore, domain=17, enclaves=[names.ENCLAVE_DRIVER, names.ENCLAVE_POLICY])
    env = {"ROS_SECURITY_KEYSTORE": str(keystore)}
    secure_environment(env, HAS_SECURITY)
    assert env == {"ROS_SECURITY_KEYSTORE": str(keystore), "ROS_SECURITY_ENABLE": "true",
                   "ROS_SECURITY_STRATEGY": "Enforce", "ROS_DOMAIN_ID": "17"}
    assert check_node_enclave(env, ["gf-policy", "--ros-args", "--enclave", names.ENCLAVE_POLICY]) == names.ENCLAVE_POLICY
    refusals = {
        "has none (HAVE_SECURITY 0 in x.hpp)": (dict(env), (False, "x.hpp")),
        "needs a keystore": ({}, HAS_SECURITY),
        "not a keystore made by": ({"ROS_SECURITY_KEYSTORE": str(tmp_path)}, HAS_SECURITY),
        "only in Enforce mode": ({**env, "ROS_SECURITY_STRATEGY": "Permissive"}, HAS_SECURITY),
        "grants domain 17 only, but ROS_DOMAIN_ID=18": ({**env, "ROS_DOMAIN_ID": "18"}, HAS_SECURITY),
    }
    for expected, (case, support) in refusals.items():
        with pytest.raises(SecureNetworkError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            secure_environment(case, support)
    with pytest.raises(SecureNetworkError, match="needs its enclave"):
        check_node_enclave(env, ["gf-camera", "--ros-args", "-p", "source:=test_pattern"])
    with pytest.raises(SecureNetworkError, match="enclave /gf/camera is not in the keystore"):
        check_node_enclave(env, ["gf-camera", "--ros-args", "-e", names.ENCLAVE_CAMERA])


def test_graphs_without_enclaves_refuse_robot_secure():
    proc = subprocess.run([str(BIN / "gf-launch"), "sim_eval", "network:=robot-secure"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "have no enclave" in proc.stderr
