"""Topic and service names of the GrinningFace graph: one place, relative names.

Relative names resolve under a node's namespace, so one namespace (``namespace:=arm1``, or
``-r __ns:=/arm1``) moves a whole graph and two graphs share a ROS domain without meeting. Two
names stay absolute by ROS convention: ``/clock`` (what ``use_sim_time`` listens to) and
``/diagnostics`` (what diagnostic aggregators listen to). Remap any of them as usual
(``-r gf/action_chunk:=other``).

Bags keep the canonical names of :func:`recorded` (``/gf/action_chunk``) whatever the namespace
of the graph that recorded them, so every tool reads every bag the same way.
"""

from __future__ import annotations

IMAGE = "camera/image_raw"
CAMERA_INFO = "camera/camera_info"
JOINT_STATES = "joint_states"
EE_STATE = "gf/ee_state"
ACTION_CHUNK = "gf/action_chunk"
TRIAL = "gf/trial"
EPISODE_STATUS = "gf/episode_status"
TRIAL_RESULT = "gf/trial_result"
SIM_STATE = "gf/sim_state"
RESET_TRIAL = "reset_trial"
CLOCK = "/clock"
DIAGNOSTICS = "/diagnostics"
DRIVER = "realman_driver"  # the arm driver's node name: its services are DRIVER + "/home", ...

# SROS2 enclaves of network:=robot-secure, one per role (what each may do: gf_bringup.enclaves).
ENCLAVE_POLICY = "/gf/policy"
ENCLAVE_CALIBRATE = "/gf/calibrate"
ENCLAVE_DRIVER = "/gf/driver"
ENCLAVE_CAMERA = "/gf/camera"
ENCLAVE_EVALUATOR = "/gf/evaluator"
ENCLAVE_OPERATOR = "/gf/operator"


def recorded(name: str) -> str:
    """The namespace-free name a topic has in bags (``gf/trial`` -> ``/gf/trial``)."""
    return name if name.startswith("/") else "/" + name


def subscribed(recorded_name: str) -> str:
    """The name to subscribe to for a topic recorded as ``recorded_name`` (relative again, except
    the absolute-by-convention ones)."""
    return recorded_name if recorded_name in (CLOCK, DIAGNOSTICS) else recorded_name.lstrip("/")
