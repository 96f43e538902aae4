"""Message types for bags: a rosbags typestore that knows the project's own messages.

rosbags ships the standard ROS 2 Kilted types; the gf_interfaces messages are parsed from the
installed ``.msg`` files (ament share directory, or the source tree), so a bag written with this
typestore embeds the full message definitions and RIHS01 type hashes identical to those rosidl
generates (checked in the tests against the ``.json`` type descriptions rosidl installs).

Reading is different: a bag is decoded with the definitions embedded in *that* bag
(``bag_typestore``), never with today's ``.msg`` files, so bags recorded before a message gained
fields stay readable. ``to_ros_message`` copies such a decoded message into today's rclpy class
field by field (fields the bag's definition lacks keep their defaults) for republishing.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
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


def _types_of_definition(msgtype: str, fmt: MessageDefinitionFormat, data: str) -> dict:
    """rosbags field definitions of one embedded message definition (MSG or IDL, with dependencies)."""
    if fmt == MessageDefinitionFormat.MSG:
        return get_types_from_msg(data, msgtype)
    sep = "=" * 80 + "\n"
    if data.startswith(f"{sep}IDL: "):  # rosbag2's concatenated IDL form: one section per type
        types: dict = {}
        for section in data.split(sep)[1:]:
            types.update(get_types_from_idl(section.split("\n", 1)[1]))
        return types
    return get_types_from_idl(data)


@lru_cache(maxsize=32)
def _typestore_for(definitions: tuple[tuple[str, str, str], ...]) -> Typestore:
    # Keyed by the definitions themselves (a demo directory's bags share one set: one store each).
    store = get_typestore(Stores.EMPTY)
    types: dict = {}
    for msgtype, fmt, data in definitions:
        types.update(_types_of_definition(msgtype, MessageDefinitionFormat[fmt], data))
    store.register(types)
    return store


def _embedded_definitions(connections: Iterable) -> tuple[tuple[str, str, str], ...]:
    seen: dict[str, tuple[str, str, str]] = {}
    for c in connections:
        if c.msgdef.format != MessageDefinitionFormat.NONE and c.msgtype not in seen:
            seen[c.msgtype] = (c.msgtype, c.msgdef.format.name, c.msgdef.data)
    return tuple(sorted(seen.values()))


class BagTypes:
    """Decoder for one bag: the bag's own definitions, today's for types it does not embed."""

    def __init__(self, connections: Iterable):
        connections = list(connections)
        definitions = _embedded_definitions(connections)
        self.embedded = _typestore_for(definitions) if definitions else None
        self.embedded_types = {msgtype for msgtype, _, _ in definitions}

    def store_for(self, msgtype: str) -> Typestore:
        return self.embedded if msgtype in self.embedded_types else typestore()

    def deserialize(self, raw, msgtype: str):
        return self.store_for(msgtype).deserialize_cdr(raw, msgtype)


def to_ros_message(decoded, msg_class: type):
    """A rosbags-decoded message as an instance of today's rclpy class ``msg_class``.

    Fields are matched by name, recursively; fields the decoded message lacks (added to the
    ``.msg`` since the bag was written) keep their defaults, fields today's class lacks are dropped.
    """
    from rosidl_parser.definition import AbstractNestedType, NamespacedType

    msg = msg_class()
    for slot, slot_type in zip(msg_class.__slots__, msg_class.SLOT_TYPES):
        name = slot.lstrip("_")
        if not hasattr(decoded, name):
            continue
        value = getattr(decoded, name)
        if isinstance(slot_type, NamespacedType):
            value = to_ros_message(value, _namespaced_class(slot_type))
        elif isinstance(slot_type, AbstractNestedType) and isinstance(slot_type.value_type, NamespacedType):
            element = _namespaced_class(slot_type.value_type)
            value = [to_ros_message(v, element) for v in value]
        setattr(msg, name, value)
    return msg


def _namespaced_class(namespaced) -> type:
    return message_class("/".join([*namespaced.namespaces, namespaced.name]))


def type_name(msg_class: type) -> str:
    """rclpy message class -> ROS type name ("sensor_msgs/msg/Image")."""
    module = msg_class.__module__.split(".")
    return f"{module[0]}/msg/{msg_class.__name__}"


def message_class(name: str) -> type:
    """ROS type name ("gf_interfaces/msg/Trial") -> the rclpy message class."""
    import importlib

    package, kind, cls = name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), cls)
