"""SROS2 enclaves of the robot graph: who may publish, subscribe, serve and call what (ROS-free).

Why: in robot network mode any process on the lab network can publish action chunks. Where the
DDS has DDS-Security (a ROS 2 distribution install; not the pip wheels), ``network:=robot-secure``
runs every node in an *enclave* whose certificate and signed permissions say exactly which DDS
topics it may write and read; in Enforce mode a participant without them is not even matched.

Each role below is written once, in ROS names (relative and ``~/`` names resolve as ROS resolves
them for a namespace); :func:`role_permissions` turns a role into DDS topic names, and
:func:`permissions_xml` / :func:`governance_xml` into the DDS-Security documents (OMG DDS-Security
1.1 schemas, the layout SROS2 uses). The keystore (certificates, signatures) is
:mod:`gf_bringup.keystore`; the test ``test_enclaves`` checks every role against the endpoints the
running graph's nodes really create.

ROS -> DDS names: topic ``/gf/action_chunk`` is ``rt/gf/action_chunk``; service ``/x/home`` is a
request topic ``rq/x/homeRequest`` and a reply topic ``rr/x/homeReply``. A service's server reads
requests and writes replies, its client the other way round.
"""

from __future__ import annotations

import fnmatch
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from gf_bringup import names

# What every rclpy node creates on its own: the log and parameter-event topics, the parameter
# services and (Jazzy and later) ~/get_type_description, which the node policy must also allow.
NODE_PUBLISHES = ("/rosout", "/parameter_events")
NODE_SERVES = ("~/describe_parameters", "~/get_parameter_types", "~/get_parameters", "~/list_parameters",
               "~/set_parameters", "~/set_parameters_atomically", "~/get_type_description")
DRIVER_SERVICES = tuple(f"{names.DRIVER}/{s}" for s in ("home", "emergency_stop", "resume", "clear_error"))
PERMISSIONS_VALID_DAYS = 3650  # as long as the enclave certificates


@dataclass(frozen=True)
class Role:
    """One enclave: the nodes that run in it and the ROS names they use."""

    enclave: str
    nodes: tuple[str, ...]
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    serve: tuple[str, ...] = ()
    call: tuple[str, ...] = ()
    description: str = ""


ROLES: dict[str, Role] = {r.enclave: r for r in (
    Role(names.ENCLAVE_DRIVER, nodes=(names.DRIVER,),
         publish=(names.JOINT_STATES, names.EE_STATE, names.DIAGNOSTICS, "~/status"),
         subscribe=(names.ACTION_CHUNK, names.TRIAL, names.EPISODE_STATUS),
         serve=("~/home", "~/emergency_stop", "~/resume", "~/clear_error"),
         description="the arm driver: reads commands, never sends them"),
    Role(names.ENCLAVE_CAMERA, nodes=("camera",), publish=(names.IMAGE, names.CAMERA_INFO),
         description="the camera: images only"),
    Role(names.ENCLAVE_POLICY, nodes=("policy",), publish=(names.ACTION_CHUNK,),
         subscribe=(names.TRIAL, names.EE_STATE, names.IMAGE, names.EPISODE_STATUS),
         description="the policy: the only role (with calibration) that may command the arm"),
    Role(names.ENCLAVE_EVALUATOR, nodes=("touch_eval",),
         publish=(names.TRIAL, names.EPISODE_STATUS, names.TRIAL_RESULT, "~/prompt"),
         subscribe=(names.EE_STATE, "~/operator", f"{names.DRIVER}/status"),
         call=tuple(s for s in DRIVER_SERVICES if not s.endswith("clear_error")),
         description="the Touch evaluation: trials, scores, and the driver's home / e-stop / resume"),
    Role(names.ENCLAVE_OPERATOR, nodes=("touch_operator",), publish=("touch_eval/operator",),
         subscribe=("touch_eval/prompt", f"{names.DRIVER}/status"), call=DRIVER_SERVICES,
         description="the operator's console: the evaluation's keys, and clearing a latched controller error"),
    Role(names.ENCLAVE_CALIBRATE, nodes=("calibrate",), publish=(names.ACTION_CHUNK,), subscribe=(names.EE_STATE,),
         description="the calibration jogger: commands the arm while the layout is recorded"),
)}


