"""Message types for bags: a rosbags typestore that knows the project's own messages.

rosbags ships the standard ROS 2 Kilted types; the gf_interfaces messages are parsed from the
installed ``.msg`` files (ament share directory, or the source tree), so a bag written with this
typestore embeds the full message definitions and RIHS01 type hashes identical to those rosidl
generates (checked in the tests against the ``.json`` type descriptions rosidl installs).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

INTERFACE_PACKAGE = "gf_interfaces"


def interface_dir() -> Path:
    """Directory holding gf_interfaces' ``msg/`` folder (installed share dir, else the sources)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(INTERFACE_PACKAGE))
        if (share / "msg").is_dir():
            return share
    except Exception:  # noqa: BLE001 - ament index missing or package not installed: try sources
        pass
    from gf_bringup.runtime import workspace_root

    root = workspace_root()
    if root is not None and (root / "src" / INTERFACE_PACKAGE / "msg").is_dir():
        return root / "src" / INTERFACE_PACKAGE
    raise FileNotFoundError(f"cannot find the {INTERFACE_PACKAGE} message definitions (share/{INTERFACE_PACKAGE}/msg)")


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """ROS 2 Kilted types plus every gf_interfaces message (cached per process)."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for path in sorted((interface_dir() / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{INTERFACE_PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def type_name(msg_class: type) -> str:
    """rclpy message class -> ROS type name ("sensor_msgs/msg/Image")."""
    module = msg_class.__module__.split(".")
    return f"{module[0]}/msg/{msg_class.__name__}"


def message_class(name: str) -> type:
    """ROS type name ("gf_interfaces/msg/Trial") -> the rclpy message class."""
    import importlib

    package, kind, cls = name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), cls)
