"""An intruder on the action topic, for test_signed_commands (run as a separate process).

    python intruder.py KEY_ID WRONG_KEY_FILE UNKNOWN_KEY_FILE COUNT RATE_HZ

Captures the signed policy's chunks (key id KEY_ID) and, once the first arrives, publishes COUNT
chunks for the running trial in turns: unsigned, signed with a wrong secret under the policy's key
id, signed with a key the driver does not know, a captured chunk with altered actions (its
original signature), and a captured chunk re-published byte for byte (replay). The actions of the
forged chunks push the arm up and away, so an executed one changes the trial. On SIGINT it prints
one JSON line: chunks published per kind and the distinct policy chunks it saw.
"""

from __future__ import annotations

import array
import copy
import faulthandler
import json
import signal
import sys
import threading
import time

import numpy as np

from gf_bringup.runtime import configure_environment

KINDS = ("unsigned", "wrong_secret", "unknown_key", "tampered", "replay")


def main() -> int:
    key_id, wrong_file, unknown_file, count, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    configure_environment()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks a hung intruder for its stacks
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from gf_bringup import names
    from gf_bringup.rosutil import reliable_qos
    from gf_bringup.signing import ChunkSigner, load_key, sign_message
    from gf_interfaces.msg import ActionChunk

    # Ctrl-C is a plain KeyboardInterrupt here: rclpy's handler would shut the context down under
    # the spin thread and the publishing loop before the report is printed.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("intruder")
    lock = threading.Lock()
    policy_sequences: set[int] = set()
    own_sequences: set[int] = set()  # the wrong-secret chunks carry the policy's key id: not policy chunks
    captured: list = []

    def on_chunk(msg) -> None:
        with lock:
            if msg.key_id == key_id and msg.sequence not in policy_sequences and msg.sequence not in own_sequences:
                policy_sequences.add(msg.sequence)
                captured.append(msg)

    node.create_subscription(ActionChunk, names.ACTION_CHUNK, on_chunk, reliable_qos(depth=1000))
    pub = node.create_publisher(ActionChunk, names.ACTION_CHUNK, reliable_qos(depth=1000))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    wrong = ChunkSigner(load_key(wrong_file))
    unknown = ChunkSigner(load_key(unknown_file))
    published = dict.fromkeys(KINDS, 0)
    try:
        while not captured:
            time.sleep(0.01)
        for i in range(count):
            kind = KINDS[i % len(KINDS)]
            with lock:
                original = captured[-1]
            msg = copy.deepcopy(original)
            if kind != "replay":
                actions = np.asarray(msg.data, np.float32).reshape(msg.horizon, msg.action_dim)
                actions[:, :3] = [0.3, 0.3, 0.3]  # up and away from the cards
                msg.data = array.array("f", actions.reshape(-1).tobytes())
                msg.header.stamp = node.get_clock().now().to_msg()
            if kind == "unsigned":
                msg.key_id, msg.sequence, msg.signature = "", 0, []
            elif kind == "wrong_secret":
                sign_message(wrong, msg)
                with lock:
                    own_sequences.add(msg.sequence)
            elif kind == "unknown_key":
                sign_message(unknown, msg)
            pub.publish(msg)  # tampered keeps the original's key id, sequence and signature
            published[kind] += 1
            time.sleep(1.0 / rate)
        while True:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    print(json.dumps({"published": published, "policy_chunks": len(policy_sequences)}), flush=True)
    executor.shutdown(timeout_sec=5.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
