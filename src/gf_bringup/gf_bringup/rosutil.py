"""Small helpers shared by every node: typed parameters from config dataclasses, QoS, main().

A node's configuration is a plain dataclass in its ROS-free core (defaults and help text in one
place). ``declare_config`` turns each field into a typed, described ROS parameter and returns the
dataclass filled with the values from ``--params-file`` / ``-p`` overrides.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gf_bringup.runtime import SECURE_NETWORK, configure_environment

T = TypeVar("T")

STOP_CHECK_S = 0.2  # longest a recorded Ctrl-C waits for the spin loop to see it
RCLPY_STOP_WAIT_S = 2.0  # longest the node then waits for rclpy to shut the context down itself


def config_field(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a default and the description its ROS parameter gets."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _array_type(hint: Any):
    from rclpy.parameter import Parameter

    inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
    return {
        str: Parameter.Type.STRING_ARRAY,
        float: Parameter.Type.DOUBLE_ARRAY,
        int: Parameter.Type.INTEGER_ARRAY,
        bool: Parameter.Type.BOOL_ARRAY,
    }[inner]


def declare_config(node, config_cls: type[T], prefix: str = "") -> T:
    """Declare one ROS parameter per field of ``config_cls`` and return the filled config."""
    from rcl_interfaces.msg import ParameterDescriptor

    hints = typing.get_type_hints(config_cls)
    values = {}
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        descriptor = ParameterDescriptor(description=f.metadata.get("help", ""))
        name = prefix + f.name
        if isinstance(default, list) and not default:
            # rclpy infers BYTE_ARRAY from [], so empty lists are declared by type.
            value = node.declare_parameter(name, _array_type(hints[f.name]), descriptor).value
            values[f.name] = default if value is None else list(value)
        else:
            value = node.declare_parameter(name, default, descriptor).value
            values[f.name] = list(value) if isinstance(default, list) else value
    return config_cls(**values)


def config_help(config_cls: type) -> str:
    """Text listing the parameters of a config dataclass (for --help)."""
    lines = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def sensor_qos(depth: int = 5):
    """QoS for camera streams: best effort, keep last (rclpy's sensor data profile)."""
    from rclpy.qos import QoSProfile, qos_profile_sensor_data

    profile = QoSProfile(depth=depth)
    profile.reliability = qos_profile_sensor_data.reliability
    profile.durability = qos_profile_sensor_data.durability
    profile.history = qos_profile_sensor_data.history
    return profile


def reliable_qos(depth: int = 10):
    """QoS for control and trial topics: reliable, volatile."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def latched_qos(depth: int = 1):
    """QoS for state announcements a late joiner must still receive (the current trial)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )


def status_qos():
    """QoS of /gf/episode_status: latched for late joiners, and deep enough that a subscriber
    busy for a few steps (a recorder writing images) does not lose intermediate statuses."""
    return latched_qos(depth=50)


def create_publisher(node, msg_type, topic: str, qos, *, lean: bool = False, **kwargs):
    """The one way our nodes create a publisher. ``lean``: without rclpy's default QoS-event
    handlers, for the lock-step critical path. Each handler is a waitable that rclpy's executor
    walks in Python on every wake-up, so a node with several endpoints pays for them on every
    message it receives. An incompatible QoS is then reported only by the other end's handlers,
    so lean endpoints are kept to the nodes of the lock-step loop (bridge, policy, eval)."""
    if lean:
        from rclpy.event_handler import PublisherEventCallbacks

        kwargs["event_callbacks"] = PublisherEventCallbacks(use_default_callbacks=False)
    return node.create_publisher(msg_type, topic, qos, **kwargs)


def create_subscription(node, msg_type, topic: str, callback, qos, *, lean: bool = False, **kwargs):
    """The one way our nodes create a subscription (``lean``: see ``create_publisher``; other
    keywords go to rclpy, e.g. ``raw=True``)."""
    if lean:
        from rclpy.event_handler import SubscriptionEventCallbacks

        kwargs["event_callbacks"] = SubscriptionEventCallbacks(use_default_callbacks=False)
    return node.create_subscription(msg_type, topic, callback, qos, **kwargs)


