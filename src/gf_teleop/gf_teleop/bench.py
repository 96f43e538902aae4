"""record: episode recorder over DDS (30 Hz 640x480 rgb8 + state topics) vs. the rosbags writer alone.

One run measures, side by side:

1. reference: rosbags' MCAP writer alone writing the same serialised 640x480 rgb8 frames
   (frames/s, MB/s);
2. the recorder node (its own process, as deployed) fed over DDS by a camera-like publisher at
   ``--rate`` Hz (best effort, sensor QoS) plus /joint_states and /gf/ee_state at
   ``--state-rate`` Hz (reliable) for ``--seconds``: frames and state messages recorded vs.
   published (drops), publish -> recorder latency, recorder CPU;
3. the recorder's ceiling: the same publisher at the higher camera rates of ``--ladder``
   (``--ladder-seconds`` each): frames recorded per second and drops at each rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gf_bringup.runtime import console_script
from gf_teleop import episodes as ep

TOPICS = [ep.IMAGE, ep.JOINT_STATES, ep.EE_STATE]


def _image_msg(width: int, height: int, stamp_ns: int):
    from builtin_interfaces.msg import Time

    from gf_bringup.images import image_to_msg

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return image_to_msg(frame, Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9))


def writer_alone(frames: int, width: int, height: int, directory: Path) -> dict:
    """Frames/s of rosbags' MCAP writer on pre-serialised images (no DDS)."""
    from rclpy.serialization import serialize_message

    from gf_teleop.recording import EpisodeRecording

    data = serialize_message(_image_msg(width, height, 1))
    rec = EpisodeRecording(directory, "writer-alone", source="bench").open()
    started = time.perf_counter()
    for i in range(frames):
        rec.write(ep.IMAGE, data, 10**9 + i * 33_333_333)
    rec.finish(success=True, length=0, complete=True, outcome={})
    elapsed = time.perf_counter() - started
    return {"frames": frames, "seconds": elapsed, "fps": frames / elapsed, "MBps": frames * len(data) / elapsed / 1e6}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Publisher:
    def __init__(self, width: int, height: int):
        import rclpy
        from sensor_msgs.msg import Image, JointState

        from gf_bringup.rosutil import reliable_qos, sensor_qos
        from gf_interfaces.msg import EeState

        rclpy.init()
        self.node = rclpy.create_node("gf_bench_record_publisher")
        self.image = _image_msg(width, height, 0)
        self.joints = JointState(name=[f"joint{i}" for i in range(1, 8)], position=[0.0] * 7, velocity=[0.0] * 7)
        self.ee = EeState()
        self.pub_image = self.node.create_publisher(Image, ep.IMAGE, sensor_qos())
        self.pub_joints = self.node.create_publisher(JointState, ep.JOINT_STATES, reliable_qos())
        self.pub_ee = self.node.create_publisher(EeState, ep.EE_STATE, reliable_qos())
        from gf_interfaces.srv import Command

        self.control = self.node.create_client(Command, "/recorder/control")

    def wait_for_recorder(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.pub_image.get_subscription_count() and self.pub_joints.get_subscription_count()
                    and self.pub_ee.get_subscription_count() and self.control.service_is_ready()):
                time.sleep(0.5)  # both ends matched
                return
            time.sleep(0.05)
        raise RuntimeError("the recorder did not come up")

    def command(self, label: str) -> bool:
        import rclpy

        from gf_interfaces.srv import Command

        request = Command.Request()
        request.command = label
        future = self.control.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=30)
        return bool(future.result() and future.result().success)

    def run(self, seconds: float, rate: float, state_rate: float) -> dict:
        """Publish for ``seconds``: images at ``rate`` Hz, state topics at ``state_rate`` Hz."""
        from builtin_interfaces.msg import Time

        def stamp(msg) -> None:
            now = time.time_ns()  # wall-clock publish time in the stamp -> latency at the recorder
            msg.header.stamp = Time(sec=now // 10**9, nanosec=now % 10**9)

        counts = {t: 0 for t in TOPICS}
        start = time.monotonic()
        next_image = next_state = start
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            if now >= next_image:
                stamp(self.image)
                self.pub_image.publish(self.image)
                counts[ep.IMAGE] += 1
                next_image += 1.0 / rate
            if now >= next_state:
                stamp(self.joints)
                stamp(self.ee)
                self.pub_joints.publish(self.joints)
                self.pub_ee.publish(self.ee)
                counts[ep.JOINT_STATES] += 1
                counts[ep.EE_STATE] += 1
                next_state += 1.0 / state_rate
            wake = min(next_image, next_state) - time.monotonic()
            if wake > 0:
                time.sleep(wake)
        return {"published": counts, "seconds": time.monotonic() - start}

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown()


def _recorded(bag: Path) -> dict:
    """Messages per topic in a bag and publish -> receive latency of its images (ms)."""
    from rosbags.rosbag2 import Reader

    from gf_teleop.recorder import cdr_stamp

    counts = {t: 0 for t in TOPICS}
    latency = []
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            if conn.topic == ep.IMAGE:
                latency.append((t - cdr_stamp(raw)) / 1e6)
    lat = np.asarray(latency) if latency else np.zeros(1)
    return {"recorded": counts, "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                               "max": float(lat.max())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-bench record", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the 30 Hz phase")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--state-rate", type=float, default=100.0, help="rate of /joint_states and /gf/ee_state (Hz)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--ladder", default="60,120,240", help="higher camera rates (Hz) to find the recorder's ceiling ('' = skip)")
    parser.add_argument("--ladder-seconds", type=float, default=3.0, help="duration of each ladder rate")
    parser.add_argument("--writer-frames", type=int, default=300, help="frames for the writer-alone reference")
    parser.add_argument("--keep", default="", help="keep the bags in this directory")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of the report")
    args = parser.parse_args(argv)

    from gf_bringup.runtime import random_domain_id

    os.environ.setdefault("ROS_DOMAIN_ID", str(random_domain_id()))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gf-bench-record-"))
    work.mkdir(parents=True, exist_ok=True)
    mb = args.width * args.height * 3 / 1e6
    print(f"gf-bench record: {args.width}x{args.height} rgb8 ({mb:.2f} MB/frame), ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, "
          f"profile {os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '?')}", flush=True, file=sys.stderr if args.json else sys.stdout)
    ref = writer_alone(args.writer_frames, args.width, args.height, work / "writer")
    exe = console_script("gf-recorder")
    demo_dir = work / "recorder"
    cmd = [exe, "--ros-args", "-p", f"output_dir:={demo_dir}", "-p", "mode:=manual", "-p", "autostart:=false",
           "-p", "source:=bench", "-p", f"topics:=[{', '.join(TOPICS)}]"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    publisher = _Publisher(args.width, args.height)
    phases = {}
    try:
        publisher.wait_for_recorder()
        ladder = [float(r) for r in args.ladder.split(",") if r.strip()]
        plan = [("steady", args.seconds, args.rate)] + [(f"{r:g} Hz", args.ladder_seconds, r) for r in ladder]
        for name, seconds, rate in plan:
            if not publisher.command("start"):
                raise RuntimeError("the recorder refused to start")
            cpu0 = _cpu_seconds(proc.pid)
            sent = publisher.run(seconds, rate, args.state_rate)
            time.sleep(1.0)  # let the recorder drain its queues
            cpu = _cpu_seconds(proc.pid) - cpu0
            if not publisher.command("stop"):
                raise RuntimeError("the recorder refused to stop")
            bag = demo_dir / ep.read_manifest(demo_dir)[-1].bag
            phases[name] = {**sent, **_recorded(bag), "recorder_cpu_percent": 100 * cpu / (sent["seconds"] + 1.0)}
    finally:
        publisher.close()
        proc.terminate()
        proc.wait(timeout=20)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    lossless = [p["published"][ep.IMAGE] / p["seconds"] for p in phases.values()
                if all(p["published"][t] == p["recorded"][t] for t in TOPICS)]
    steady = phases["steady"]
    drops = sum(steady["published"][t] - steady["recorded"][t] for t in TOPICS)
    if args.json:
        print(json.dumps({"width": args.width, "height": args.height, "rate_hz": args.rate, "state_rate_hz": args.state_rate,
                          "reference_writer_alone": ref, "phases": phases, "steady_drops": drops,
                          "highest_lossless_fps": max(lossless) if lossless else 0.0}))
        return 0 if drops == 0 else 1
    print(f"\nreference  rosbags MCAP writer alone: {ref['fps']:.0f} frames/s ({ref['MBps']:.0f} MB/s, {ref['frames']} frames)")
    print(f"recorder over DDS ({args.state_rate:g} Hz /joint_states + /gf/ee_state alongside):")
    for name, p in phases.items():
        pub, rec = p["published"], p["recorded"]
        print(f"  {name:>7s} camera for {p['seconds']:.1f} s: {rec[ep.IMAGE]}/{pub[ep.IMAGE]} frames "
              f"({rec[ep.IMAGE] / p['seconds']:.0f} frames/s, {rec[ep.IMAGE] * mb / p['seconds']:.0f} MB/s); drops: image "
              f"{pub[ep.IMAGE] - rec[ep.IMAGE]}, joint_states {pub[ep.JOINT_STATES] - rec[ep.JOINT_STATES]}, "
              f"ee_state {pub[ep.EE_STATE] - rec[ep.EE_STATE]}; latency p50 {p['latency_ms']['p50']:.1f} ms, "
              f"p99 {p['latency_ms']['p99']:.1f} ms; recorder CPU {p['recorder_cpu_percent']:.0f}%")
    print(f"\nverdict: {'keeps up' if drops == 0 else f'DROPS {drops} messages'} at {args.rate:g} Hz {args.width}x{args.height}; "
          f"highest lossless camera rate measured {max(lossless) if lossless else 0:.0f} frames/s "
          f"vs {ref['fps']:.0f} frames/s for the rosbags writer alone")
    return 0 if drops == 0 else 1
