"""Arm streaming loop: set-point period jitter against the 10 ms movep_canfd budget, and (with
``--arm fake``) the peak commanded acceleration against its limit.

Runs the driver itself (``ArmDriver``: its streaming thread, its state thread, the watchdog) at
the configured period while this thread feeds a slow circle as 8-step chunks through
``ArmDriver.submit``, as the node's chunk callback does, so every chunk's planning (Cartesian
rules and the joint checks of every set-point) runs beside the streaming. It reports the period
between the set-points the arm is sent: p50/p99/max, jitter |period - budget| and periods late by
more than 10 %, and how long a submit took. Reference: ``rm_movep_canfd`` high-follow mode needs
a set-point at least every 10 ms.

``--arm sim`` (default): a real-time ``SimulatedArm`` (its own 500 Hz thread competes for the CPU
and the GIL, as the driver's threads will), raw planner set-points. ``--arm fake``: ``RealmanArm``
through the vendor SDK against the moving fake controller on 127.0.0.1 (UDP state push every 5 ms,
state read by the driver's state thread, gripper commands from the worker), with
jerk/acceleration-limited set-points; the peak commanded acceleration is the largest per-axis
second difference of the sent positions / period^2, measured against ``--max-accel``. The fake
controller runs in a process of its own, as a real controller is another computer: in the bench's
process its Python threads would compete with the driver's for the interpreter lock
(``--controller-in-process`` measures that case).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from contextlib import contextmanager

import numpy as np

from gf_eval.action_space import ChunkRejected

from .driver import ArmDriver, DriverSettings
from .safety import SafetyLimits, TargetPlanner
from .simulated_arm import SimulatedArm
from .smoothing import MotionLimits, peak_acceleration
from .streaming import LoopStats

BUDGET_S = 0.010  # movep_canfd high-follow: period must not exceed 10 ms


def _serve_fake_controller(latency: float, conn) -> None:
    from .fake_controller import FakeRealmanController

    fake = FakeRealmanController(moving=True, latency=latency)
    conn.send(fake.port)
    try:
        conn.recv()  # anything, or the parent gone (EOFError): stop
    except EOFError:
        pass
    finally:
        fake.close()


@contextmanager
def _moving_fake_controller(latency: float, in_process: bool):
    """The moving fake controller's port on 127.0.0.1, served here or from a process of its own."""
    if in_process:
        from .fake_controller import FakeRealmanController

        fake = FakeRealmanController(moving=True, latency=latency)
        try:
            yield fake.port
        finally:
            fake.close()
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of this process's threads
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_fake_controller, args=(latency, child), name="fake-controller", daemon=True)
    proc.start()
    try:
        if not parent.poll(30.0):
            raise RuntimeError("the fake controller process did not start")
        yield parent.recv()
    finally:
        parent.send("stop")
        proc.join(5.0)
        if proc.is_alive():
            proc.kill()


