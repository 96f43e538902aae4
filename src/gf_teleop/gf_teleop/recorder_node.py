"""recorder node: records episodes into rosbag2 bags (MCAP) + the demo manifest.

Raw subscriptions deliver the serialised CDR bytes, which go to disk unchanged; the routing of
messages into episodes is gf_teleop.recorder.EpisodeRecorder. Each topic is recorded with the
QoS its publishers offer (queried from the graph), like rosbag2 does.

Control (manual mode, or to discard an episode in either mode): the service ``~/control``
(gf_interfaces/srv/Command: ``start``, ``stop``, ``success``, ``failure``, ``discard``) and
``~/get_state`` (gf_interfaces/srv/Command, request ignored: the message is ``idle`` or
``recording:<episode id>``). The teleop node maps keys to these commands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rclpy.node import Node

from gf_bringup import names
from gf_bringup.rosutil import (
    config_field,
    config_help,
    create_subscription,
    declare_config,
    latched_qos,
    reliable_qos,
    run_node,
    sensor_qos,
)
from gf_interfaces.srv import Command
from gf_teleop import episodes as ep
from gf_teleop.bagtypes import message_class
from gf_teleop.recorder import EpisodeRecorder, RecorderConfig

COMMANDS = ("start", "stop", "success", "failure", "discard")


@dataclass
class RecorderNodeConfig:
    output_dir: str = config_field("demos", "demo directory: bags/<episode>/ and manifest.jsonl (unfinished bags found here are recovered)")
    mode: str = config_field("auto", "auto: one episode per /gf/trial until its done status; manual: start/stop by ~/control or the teleop keys")
    topics: list[str] = config_field(list(ep.DEFAULT_TOPICS), "topics to record (known: " + ", ".join(ep.TOPIC_TYPES) + ")")
    operator: str = config_field("", "who produced the episodes (scripted-expert, a person's name...)")
    source: str = config_field("sim", "where the episodes come from: sim or robot")
    autostart: bool = config_field(False, "manual mode: start an episode as soon as the node is up")
    close_timeout_s: float = config_field(2.0, "seconds a finished episode waits for its final observation before closing")
    checkpoint_period_s: float = config_field(0.2, "flush the bag to disk at least this often (bounds what a crash can lose)")
    fsync: bool = config_field(False, "fsync at every checkpoint (survives power loss, costs disk time)")
    sensor_depth: int = config_field(50, "queue depth of the best-effort camera subscriptions")


def qos_to_rosbags(profile):
    """rclpy QoSProfile -> rosbags Qos (the offered profile stored in metadata v9)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def t(duration) -> QosTime:
        ns = int(duration.nanoseconds)
        return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)

    def enum(cls, value):
        try:
            return cls[value.name]
        except KeyError:
            return cls.UNKNOWN

    return Qos(
        history=enum(QosHistory, profile.history), depth=int(profile.depth),
        reliability=enum(QosReliability, profile.reliability), durability=enum(QosDurability, profile.durability),
        deadline=t(profile.deadline), lifespan=t(profile.lifespan), liveliness=enum(QosLiveliness, profile.liveliness),
        liveliness_lease_duration=t(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def subscription_qos(topic: str, sensor_depth: int = 50):
    """QoS that matches every publisher of a recorded topic (and keeps up with bursts)."""
    if topic in (ep.IMAGE, ep.CAMERA_INFO):
        return sensor_qos(sensor_depth)  # best effort matches both best-effort and reliable publishers
    # Deep queues: a recorder busy for a moment (start-up, a slow disk) must not lose control
    # messages, which keep-last history would overwrite.
    if topic in (ep.TRIAL, ep.EPISODE_STATUS):
        return latched_qos(1000)  # a late recorder still gets the current trial and status
    return reliable_qos(1000)


class RecorderNode(Node):
    """Adapter: raw subscriptions + control services -> EpisodeRecorder."""

    def __init__(self, **node_kwargs):
        super().__init__("recorder", **node_kwargs)
        self.cfg = declare_config(self, RecorderNodeConfig)
        unknown = [t for t in self.cfg.topics if t not in ep.TOPIC_TYPES]
        if unknown:
            raise ValueError(f"cannot record {unknown}: unknown topic types (known: {sorted(ep.TOPIC_TYPES)})")
        self.qos: dict[str, list] = {}
        self.core = EpisodeRecorder(
            RecorderConfig(
                output_dir=self.cfg.output_dir, mode=self.cfg.mode, topics=tuple(self.cfg.topics), operator=self.cfg.operator,
                source=self.cfg.source, close_timeout_s=self.cfg.close_timeout_s,
                checkpoint_period_s=self.cfg.checkpoint_period_s, fsync=self.cfg.fsync,
            ),
            expect_result=lambda: self.count_publishers(ep.TRIAL_RESULT) > 0,
            qos=self.qos, log=lambda text: self.get_logger().info(text),
        )
        self.received = 0
        for topic in self.cfg.topics:
            create_subscription(self, message_class(ep.TOPIC_TYPES[topic]), names.subscribed(topic), self._callback(topic),
                                     subscription_qos(topic, self.cfg.sensor_depth), raw=True)
        self.create_service(Command, "~/control", self._on_control)
        self.create_service(Command, "~/get_state", self._on_get_state)
        self.create_timer(0.1, self.core.tick)
        if self.cfg.mode == "manual" and self.cfg.autostart:
            self.core.start()
        self.get_logger().info(
            f"recording {len(self.cfg.topics)} topics into {self.cfg.output_dir} ({self.cfg.mode} mode)"
        )

    def _callback(self, topic: str):
        def callback(data: bytes) -> None:
            t_ns = time.time_ns()
            self.received += 1
            if topic not in self.qos:
                self.qos[topic] = [qos_to_rosbags(i.qos_profile) for i in self.get_publishers_info_by_topic(topic)]
            self.core.on_message(topic, data, t_ns)

        return callback

    def _on_control(self, request, response):
        command = request.command.strip().lower()
        try:
            if command == "start":
                episode = self.core.start()
                self.get_logger().info(f"recording {episode}")
                response.message = f"recording {episode}"
            elif command in ("stop", "success", "failure"):
                entry = self.core.stop(success={"stop": None, "success": True, "failure": False}[command])
                if entry is None:
                    raise RuntimeError("not recording")
                response.message = f"saved {entry.bag}"
            elif command == "discard":
                if self.core.discard() is None:
                    raise RuntimeError("nothing to discard")
                response.message = "discarded"
            else:
                raise ValueError(f"unknown command {command!r} (use {', '.join(COMMANDS)})")
            response.success = True
        except (RuntimeError, ValueError) as exc:
            self.get_logger().warning(f"control {command!r} refused: {exc}")
            response.success, response.message = False, str(exc)
        return response

    def _on_get_state(self, request, response):  # noqa: ARG002
        current = self.core.current
        response.success = True
        response.message = f"recording:{current.rec.episode_id}" if current is not None else "idle"
        return response

    def close(self) -> None:
        self.core.close()


def main(args=None) -> int:
    return run_node(RecorderNode, args, help_text=f"gf-recorder --ros-args [-p name:=value ...]\n\n{__doc__}\nparameters:\n{config_help(RecorderNodeConfig)}")
