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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .arm import ArmBackend, ArmError
from .safety import ChunkExecutor, GripperCommander, Plan, SetPoint, Watchdog


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
    """What one streaming tick did."""

    setpoint: SetPoint | None = None
    gripper_command: tuple[str, float] | None = None
    watchdog_fired: bool = False


class StreamController:
    """Chunk intake and per-tick streaming for one arm; the driver node calls ``submit``/``tick``.

    ``submit`` plans a validated chunk from the arm's measured pose (or the last target) and feeds
    the watchdog only when the chunk is accepted. ``tick`` first polls the watchdog (fired: drop
    the queued motion and ``arm.stop()``), then streams the due set-point and any gripper change.
    An ``ArmError`` during a tick drops the queued motion before propagating, so nothing stale
    runs after a reconnect.
    """

    def __init__(
        self,
        arm: ArmBackend,
        executor: ChunkExecutor,
        watchdog: Watchdog,
        gripper: GripperCommander | None = None,
    ):
        self.arm = arm
        self.executor = executor
        self.watchdog = watchdog
        self.gripper = gripper or GripperCommander(max_opening=arm.gripper_max_opening)
        self.setpoints_sent = 0

    def submit(self, chunk, now: float) -> Plan:
        """Plan ``chunk`` (raises ``SafetyViolation``/``ArmError``; then nothing is queued)."""
        state = self.arm.state()
        plan = self.executor.submit(chunk, state.ee_xyz, state.ee_rpy, now)
        self.watchdog.feed(now)
        return plan

    def tick(self, now: float) -> TickResult:
        """One streaming period: watchdog, then the due set-point and gripper command."""
        try:
            if self.watchdog.poll(now):
                self.executor.cancel()
                self.arm.stop()
                return TickResult(watchdog_fired=True)
            setpoint = self.executor.next_setpoint(now)
            if setpoint is None:
                return TickResult()
            self.arm.stream_ee_target(setpoint.xyz, setpoint.rpy)
            self.setpoints_sent += 1
            command = self.gripper.command_for(setpoint.gripper)
            if command is not None:
                kind, opening = command
                if kind == "open":
                    self.arm.gripper_open()
                elif kind == "close":
                    self.arm.gripper_close(self.gripper.force)
                else:
                    self.arm.gripper_position(opening)
            return TickResult(setpoint=setpoint, gripper_command=command)
        except ArmError:
            self.executor.cancel()
            self.gripper.reset()
            raise

    def halt(self) -> None:
        """Deliberate stop (service call, shutdown): drop queued motion, disarm, stop the arm."""
        self.executor.cancel()
        self.watchdog.disarm()
        self.gripper.reset()
        if self.arm.is_connected:
            self.arm.stop()