class _CircleChunks:
    """Endless ee_delta_pose chunks that trace a horizontal circle (radius 3 cm, 4 s per turn)."""

    def __init__(self, steps_per_chunk: int = 8, radius: float = 0.03, steps_per_turn: int = 80):
        self.steps = steps_per_chunk
        self.radius = radius
        self.per_turn = steps_per_turn
        self.n = 0

    def next(self) -> np.ndarray:
        actions = np.zeros((self.steps, 7))
        for k in range(self.steps):
            a0 = 2 * math.pi * (self.n + k) / self.per_turn
            a1 = 2 * math.pi * (self.n + k + 1) / self.per_turn
            # 1.0 in the action space = 0.1 m
            actions[k, 0] = self.radius * (math.cos(a1) - math.cos(a0)) / 0.1
            actions[k, 1] = self.radius * (math.sin(a1) - math.sin(a0)) / 0.1
            actions[k, 6] = 1.0
        self.n += self.steps
        return actions


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print p50/p99/max set-point period and jitter against the 10 ms budget."""
    parser = argparse.ArgumentParser(prog="gf-bench arm", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to stream (default 10)")
    parser.add_argument("--period-ms", type=float, default=10.0, help="streaming period (default 10 ms)")
    parser.add_argument("--control-period-ms", type=float, default=50.0, help="policy step period (default 50 ms = 20 Hz)")
    parser.add_argument("--sim-rate", type=float, default=500.0, help="SimulatedArm stepping rate in Hz (default 500)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="SimulatedArm command latency (default 5 ms)")
    parser.add_argument("--spin-us", type=float, default=0.0, help="busy-wait this long before each deadline (default 0: sleep only)")
    parser.add_argument("--arm", choices=("sim", "fake"), default="sim",
                        help="sim: SimulatedArm, raw set-points; fake: RealmanArm + moving fake controller, smoothed")
    parser.add_argument("--max-accel", type=float, default=5.0, help="--arm fake: acceleration limit, m/s^2 (default 5, as the driver)")
    parser.add_argument("--controller-in-process", action="store_true",
                        help="--arm fake: serve the fake controller from the bench's own process (its threads then "
                             "compete with the driver's for the interpreter lock, which a real controller never does)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.period_ms <= 0:
        parser.error("--seconds and --period-ms must be positive")

    period = args.period_ms / 1000.0
    try:
        planner = TargetPlanner(SafetyLimits(), control_period=args.control_period_ms / 1000.0, stream_period=period)
    except ValueError as exc:
        parser.error(str(exc))
    if args.arm == "fake":
        with _moving_fake_controller(args.latency_ms / 1000.0, args.controller_in_process) as port:
            return _run(args, planner, period, port)
    return _run(args, planner, period, None)


def _run(args: argparse.Namespace, planner: TargetPlanner, period: float, fake_port: int | None) -> int:
    if fake_port is not None:
        from .realman_arm import RealmanArm

        arm = RealmanArm("127.0.0.1", fake_port, realtime_push=True)
        motion = MotionLimits(max_linear_acceleration=args.max_accel, stall_after=3 * period)
    else:
        arm = SimulatedArm(realtime=True, rate_hz=args.sim_rate, latency_s=args.latency_ms / 1000.0)
        motion = None  # raw planner set-points
    events: list[str] = []
    driver = ArmDriver(arm, planner, watchdog_timeout=1.0,
                       settings=DriverSettings(trial_gating=False, state_period=0.01, spin=args.spin_us / 1e6,
                                               motion_limits=motion),
                       on_event=lambda level, text: events.append(f"{level}: {text}"))
    sent: list[np.ndarray] = []
    sent_at: list[float] = []
    restarted_at: list[int] = []  # set-points that restarted motion at rest after a stall
    tracking: list[float] = []
    stream = arm.stream_ee_target

    def recording_stream(xyz, rpy) -> None:  # what the driver's tick sends, and when
        stream(xyz, rpy)
        if driver.controller.restarts > len(restarted_at):  # the tick restarted before sending this
            restarted_at.append(len(sent))
        sent_at.append(time.monotonic())
        sent.append(np.asarray(xyz, dtype=np.float64).copy())
        state = driver.latest_state
        if len(sent) % 10 == 0 and state is not None:
            tracking.append(float(np.linalg.norm(state.ee_xyz - sent[-1])))

    arm.stream_ee_target = recording_stream
    chunks = _CircleChunks()
    submits: list[float] = []
    refused: list[str] = []
    driver.start()
    try:
        if not driver.wait_connected(10.0):
            print(f"gf-bench arm: the arm did not connect: {events[-1:] or driver.status().last_error}")
            return 1
        end = None
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:  # the node's chunk callback: its own thread
            now = time.monotonic()
            if end is None or end - now < 0.2:
                actions = chunks.next()
                try:
                    plan = driver.submit(trial_id="bench", step_index=0, horizon=len(actions), execute_steps=0,
                                         action_dim=7, action_space="ee_delta_pose",
                                         data=actions.astype(np.float32).reshape(-1))
                    end = plan.end_time
                except ChunkRejected as exc:
                    refused.append(exc.reason)
                submits.append(time.monotonic() - now)
            time.sleep(0.005)
    finally:
        driver.shutdown()
    loop = driver.loop_stats
    restarts = driver.status().smoother_restarts
    if len(sent_at) < 2:
        print(f"gf-bench arm: fewer than two set-points were sent; refusals {refused[-3:]}, events {events[-3:]}")
        return 1
    stats = LoopStats(period, np.asarray(sent_at), loop.work_times if loop is not None else np.zeros(1),
                      loop.missed_deadlines if loop is not None else 0)
    figures = stats.summary(budget=BUDGET_S)
    submit_ms = np.asarray(submits) * 1000.0
    figures.update(
        period_ms=args.period_ms,
        setpoints_sent=float(len(sent)),
        setpoints_ignored_by_arm=float(getattr(arm, "setpoints_ignored", 0)),
        peak_accel=peak_acceleration(sent, period, restarts=restarted_at),
        # Stalls: the speed the motion had when set-points stopped for longer than stall_after
        # (the arm holds the last one); it restarts at rest. Load on the machine causes them.
        stall_stop_speed=max((float(np.linalg.norm(sent[i - 1] - sent[i - 2])) / period
                              for i in restarted_at if i >= 2), default=0.0),
        # ... and how far the restart's first set-point is from the last one the arm holds.
        restart_step_mm=max((1000.0 * float(np.linalg.norm(sent[i] - sent[i - 1])) for i in restarted_at if i >= 1),
                            default=0.0),
        max_accel=float(args.max_accel) if args.arm == "fake" else float("nan"),
        tracking_error_p50_mm=float(np.percentile(tracking, 50) * 1000) if tracking else float("nan"),
        smoother_restarts=float(restarts),
        chunks_submitted=float(len(submits)),
        chunks_refused=float(len(refused)),
        submit_p50_ms=float(np.percentile(submit_ms, 50)) if submits else float("nan"),
        submit_p99_ms=float(np.percentile(submit_ms, 99)) if submits else float("nan"),
    )
    if args.json:
        print(json.dumps(figures, sort_keys=True))
        return 0
    f = figures
    where = "in this process" if args.controller_in_process else "in its own process"
    what = (f"SimulatedArm {args.sim_rate:g} Hz" if args.arm == "sim"
            else f"RealmanArm + moving fake controller {where}, UDP push, smoothed set-points")
    print(
        f"arm streaming loop (ArmDriver): {int(f['ticks'])} set-points in {args.seconds:g} s at a {args.period_ms:g} ms "
        f"period ({what}, latency {args.latency_ms:g} ms, spin {args.spin_us:g} us)"
    )
    print(f"  period  p50 {f['period_p50_ms']:6.3f} ms   p99 {f['period_p99_ms']:6.3f} ms   max {f['period_max_ms']:6.3f} ms"
          f"   (between set-points sent)")
    print(f"  jitter  p50 {f['jitter_p50_ms']:6.3f} ms   p99 {f['jitter_p99_ms']:6.3f} ms   max {f['jitter_max_ms']:6.3f} ms")
    print(
        f"  late by >10%: {100 * f['late_fraction']:.2f} % of periods; missed deadlines: {int(f['missed_deadlines'])}; "
        f"work per tick p50 {f['work_p50_ms']:.3f} ms, p99 {f['work_p99_ms']:.3f} ms"
    )
    print(
        f"  chunks submitted {int(f['chunks_submitted'])} (refused {int(f['chunks_refused'])}), submit (planning) "
        f"p50 {f['submit_p50_ms']:.2f} ms, p99 {f['submit_p99_ms']:.2f} ms, beside the streaming"
    )
    print(
        f"  set-points sent {int(f['setpoints_sent'])}, ignored by the arm {int(f['setpoints_ignored_by_arm'])}, "
        f"EE tracking error p50 {f['tracking_error_p50_mm']:.2f} mm"
    )
    if args.arm == "fake":
        accel_verdict = "within" if f["peak_accel"] <= f["max_accel"] * (1 + 1e-6) else "OVER"
        print(f"  peak commanded acceleration {f['peak_accel']:.3f} m/s^2 (per axis) -> {accel_verdict} the limit "
              f"{f['max_accel']:g} m/s^2 between restarts; smoother restarts {int(f['smoother_restarts'])} (the "
              f"first, and one per stall > {3 * args.period_ms:g} ms: the arm holds the last set-point, here stopping "
              f"from up to {f['stall_stop_speed']:.3f} m/s, and motion restarts at rest from the measured pose)")
    else:
        print(f"  peak commanded acceleration {f['peak_accel']:.3f} m/s^2 (per axis; raw planner set-points, no limit)")
    verdict = "within" if f["period_p99_ms"] <= f["budget_ms"] * 1.1 else "OVER"
    print(f"  reference: movep_canfd budget {f['budget_ms']:g} ms per set-point -> p99 period {verdict} budget (+10 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
