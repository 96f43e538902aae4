"""The project's multi-threaded executor keeps up with a reliable 50 Hz stream from another process.

rclpy 9.1.2's own MultiThreadedExecutor loses about half of such a stream (it re-queues callbacks
that are waiting for a worker; see gf_bringup.rosutil.multi_threaded_executor), which made the
driver tests miss EE states. A reliable, keep-last-10 subscription drops messages only when its
executor falls more than 10 messages (200 ms) behind, so "every message, in order" is the check.
"""

import subprocess
import sys
import threading
import time

import rclpy
from std_msgs.msg import String

from gf_bringup.rosutil import multi_threaded_executor, reliable_qos

COUNT = 250  # 5 s at 50 Hz

PUBLISHER = f"""
import time, rclpy
from std_msgs.msg import String
from gf_bringup.rosutil import reliable_qos
rclpy.init()
node = rclpy.create_node("stream")
pub = node.create_publisher(String, "/gf_test/stream", reliable_qos())
deadline = time.time() + 30
while pub.get_subscription_count() == 0 and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # let the reliable endpoints finish matching
for i in range({COUNT}):
    pub.publish(String(data=str(i)))
    time.sleep(0.02)
time.sleep(1.0)  # keep the writer alive until the last samples are acknowledged
"""


def test_a_50_hz_reliable_stream_arrives_whole_and_in_order():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("stream_listener", context=context)
    received: list[int] = []
    done = threading.Event()

    def on_message(msg: String) -> None:
        received.append(int(msg.data))
        time.sleep(0.002)  # a callback that does a little work, as real ones do
        if len(received) == COUNT:
            done.set()

    node.create_subscription(String, "/gf_test/stream", on_message, reliable_qos())
    node.create_timer(0.02, lambda: None)  # a busy node: a timer beside the subscription
    executor = multi_threaded_executor(2, context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER])
    try:
        done.wait(40.0)
        assert publisher.wait(30) == 0
    finally:
        if publisher.poll() is None:
            publisher.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert received == list(range(COUNT)), f"{len(received)} of {COUNT} messages; first gaps at {_gaps(received)[:5]}"


def _gaps(received: list[int]) -> list[int]:
    return [b for a, b in zip(received, received[1:]) if b != a + 1]


def test_the_rclpy_internals_the_adapter_uses_are_still_there():
    """multi_threaded_executor overrides _spin_once_impl and uses _executor and _futures of rclpy's
    MultiThreadedExecutor: this fails first, with a clear message, when rclpy changes them."""
    import concurrent.futures
    import inspect

    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    params = list(inspect.signature(MultiThreadedExecutor._spin_once_impl).parameters)
    assert params[:3] == ["self", "timeout_sec", "wait_condition"], params
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        executor = MultiThreadedExecutor(num_threads=2, context=context)
        assert isinstance(executor._executor, concurrent.futures.ThreadPoolExecutor)
        assert isinstance(executor._futures, list)
        executor.shutdown()
    finally:
        rclpy.shutdown(context=context)