class SummarisedWarnings:
    """Warnings that cannot flood a log: the first of each kind is logged, the rest are counted
    and summarised at most once per ``period_s`` (a publisher flooding bad messages must not turn
    into one log line per message)."""

    def __init__(self, logger, period_s: float, clock: Callable[[], float] = time.monotonic):
        self.logger, self.period_s, self.clock = logger, period_s, clock
        self._seen: set[str] = set()
        self._counts: dict[str, int] = {}
        self._since = clock()

    def warn(self, kind: str, text: str) -> None:
        if kind not in self._seen:
            self._seen.add(kind)
            self.logger.warning(text)
        else:
            self._counts[kind] = self._counts.get(kind, 0) + 1
        now = self.clock()
        if self._counts and now - self._since >= self.period_s:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self._counts.items()))
            self.logger.warning(f"... and {sum(self._counts.values())} more in the last {now - self._since:.0f} s ({kinds})")
            self._counts, self._since = {}, now


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def multi_threaded_executor(num_threads: int = 2, context=None):
    """A MultiThreadedExecutor that hands each ready callback to its thread pool once.

    rclpy 9.1.2 (the Kilted wheel) yields a callback again while it waits in the pool's queue, so
    the spinning thread re-submits it in a tight loop that holds the GIL and keeps the pool from
    starting it: subscriptions lose half their messages and stall for seconds (measured: 50 Hz
    across processes arrived at ~24 Hz with 4 s gaps; rclpy issue #1452, fixed upstream by
    rclpy#1547 in releases the wheels do not have yet). Here a callback already queued is not
    queued again; the spinning thread instead waits (GIL released) until a worker has started it.

    This is the one adapter that relies on rclpy internals: it overrides ``_spin_once_impl`` and
    uses the parent's ``_executor`` (its thread pool) and ``_futures``. ``test_executor.py``
    fails when rclpy renames or drops any of them; drop the adapter once the wheels carry the fix.
    """
    import threading

    from rclpy.executors import (
        ConditionReachedException,
        ExternalShutdownException,
        MultiThreadedExecutor,
        ShutdownException,
        TimeoutException,
    )

    class QueueOnceExecutor(MultiThreadedExecutor):
        def __init__(self):
            super().__init__(num_threads=num_threads, context=context)
            self._started: dict = {}  # queued task -> Event set when a worker starts it
            self._started_lock = threading.Lock()

        def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
            try:
                handler, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
            except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
                return
            with self._started_lock:
                started = self._started.get(handler)
                already_queued = started is not None
                if not already_queued:
                    started = self._started[handler] = threading.Event()
            if already_queued:
                started.wait(0.05)
                return

            def run() -> None:
                with self._started_lock:
                    self._started.pop(handler, None)
                started.set()
                handler()

            self._executor.submit(run)
            self._futures.append(handler)
            for future in self._futures[:]:
                if future.done():
                    self._futures.remove(future)
                    future.result()  # raise any exceptions

    return QueueOnceExecutor()


def run_node(
    factory: Callable[[], Any], args: Sequence[str] | None = None, help_text: str | None = None, threads: int = 1
) -> int:
    """The main() of a node console script: environment, rclpy, spin, clean shutdown.

    Returns the node's ``exit_code`` attribute (0 for nodes without one). Ctrl-C ends the node
    quietly: a callback that was running when the context shut down may fail on it, and that
    failure is part of stopping, not an error.
    """
    argv = list(sys.argv if args is None else args)
    if help_text and any(a in ("-h", "--help") for a in argv[1:]) and "--ros-args" not in argv:
        print(help_text)
        return 0
    try:
        configure_environment()
        if os.environ.get("GF_NETWORK") == SECURE_NETWORK:
            from gf_bringup.keystore import check_node_enclave

            check_node_enclave(os.environ, argv)
    except ValueError as exc:  # e.g. robot-secure without DDS-Security: one line, before rclpy starts
        print(f"{Path(argv[0]).name}: {exc}", file=sys.stderr, flush=True)
        return 2
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    # Ctrl-C while the node runs stops it through rclpy, which shuts the context down and ends the
    # spin; rclpy then also calls Python's handler, which must not raise KeyboardInterrupt at
    # whatever line runs then (e.g. inside a simulator's destructor). While the node is still being
    # built (a simulator loads for seconds) the same Ctrl-C must abort the start-up at once.
    #
    # Rarely (about once in 180 stops of a camera under load) rclpy's wake-up for a Ctrl-C never
    # reaches the executor, which then waits on forever; where rclpy loses it was not pinned down.
    # So this handler also records every Ctrl-C, and the spin loop looks at the record at least
    # every STOP_CHECK_S.
    starting, stop_requested = [True], [False]

    def on_sigint(signum, frame) -> None:  # noqa: ARG001
        stop_requested[0] = True
        if starting[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    rclpy.init(args=argv)
    node = None
    try:
        try:
            node = factory()
        # A configuration mistake or a service that is not there (a policy server): one line, no traceback.
        except (ValueError, FileNotFoundError, ConnectionError) as exc:
            if os.environ.get("GF_DEBUG") or not rclpy.ok():
                raise
            print(f"{Path(argv[0]).name}: {exc}", file=sys.stderr, flush=True)
            return 2
        finally:
            starting[0] = False
        executor = multi_threaded_executor(threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        while not stop_requested[0] and node.context.ok():
            executor.spin_once(timeout_sec=STOP_CHECK_S)
        # rclpy's signal thread is usually still shutting the context down: stop only once it has,
        # so the node is torn down as after any Ctrl-C (below), not beside a context going away.
        deadline = time.monotonic() + RCLPY_STOP_WAIT_S
        while stop_requested[0] and node.context.ok() and time.monotonic() < deadline:
            time.sleep(0.01)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok() and (node is None or node.context.ok()):
            raise  # a real failure; anything after a stop request is part of stopping
    finally:
        _stopping()
        if node is not None:
            close = getattr(node, "close", None) or (lambda: None)
            if node.context.ok():
                close()
                node.destroy_node()
            else:
                # Stopped by a signal: the node's publishers are unusable already. Destroyed first,
                # its logger writes what close() says to the console only, not to a dead /rosout.
                node.destroy_node()
                close()
        rclpy.try_shutdown()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # try_shutdown put back the handler it replaced
    return int(getattr(node, "exit_code", 0))


def _stopping() -> None:
    """Signal handling once a node is stopping.

    ``ros2 launch`` sends SIGINT to every node when one required node ends, often while the node
    already stops on the user's Ctrl-C; a second SIGINT that lands during interpreter shutdown
    (when Python has put back the default action) would kill the node as "exit code -2" after a
    clean stop. A node that hangs while stopping is ended by launch's SIGTERM; it then prints
    where each thread was, which is what its log needs to show.
    """
    import faulthandler

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)
