"""The set-point streaming loop (ROS-free): a deadline-scheduled periodic loop and the controller
that, at each tick, applies the watchdog and sends the due set-point and gripper command to an arm.

``movep_canfd`` in high-follow mode wants a set-point every <= 10 ms at a steady period. The loop
sleeps towards absolute deadlines ``t0 + k * period`` on the monotonic clock (so errors do not
accumulate). After a tick that overran by a whole period or more, the deadlines it swallowed are
skipped (counted as missed), the tick for the current slot runs at once, and the loop is back on
its grid: no burst of catch-up ticks.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .arm import ArmBackend, ArmError, ArmState
from .safety import ChunkExecutor, GripperCommander, Plan, PlanRequest, SafetyViolation, SetPoint, Watchdog
from .smoothing import SetpointSmoother


@dataclass
class LoopStats:
    """Tick start times and work durations of one ``PeriodicLoop.run``."""

    period: float
    tick_times: np.ndarray
    work_times: np.ndarray
    missed_deadlines: int

    @property
    def periods(self) -> np.ndarray:
        """Actual time between consecutive tick starts (s)."""
        return np.diff(self.tick_times)

    def summary(self, budget: float | None = None, late_margin: float = 0.1) -> dict[str, float]:
        """p50/p99/max of period, |period - budget| jitter and work time (ms); budget defaults to period.

        ``late_fraction`` counts periods longer than budget * (1 + late_margin).
        """
        budget = self.period if budget is None else budget
        periods = self.periods
        if periods.size == 0:
            raise ValueError("need at least two ticks for period statistics")
        jitter = np.abs(periods - budget)
        ms = 1000.0
        return {
            "ticks": float(self.tick_times.size),
            "period_p50_ms": float(np.percentile(periods, 50) * ms),
            "period_p99_ms": float(np.percentile(periods, 99) * ms),
            "period_max_ms": float(periods.max() * ms),
            "jitter_p50_ms": float(np.percentile(jitter, 50) * ms),
            "jitter_p99_ms": float(np.percentile(jitter, 99) * ms),
            "jitter_max_ms": float(jitter.max() * ms),
            "late_fraction": float(np.mean(periods > budget * (1.0 + late_margin))),
            "work_p50_ms": float(np.percentile(self.work_times, 50) * ms),
            "work_p99_ms": float(np.percentile(self.work_times, 99) * ms),
            "missed_deadlines": float(self.missed_deadlines),
            "budget_ms": float(budget * ms),
        }


class PeriodicLoop:
    """Calls ``fn(now)`` every ``period`` s against absolute monotonic deadlines.

    ``spin`` > 0 sleeps until ``spin`` s before each deadline and busy-waits the rest (tighter
    timing for a CPU core's worth of cost; 0 = sleep only). ``clock``/``sleep`` are injectable.
    """

    def __init__(
        self,
        period: float,
        *,
        spin: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"period must be a positive number of seconds, got {period}")
        self.period = float(period)
        self.spin = max(0.0, float(spin))
        self._clock = clock
        self._sleep = sleep

    def _wait_until(self, deadline: float) -> None:
        remaining = deadline - self._clock()
        if remaining - self.spin > 0:
            self._sleep(remaining - self.spin)
        while self.spin and self._clock() < deadline:
            pass

    def run(
        self,
        fn: Callable[[float], object],
        *,
        duration: float | None = None,
        max_ticks: int | None = None,
        stop: threading.Event | None = None,
    ) -> LoopStats:
        """Tick until ``duration`` s passed, ``max_ticks`` ran, ``stop`` is set, or ``fn`` returns False."""
        ticks: list[float] = []
        work: list[float] = []
        missed = 0
        t0 = self._clock()
        k = 0
        while True:
            now = self._clock()
            ticks.append(now)
            result = fn(now)
            work.append(self._clock() - now)
            if result is False or (stop is not None and stop.is_set()):
                break
            if max_ticks is not None and len(ticks) >= max_ticks:
                break
            k += 1
            late = self._clock() - (t0 + k * self.period)
            if late >= self.period:
                # Overran by at least a whole period: skip the missed deadlines, do not burst.
                skip = int(late // self.period)
                missed += skip
                k += skip
            deadline = t0 + k * self.period
            if duration is not None and deadline - t0 > duration + 1e-9:
                break
            self._wait_until(deadline)
        return LoopStats(self.period, np.asarray(ticks), np.asarray(work), missed)


@dataclass(frozen=True)
class TickResult:
    """What one streaming tick did. ``setpoint`` is what was sent (the smoothed pose when a
    smoother is used); ``safety_stop`` names the rule that stopped the arm (a smoothed set-point
    outside the limits, or the arm off the path of its set-points)."""

    setpoint: SetPoint | None = None
    gripper_command: tuple[str, float] | None = None
    watchdog_fired: bool = False
    restarted: bool = False
    safety_stop: str = ""


class GripperWorker:
    """Sends gripper commands from its own thread, so waiting for the gripper's acknowledgement
    never holds up a set-point. Only the newest pending command is kept (a newer one replaces one
    not yet sent); a failure is kept for ``take_error()``."""

    def __init__(self, arm: ArmBackend):
        self.arm = arm
        self._pending: queue.Queue = queue.Queue(maxsize=1)
        self._error: ArmError | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gripper-commands", daemon=True)
        self._thread.start()

    def send(self, kind: str, opening: float, force: float) -> None:
        """Queue one command (replacing a pending one)."""
        while True:
            try:
                self._pending.put_nowait((kind, opening, force))
                return
            except queue.Full:
                try:
                    self._pending.get_nowait()
                except queue.Empty:
                    pass

    def take_error(self) -> ArmError | None:
        """The failure of a command since the last call (None if all went through)."""
        with self._lock:
            error, self._error = self._error, None
        return error

    def discard(self) -> None:
        """Drop a pending command (stop, e-stop, reconnect)."""
        try:
            self._pending.get_nowait()
        except queue.Empty:
            pass

    def _run(self) -> None:
        while True:
            kind, opening, force = self._pending.get()
            try:
                send_gripper(self.arm, kind, opening, force)
            except ArmError as exc:
                with self._lock:
                    self._error = exc


def send_gripper(arm: ArmBackend, kind: str, opening: float, force: float) -> None:
    """One ``GripperCommander`` command on the arm."""
    if kind == "open":
        arm.gripper_open()
    elif kind == "close":
        arm.gripper_close(force)
    else:
        arm.gripper_position(opening)


class StreamController:
    """Chunk intake and per-tick streaming for one arm; the driver node calls ``submit``/``tick``.

    ``submit`` plans a validated chunk from the arm's measured pose (or the last target) and feeds
    the watchdog only when the chunk is accepted. ``tick`` first polls the watchdog (fired: drop
    the queued motion and ``arm.stop()``), then streams the due set-point and any gripper change.
    An ``ArmError`` during a tick drops the queued motion before propagating, so nothing stale
    runs after a reconnect.

    With a ``smoother`` the planner's set-points are a reference: each tick sends the smoother's
    next jerk/acceleration-limited pose towards it (and keeps sending until it is at rest at the
    final target). When the previous set-point is older than ``smoother.limits.stall_after`` the
    motion restarts at rest from the measured pose (``measured()``, default ``arm.state()``). Every
    smoothed set-point's fingertip is checked against the workspace and floor; one outside stops
    the arm (``TickResult.safety_stop``). While streaming, every new measured state is checked
    against the set-points sent (``executor.tracking``, which records what each tick really sends,
    and when): an arm off their path is stopped the same way. With ``gripper_worker`` gripper
    commands go out from that worker's thread instead of the tick.
    """

    def __init__(
        self,
        arm: ArmBackend,
        executor: ChunkExecutor,
        watchdog: Watchdog,
        gripper: GripperCommander | None = None,
        *,
        smoother: SetpointSmoother | None = None,
        measured: Callable[[], ArmState | None] | None = None,
        gripper_worker: GripperWorker | None = None,
    ):
        self.arm = arm
        self.executor = executor
        self.watchdog = watchdog
        self.gripper = gripper or GripperCommander(max_opening=arm.gripper_max_opening)
        self.smoother = smoother
        self.measured = measured or arm.state
        self.gripper_worker = gripper_worker
        self.setpoints_sent = 0
        self.restarts = 0  # smoother restarts from the measured pose
        self._reference: SetPoint | None = None
        self._generation = executor.generation
        self._last_sent_at: float | None = None
        self._tracked_state_time: float | None = None  # the last state checked against the set-points

    @property
    def moving(self) -> bool:
        """True while set-points are still being sent (queued motion, or the smoother settling)."""
        if self.executor.generation != self._generation:  # cancelled since the last tick
            return False
        return self.executor.active or self._reference is not None

    def submit(self, chunk, now: float) -> Plan:
        """Plan ``chunk`` (raises ``SafetyViolation``/``ArmError``; then nothing is queued).

        In one call: ``prepare``, ``plan``, ``commit``. An owner that ticks from another thread
        calls those three itself, holding its lock for ``prepare`` and ``commit`` only, so the
        planning (joint checks: milliseconds) never delays a tick."""
        request = self.prepare(now)
        return self.commit(request, self.plan(chunk, request), now)

    def prepare(self, now: float, state: ArmState | None = None) -> PlanRequest:
        """Where a chunk submitted now starts (``ChunkExecutor.prepare``; cheap, under the owner's
        lock). ``state``: the arm's state, default ``arm.state()`` (a real arm's state read may wait
        for a gripper reply: read it before taking the lock the tick needs)."""
        state = self.arm.state() if state is None else state
        return self.executor.prepare(state.ee_xyz, state.ee_rpy, now, measured_joints=state.joint_positions,
                                     measured_time=state.timestamp)

    def plan(self, chunk, request: PlanRequest, pause: Callable[[], None] | None = None) -> Plan:
        """Plan ``chunk`` from ``request`` (``ChunkExecutor.plan``): the costly part, touching nothing
        the tick uses; run it outside the owner's lock. ``pause`` is called between joint solves."""
        return self.executor.plan(chunk, request, pause)

    def commit(self, request: PlanRequest, plan: Plan, now: float) -> Plan:
        """Queue a plan (``ChunkExecutor.commit``; refused as ``stale_plan`` when the executor moved on
        since ``prepare``) and feed the watchdog; under the owner's lock."""
        plan = self.executor.commit(request, plan, now)
        self.watchdog.feed(now)
        return plan

    def _forget_motion(self) -> None:
        self._reference = None
        self._last_sent_at = None
        if self.smoother is not None:
            self.smoother.clear()
        if self.gripper_worker is not None:
            self.gripper_worker.discard()

    def tick(self, now: float) -> TickResult:
        """One streaming period: watchdog, then the due set-point and gripper command."""
        try:
            if self.gripper_worker is not None:
                error = self.gripper_worker.take_error()
                if error is not None:
                    raise error
            if self.executor.generation != self._generation:  # cancelled elsewhere (stop, e-stop, ...)
                self._generation = self.executor.generation
                self._forget_motion()
            if self.watchdog.poll(now):
                self.executor.cancel()
                self._generation = self.executor.generation
                self._forget_motion()
                self.arm.stop()
                return TickResult(watchdog_fired=True)
            if self.moving and self.executor.tracking.active:
                stop = self._check_tracking()
                if stop is not None:
                    return stop
            setpoint = self.executor.next_setpoint(now, record=False)
            if self.smoother is None:
                if setpoint is None:
                    return TickResult()
                self.arm.stream_ee_target(setpoint.xyz, setpoint.rpy)
                self.executor.tracking.record(now, setpoint.xyz, setpoint.rpy)
                sent = setpoint
                restarted = False
            else:
                if setpoint is not None:
                    self._reference = setpoint
                reference = self._reference
                if reference is None:
                    return TickResult()
                restarted = False
                stalled = self._last_sent_at is None or now - self._last_sent_at > self.smoother.limits.stall_after
                if stalled or not self.smoother.started:
                    state = self.measured()
                    if state is None:
                        return TickResult()
                    self.smoother.reset(state.ee_xyz, state.ee_rpy)
                    self.restarts += 1
                    restarted = True
                xyz, rpy = self.smoother.step(reference.xyz, reference.rpy, reference.velocity, reference.angular_velocity)
                try:
                    self.executor.planner.limits.check_pose(xyz, rpy)
                except SafetyViolation as exc:
                    return self._safety_stop(exc)
                self.arm.stream_ee_target(xyz, rpy)
                self.executor.tracking.record(now, xyz, rpy)
                self._last_sent_at = now
                sent = SetPoint(now, xyz, rpy, reference.gripper, reference.step)
                if not self.executor.active and self.smoother.at_rest_at(reference.xyz, reference.rpy):
                    self._reference = None  # arrived: nothing more to send until the next chunk
            self.setpoints_sent += 1
            command = self.gripper.command_for(setpoint.gripper) if setpoint is not None else None
            if command is not None:
                kind, opening = command
                if self.gripper_worker is not None:
                    self.gripper_worker.send(kind, opening, self.gripper.force)
                else:
                    send_gripper(self.arm, kind, opening, self.gripper.force)
            return TickResult(setpoint=sent, gripper_command=command, restarted=restarted)
        except ArmError:
            self.executor.cancel()
            self._generation = self.executor.generation
            self._forget_motion()
            self.gripper.reset()
            raise

    def _check_tracking(self) -> TickResult | None:
        """Check a state not checked yet against the set-points sent; stop the arm when it is off."""
        state = self.measured()
        if state is None or state.timestamp == self._tracked_state_time:
            return None
        self._tracked_state_time = state.timestamp
        try:
            self.executor.tracking.check(state.ee_xyz, state.ee_rpy, state.timestamp)
        except SafetyViolation as exc:
            return self._safety_stop(exc)
        return None

    def _safety_stop(self, exc: SafetyViolation) -> TickResult:
        self.executor.cancel()
        self._generation = self.executor.generation
        self._forget_motion()
        self.arm.stop()
        return TickResult(safety_stop=str(exc))

    def halt(self) -> None:
        """Deliberate stop (service call, shutdown): drop queued motion, disarm, stop the arm."""
        self.executor.cancel()
        self._generation = self.executor.generation
        self._forget_motion()
        self.watchdog.disarm()
        self.gripper.reset()
        if self.arm.is_connected:
            self.arm.stop()