def resolve(name: str, node: str, namespace: str = "") -> str:
    """The fully qualified ROS name of ``name`` used by ``node`` in ``namespace`` (as rcl expands it)."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("/"):
        return name
    if name.startswith("~"):
        return f"{ns}/{node}{name[1:]}"
    return f"{ns}/{name}"


def dds_topic(ros_name: str) -> str:
    return "rt" + ros_name


def dds_service(ros_name: str) -> tuple[str, str]:
    """(request topic, reply topic) of a service."""
    return f"rq{ros_name}Request", f"rr{ros_name}Reply"


@dataclass(frozen=True)
class DdsPermissions:
    publish: frozenset[str]
    subscribe: frozenset[str]

    def allows(self, kind: str, dds_name: str) -> bool:
        """Whether ``kind`` ("publish" / "subscribe") of ``dds_name`` is granted (DDS-Security
        matches topic expressions as fnmatch patterns)."""
        return any(fnmatch.fnmatchcase(dds_name, pattern) for pattern in getattr(self, kind))


def role_permissions(role: Role, namespace: str = "") -> DdsPermissions:
    """The DDS topics ``role``'s nodes may write and read, for a graph under ``namespace``."""
    publish, subscribe = set(), set()
    for node in role.nodes:
        def full(name: str) -> str:
            return resolve(name, node, namespace)  # noqa: B023 - used at once, in this iteration

        publish.update(dds_topic(full(t)) for t in (*NODE_PUBLISHES, *role.publish))
        subscribe.update(dds_topic(full(t)) for t in role.subscribe)
        for service in (*NODE_SERVES, *role.serve):
            request, reply = dds_service(full(service))
            subscribe.add(request)
            publish.add(reply)
        for service in role.call:
            request, reply = dds_service(full(service))
            publish.add(request)
            subscribe.add(reply)
    return DdsPermissions(frozenset(publish), frozenset(subscribe))


def endpoint_violations(role: Role, endpoints: dict[str, list[str]], namespace: str = "") -> list[str]:
    """What a node of ``role`` really uses but may not: ``endpoints`` as the ROS graph reports them
    (``pub`` / ``sub`` / ``srv`` / ``cli`` -> fully qualified names). Empty when all is granted."""
    granted = role_permissions(role, namespace)
    needed = []
    for kind, ros_names in endpoints.items():
        for name in ros_names:
            if kind in ("pub", "sub"):
                needed.append(("publish" if kind == "pub" else "subscribe", dds_topic(name)))
            else:
                request, reply = dds_service(name)
                if kind == "srv":
                    needed += [("subscribe", request), ("publish", reply)]
                else:
                    needed += [("publish", request), ("subscribe", reply)]
    return [f"{role.enclave} may not {kind} {dds}" for kind, dds in needed if not granted.allows(kind, dds)]


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _dds_root(schema: str) -> ET.Element:
    return ET.Element("dds", {
        "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
        "xsi:noNamespaceSchemaLocation": f"http://www.omg.org/spec/DDS-SECURITY/20170901/{schema}",
    })


def _text(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def permissions_xml(role: Role, domain: int, namespace: str = "", now: datetime | None = None) -> str:
    """The DDS-Security permissions document of one enclave: its grants on ``domain`` only, and
    DENY for everything else."""
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0, tzinfo=None)
    granted = role_permissions(role, namespace)
    root = _dds_root("omg_shared_ca_permissions.xsd")
    grant = _sub(_sub(root, "permissions"), "grant", None)
    grant.set("name", role.enclave)
    _sub(grant, "subject_name", f"CN={role.enclave}")
    validity = _sub(grant, "validity")
    _sub(validity, "not_before", now.isoformat())
    _sub(validity, "not_after", (now + timedelta(days=PERMISSIONS_VALID_DAYS)).isoformat())
    rule = _sub(grant, "allow_rule")
    _sub(_sub(rule, "domains"), "id", str(domain))
    for kind in ("publish", "subscribe"):
        topics = sorted(getattr(granted, kind))
        if topics:
            element = _sub(_sub(rule, kind), "topics")
            for topic in topics:
                _sub(element, "topic", topic)
    _sub(grant, "default", "DENY")
    return _text(root)


def governance_xml(domain: int) -> str:
    """The domain's governance: no unauthenticated participant joins; discovery, liveliness and
    data encrypted; read and write access control on every topic."""
    root = _dds_root("omg_shared_ca_governance.xsd")
    rule = _sub(_sub(root, "domain_access_rules"), "domain_rule")
    _sub(_sub(rule, "domains"), "id", str(domain))
    for tag, value in (("allow_unauthenticated_participants", "false"), ("enable_join_access_control", "true"),
                       ("discovery_protection_kind", "ENCRYPT"), ("liveliness_protection_kind", "ENCRYPT"),
                       ("rtps_protection_kind", "ENCRYPT")):
        _sub(rule, tag, value)
    topic_rule = _sub(_sub(rule, "topic_access_rules"), "topic_rule")
    for tag, value in (("topic_expression", "*"), ("enable_discovery_protection", "true"),
                       ("enable_liveliness_protection", "true"), ("enable_read_access_control", "true"),
                       ("enable_write_access_control", "true"), ("metadata_protection_kind", "ENCRYPT"),
                       ("data_protection_kind", "ENCRYPT")):
        _sub(topic_rule, tag, value)
    return _text(root)


def parse_permissions(text: str) -> tuple[str, set[int], DdsPermissions]:
    """(subject name, domain ids, allowed topics) of a permissions document with one grant."""
    root = ET.fromstring(text)
    (grant,) = root.iter("grant")
    if grant.findtext("default") != "DENY":
        raise ValueError("permissions: the default must be DENY")
    rule = grant.find("allow_rule")
    domains = {int(e.text) for e in rule.iter("id")}
    topics = {kind: frozenset(t.text for t in rule.findall(f"{kind}/topics/topic")) for kind in ("publish", "subscribe")}
    return grant.findtext("subject_name"), domains, DdsPermissions(topics["publish"], topics["subscribe"])
