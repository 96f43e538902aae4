"""The runtime environment every GrinningFace process gets without sourcing anything.

`configure_environment()` is called by every console script and by the tests before rclpy
creates a participant. It selects the Fast DDS profile (loopback-only by default), keeps ROS
discovery on this machine, and points ManiSkill at the robot assets that set-up resolved.

Network modes (one switch, ``GF_NETWORK`` or the launch argument ``network``):

* ``loopback`` (default; simulation, tests, CI): UDP bound to 127.0.0.1, no multicast,
  ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``. Nothing leaves the machine.
* ``robot``: normal discovery on the robot network, for a camera, driver and policy that run
  on different computers. Shared memory keeps its 16 MiB segment in both modes.
* ``robot-secure``: ``robot`` with ROS 2 security (SROS2) in Enforce mode, on the domain of the
  keystore in ROS_SECURITY_KEYSTORE (gf_bringup.keystore); refused where the DDS has no
  DDS-Security.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Mapping, MutableMapping
from importlib import resources
from pathlib import Path

NETWORK_MODES = ("loopback", "robot", "robot-secure")
SECURE_NETWORK = "robot-secure"
AMENT_INDEX = "share/ament_index/resource_index"
_PROFILES = {"loopback": "fastdds_loopback.xml", "robot": "fastdds_robot_network.xml",
             SECURE_NETWORK: "fastdds_robot_network.xml"}


def profile_path(network: str = "loopback") -> Path:
    """Path of the packaged Fast DDS XML profile for a network mode."""
    if network not in NETWORK_MODES:
        raise ValueError(f"unknown network mode {network!r}; expected one of {NETWORK_MODES}")
    return Path(str(resources.files("gf_bringup") / "resources" / _PROFILES[network]))


def workspace_root() -> Path | None:
    """The source workspace when running from its ``.venv`` (None on a colcon install)."""
    here = Path(__file__).resolve()
    for candidate in (Path(sys.prefix).resolve().parent, here.parents[3]):
        if (candidate / "src" / "gf_bringup").is_dir():
            return candidate
    return None


def random_domain_id(rng: random.Random | None = None) -> int:
    """A ROS domain id for one isolated run (1..101 keeps the DDS ports below 32768)."""
    return (rng or random.SystemRandom()).randint(1, 101)


def configure_environment(
    env: MutableMapping[str, str] | None = None, network: str | None = None
) -> MutableMapping[str, str]:
    """Set the ROS 2 / Fast DDS / ManiSkill variables of this project in ``env`` (os.environ).

    Explicit user settings win, except that loopback mode always keeps discovery on localhost and
    robot-secure mode always enforces security on its keystore's domain (``SecureNetworkError``,
    a ValueError, when it cannot).
    """
    env = os.environ if env is None else env
    mode = network or env.get("GF_NETWORK", "loopback")
    profile = str(profile_path(mode))
    env["GF_NETWORK"] = mode
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", profile)
    if mode == "loopback":
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        if env.get("ROS_DISTRO") == "humble":
            # Humble predates ROS_AUTOMATIC_DISCOVERY_RANGE; its switch is ROS_LOCALHOST_ONLY.
            env["ROS_LOCALHOST_ONLY"] = "1"
    else:
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    if mode == SECURE_NETWORK:
        from gf_bringup.keystore import fastdds_security_support, secure_environment

        secure_environment(env, fastdds_security_support())
    # ament_index lookups (share/<pkg>) must see the ROS packages installed into the virtualenv
    # (the pip wheels, gf_interfaces). Appended, so a sourced workspace keeps its precedence.
    prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if sys.prefix not in prefixes and (Path(sys.prefix) / AMENT_INDEX).is_dir():
        env["AMENT_PREFIX_PATH"] = os.pathsep.join([*prefixes, sys.prefix])
    configure_assets(env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # models load from local directories only, never from a hub
    return env


WIDOWX_URDF = "data/robots/widowx/wx250s.urdf"


def node_environment(base: Mapping[str, str], network: str | None = None) -> dict[str, str]:
    """The variables a launch file adds to the environment its nodes inherit from ``base``.

    Only what :func:`configure_environment` adds or must change; whatever the user set (domain,
    ament prefixes, DDS profile, assets) reaches the nodes untouched.
    """
    env = dict(base)
    configure_environment(env, network=network)
    return {name: value for name, value in env.items() if base.get(name) != value}


def configure_assets(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Point ManiSkill at the asset directory set-up resolved, unless MS_ASSET_DIR is set.

    Must run before ``mani_skill`` is imported: it reads MS_ASSET_DIR at import time.
    """
    env = os.environ if env is None else env
    if "MS_ASSET_DIR" not in env:
        root = workspace_root()
        if root is not None and (root / ".gf" / "maniskill").exists():
            env["MS_ASSET_DIR"] = str((root / ".gf" / "maniskill").resolve())
    return env


def asset_hint() -> str:
    """How to provide the WidowX 250 S asset when it is missing."""
    where = os.environ.get("MS_ASSET_DIR", "~/.maniskill")
    return (
        f"the WidowX 250 S asset ({WIDOWX_URDF}) is not in {where}. Download it with "
        "`python -m mani_skill.utils.download_asset widowx250s`, or point MS_ASSET_DIR at a "
        "directory that holds it (re-run scripts/setup.sh with GF_ASSET_MIRROR=DIR), "
        "or use the Panda robot, which ships with ManiSkill (robot:=panda)"
    )


def package_file(package: str, relative: str) -> Path:
    """A data file of a workspace package (``config/x.yaml``, ``launch/y.py``).

    Looks in the package's source folder first (editable installs, so edits apply at once)
    and then in its ament share directory (colcon installs).
    """
    import importlib

    module = importlib.import_module(package)
    source = Path(module.__file__).resolve().parents[1] / relative
    if source.exists():
        return source
    from ament_index_python.packages import get_package_share_directory

    shared = Path(get_package_share_directory(package)) / relative
    if not shared.exists():
        raise FileNotFoundError(f"{package} has no {relative} (looked in {source} and {shared})")
    return shared


def console_script(name: str) -> str:
    """A console script of the workspace (``gf-launch``, ``gf-train``...): the one installed beside
    this Python interpreter (a venv's bin need not be on PATH), else the name for PATH to find."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def lock_directory(directory: Path, holder: str):
    """Hold an exclusive lock on ``directory`` for this process's lifetime (keep the handle).

    Two processes writing one output directory (an evaluation's results file, a training's
    checkpoints) would each undo the other's work; the second is refused with RuntimeError. The
    lock dies with the process, so a crashed run never blocks its own resumption.
    """
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another {holder} is running in {directory}") from None
    return handle
