"""A hostile publisher for tests: floods the action topic with malformed chunks of every kind.

Run as a script (``python chunk_flood.py RATE_HZ``) in the graph's ROS domain; it keeps following
the current trial and step so that its stale chunks look as real as possible, and prints how many
chunks it sent when it gets SIGINT/SIGTERM.
"""

from __future__ import annotations

import array
import signal
import sys

import numpy as np


def malformed_chunks(trial_id: str, step: int) -> list[dict]:
    """One chunk of each kind the bridge must refuse (fields of gf_interfaces/ActionChunk)."""
    good = np.zeros((4, 7), np.float32)

    def chunk(data=good, **fields) -> dict:
        base = {"trial_id": trial_id, "step_index": step, "horizon": 4, "execute_steps": 0, "action_dim": 7,
                "action_space": "ee_delta_pose"}
        base.update(fields)
        base["data"] = np.asarray(data, np.float32).reshape(-1)
        return base

    nan, inf = good.copy(), good.copy()
    nan[1, 2], inf[0, 0] = np.nan, np.inf
    return [
        chunk(nan), chunk(inf), chunk(good[:3], horizon=4),  # data shorter than horizon x dim
        chunk(np.zeros((4, 6)), action_dim=6), chunk(action_space="joint_velocity"),
        chunk(np.full((4, 7), 5.0)),  # out of range
        chunk(trial_id="Val-9999-0"), chunk(step_index=step - 1 if step else 1000), chunk(step_index=step + 7),  # stale / future
        chunk(horizon=0, data=np.zeros(0)),
    ]


def main(argv: list[str]) -> int:
    from gf_bringup.runtime import configure_environment

    configure_environment()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from gf_bringup import names
    from gf_bringup.rosutil import reliable_qos, status_qos
    from gf_interfaces.msg import ActionChunk, EpisodeStatus

    rate = float(argv[1]) if len(argv) > 1 else 450.0
    rclpy.init()
    node = rclpy.create_node("chunk_flood")
    pub = node.create_publisher(ActionChunk, names.ACTION_CHUNK, reliable_qos())
    current = {"trial_id": "", "step": 0}
    node.create_subscription(EpisodeStatus, names.EPISODE_STATUS,
                             lambda m: current.update(trial_id=m.trial_id, step=m.step), status_qos())
    sent = [0]

    def tick() -> None:
        kinds = malformed_chunks(current["trial_id"], current["step"])
        fields = kinds[sent[0] % len(kinds)]
        msg = ActionChunk()
        for name, value in fields.items():
            setattr(msg, name, array.array("f", value.tobytes()) if name == "data" else value)
        pub.publish(msg)
        sent[0] += 1

    node.create_timer(1.0 / rate, tick)
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    print(f"sent {sent[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
