"""The SROS2 keystore of a robot graph, and the ``robot-secure`` network mode that uses it.

``gf-keys keystore DIR --domain N`` writes the layout ROS 2's security support (rcl) reads and
SROS2's ``ros2 security`` tools write, so either can maintain it afterwards::

    DIR/gf_keystore.yaml                 domain, namespace and enclaves it was made for
    DIR/public/ca.cert.pem               the CA (identity_ca / permissions_ca: links to it)
    DIR/private/ca.key.pem               its key (mode 0600): keep it off the robot's computers
    DIR/enclaves/governance.xml, .p7s    the domain's rules, signed by the permissions CA
    DIR/enclaves/gf/<role>/              cert.pem, key.pem, permissions.xml, permissions.p7s, and
                                         links to the CA certificates and governance.p7s

Keys are ECDSA P-256 (DDS-Security's prime256v1), documents are S/MIME signed (detached, text),
certificates and permissions are valid 10 years. Each enclave's permissions come from its role in
:mod:`gf_bringup.enclaves` and hold for the one domain the keystore was made for.

``network:=robot-secure`` (:func:`secure_environment`) turns on ROS 2 security in Enforce mode
(never Permissive: there a node without its enclave silently runs unsecured) with this keystore on
its domain, and refuses, in one line, a DDS without DDS-Security, a missing enclave, a Permissive
strategy or another domain.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import MutableMapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from gf_bringup.enclaves import ROLES, governance_xml, permissions_xml

INFO_FILE = "gf_keystore.yaml"
CA_NAME = "gf-robot-ca"
CERT_VALID_DAYS = 3650
ENCLAVE_FILES = ("cert.pem", "key.pem", "permissions.p7s", "governance.p7s", "identity_ca.cert.pem",
                 "permissions_ca.cert.pem")  # what rcl loads from an enclave directory


class SecureNetworkError(ValueError):
    """robot-secure mode cannot start here; the message says why, in one line."""


def enclave_dir(keystore: Path, enclave: str) -> Path:
    return Path(keystore) / "enclaves" / enclave.strip("/")


def keystore_variable(keystore: str) -> dict[str, str]:
    """The environment a ``keystore:=DIR`` launch argument sets ({} for '')."""
    return {"ROS_SECURITY_KEYSTORE": str(Path(keystore).expanduser().resolve())} if keystore else {}


def keystore_info(keystore: Path) -> dict:
    """What ``gf-keys keystore`` recorded (domain, namespace, enclaves); SecureNetworkError if none."""
    path = Path(keystore).expanduser() / INFO_FILE
    if not path.is_file():
        raise SecureNetworkError(f"{keystore} is not a keystore made by `gf-keys keystore` (no {INFO_FILE})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- creation (needs the `cryptography` package) ---------------------------------------------------


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=CERT_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=ca)
            .sign(issuer_key, hashes.SHA256()))


def _write_private(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _smime_sign(text: str, cert, key) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    return (pkcs7.PKCS7SignatureBuilder().set_data(text.encode()).add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.Text, pkcs7.PKCS7Options.DetachedSignature]))


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def create_keystore(keystore: Path, domain: int, namespace: str = "", enclaves: list[str] | None = None) -> dict:
    """Write a new keystore for ``domain`` (refuses a non-empty directory); returns its info."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import load_pem_x509_certificate

    keystore = Path(keystore).expanduser()
    if not 0 <= domain <= 232:
        raise ValueError(f"domain: expected a ROS domain id 0..232, got {domain}")
    chosen = list(enclaves or ROLES)
    unknown = [e for e in chosen if e not in ROLES]
    if unknown:
        raise ValueError(f"unknown enclave(s) {unknown}; known: {sorted(ROLES)}")
    if keystore.exists() and any(keystore.iterdir()):
        raise ValueError(f"{keystore} is not empty: a keystore is created once (add enclaves with ROS 2's "
                         "`ros2 security create_enclave`, or make a new keystore)")
    public, private, root = keystore / "public", keystore / "private", keystore / "enclaves"
    for d in (public, private, root):
        d.mkdir(parents=True, exist_ok=True)
    private.chmod(0o700)
    ca_key = _new_key()
    ca_cert = _certificate(CA_NAME, ca_key, CA_NAME, ca_key, ca=True)
    _write_cert(public / "ca.cert.pem", ca_cert)
    _write_private(private / "ca.key.pem", ca_key)
    for which in ("identity_ca", "permissions_ca"):  # one CA for both, as SROS2 makes it
        _link(public / "ca.cert.pem", public / f"{which}.cert.pem")
        _link(private / "ca.key.pem", private / f"{which}.key.pem")
    ca_cert = load_pem_x509_certificate(ca_cert.public_bytes(serialization.Encoding.PEM))
    governance = governance_xml(domain)
    (root / "governance.xml").write_text(governance, encoding="utf-8")
    (root / "governance.p7s").write_bytes(_smime_sign(governance, ca_cert, ca_key))
    for enclave in chosen:
        where = enclave_dir(keystore, enclave)
        where.mkdir(parents=True, exist_ok=True)
        key = _new_key()
        _write_private(where / "key.pem", key)
        _write_cert(where / "cert.pem", _certificate(enclave, key, CA_NAME, ca_key, ca=False))
        permissions = permissions_xml(ROLES[enclave], domain, namespace)
        (where / "permissions.xml").write_text(permissions, encoding="utf-8")
        (where / "permissions.p7s").write_bytes(_smime_sign(permissions, ca_cert, ca_key))
        _link(root / "governance.p7s", where / "governance.p7s")
        for which in ("identity_ca", "permissions_ca"):
            _link(public / f"{which}.cert.pem", where / f"{which}.cert.pem")
    info = {"domain": domain, "namespace": namespace.strip("/"), "enclaves": chosen,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (keystore / INFO_FILE).write_text(yaml.safe_dump(info, sort_keys=False), encoding="utf-8")
    return info


# --- the robot-secure network mode -------------------------------------------------------------------


def fastdds_security_support() -> tuple[bool, str]:
    """(whether the installed Fast DDS was built with DDS-Security, where that was read).

    Read from ``HAVE_SECURITY`` in the ``fastdds/config.hpp`` of each install prefix (the venv,
    then AMENT_PREFIX_PATH: a distribution install under /opt/ros), the header Fast DDS generates
    from its build options. The pip wheels define it as 0.
    """
    prefixes = [sys.prefix, *(p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p)]
    for prefix in prefixes:
        header = Path(prefix) / "include" / "fastdds" / "config.hpp"
        if header.is_file():
            match = re.search(r"#define\s+HAVE_SECURITY\s+(\d+)", header.read_text(encoding="utf-8", errors="replace"))
            if match:
                return match.group(1) != "0", str(header)
    raise SecureNetworkError("no fastdds/config.hpp found in " + ", ".join(prefixes) + " (is Fast DDS installed?)")



def secure_environment(env: MutableMapping[str, str], dds_security: tuple[bool, str]) -> None:
    """Set ROS 2 security (Enforce, the keystore's domain) in ``env`` for robot-secure mode, or
    raise SecureNetworkError. ``dds_security`` is (supported, where it was read) for the installed
    DDS."""
    supported, where = dds_security
    if not supported:
        raise SecureNetworkError(f"robot-secure needs a DDS with DDS-Security, and this Fast DDS has none "
                                 f"(HAVE_SECURITY 0 in {where}); use a ROS 2 distribution install, or network:=robot "
                                 "with signed chunks (key_file:=...)")
    keystore = env.get("ROS_SECURITY_KEYSTORE", "")
    if not keystore:
        raise SecureNetworkError("robot-secure needs a keystore: keystore:=DIR (made with `gf-keys keystore DIR --domain N`)")
    info = keystore_info(Path(keystore))
    if env.get("ROS_SECURITY_STRATEGY", "Enforce") != "Enforce":
        raise SecureNetworkError(f"robot-secure runs only in Enforce mode, not ROS_SECURITY_STRATEGY={env['ROS_SECURITY_STRATEGY']} "
                                 "(in Permissive mode a node without its enclave runs unsecured)")
    domain = str(info["domain"])
    if env.get("ROS_DOMAIN_ID", domain) != domain:
        raise SecureNetworkError(f"the keystore {keystore} grants domain {domain} only, but ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}")
    env["ROS_SECURITY_ENABLE"] = "true"
    env["ROS_SECURITY_STRATEGY"] = "Enforce"
    env["ROS_DOMAIN_ID"] = domain


def check_node_enclave(env: MutableMapping[str, str], argv: list[str]) -> str:
    """The enclave a node started in robot-secure mode runs in; SecureNetworkError when its command
    line names none or the keystore lacks it (Enforce mode would refuse it less clearly)."""
    enclave = enclave_argument(argv)
    if enclave is None:
        raise SecureNetworkError("network robot-secure: this node needs its enclave, --ros-args --enclave ROLE "
                                 f"(roles: {', '.join(ROLES)})")
    keystore = Path(env["ROS_SECURITY_KEYSTORE"])
    missing = [f for f in ENCLAVE_FILES if not (enclave_dir(keystore, enclave) / f).exists()]
    if missing:
        raise SecureNetworkError(f"enclave {enclave} is not in the keystore {keystore} (missing {', '.join(missing)})")
    return enclave


def enclave_argument(argv: list[str]) -> str | None:
    """The enclave a node's command line gives (``--ros-args ... --enclave E`` / ``-e E``), else
    ROS_SECURITY_ENCLAVE_OVERRIDE, else None."""
    args = argv[argv.index("--ros-args") + 1:] if "--ros-args" in argv else []
    for i, arg in enumerate(args[:-1]):
        if arg in ("--enclave", "-e"):
            return args[i + 1]
    return os.environ.get("ROS_SECURITY_ENCLAVE_OVERRIDE") or None


# --- gf-keys keystore --------------------------------------------------------------------------------


def add_keystore_command(sub) -> None:
    k = sub.add_parser("keystore", help="create the SROS2 keystore and the role enclaves for network:=robot-secure")
    k.add_argument("path", help="new keystore directory")
    k.add_argument("--domain", type=int, required=True, help="the robot's fixed ROS domain id (permissions hold for it only)")
    k.add_argument("--namespace", default="", help="namespace the robot graph runs under ('' = none)")
    k.add_argument("--enclave", action="append", choices=sorted(ROLES), help="only these enclaves (default: all)")


def keystore_command(args) -> int:
    try:
        info = create_keystore(Path(args.path), args.domain, args.namespace, args.enclave)
    except ValueError as exc:
        print(f"gf-keys keystore: error: {exc}", file=sys.stderr)
        return 2
    print(f"created keystore {args.path} for ROS domain {info['domain']}"
          + (f", namespace /{info['namespace']}" if info["namespace"] else "") + ": enclaves " + ", ".join(info["enclaves"]))
    print(f"keep {Path(args.path) / 'private'} (the CA key) off the robot's computers; copy to each computer only "
          "public/ and its own enclaves/ directory (with enclaves/governance.p7s)")
    return 0

