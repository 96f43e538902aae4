"""The streaming loop: absolute-deadline scheduling (no drift, no bursts after an overrun), its
statistics, and the `gf-bench arm` benchmark entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gf_realman_driver import bench
from gf_realman_driver.streaming import LoopStats, PeriodicLoop


class SimClock:
    """A clock that only moves when the loop sleeps or the work 'takes time'."""

    def __init__(self) -> None:
        self.t = 50.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds + 0.0002  # every sleep oversleeps a little, as real ones do


def test_ticks_follow_absolute_deadlines_without_drift():
    clock = SimClock()
    loop = PeriodicLoop(0.01, clock=clock, sleep=clock.sleep)

    def work(now):
        clock.t += 0.003  # 3 ms of work per tick

    stats = loop.run(work, max_ticks=101)
    ticks = stats.tick_times - stats.tick_times[0]
    # Oversleep delays each tick by 0.2 ms but never accumulates: tick k is at k * 10 ms + 0.2 ms.
    np.testing.assert_allclose(ticks[1:], np.arange(1, 101) * 0.01 + 0.0002, atol=1e-9)
    assert stats.missed_deadlines == 0
    np.testing.assert_allclose(stats.work_times, 0.003)


def test_an_overrun_skips_missed_deadlines_instead_of_bursting():
    clock = SimClock()
    loop = PeriodicLoop(0.01, clock=clock, sleep=clock.sleep)
    calls = []

    def work(now):
        calls.append(now)
        if len(calls) == 3:
            clock.t += 0.035  # one tick takes 3.5 periods

    stats = loop.run(work, max_ticks=6)
    start = calls[0]
    offsets = np.round((np.asarray(calls) - start) / 0.01, 3)
    # Ticks 0, 1, 2 on time; tick 2 ran into the slot of deadline 5: deadlines 3 and 4 are
    # skipped, the tick for slot 5 runs at once (the arm has been starved), then back on the grid.
    np.testing.assert_allclose(offsets, [0, 1.02, 2.02, 5.52, 6.02, 7.02], atol=1e-3)
    assert stats.missed_deadlines == 2
    assert min(np.diff(calls)) > 0.0049  # no burst of back-to-back catch-up ticks


def test_loop_stops_on_duration_false_or_event():
    clock = SimClock()
    stats = PeriodicLoop(0.01, clock=clock, sleep=clock.sleep).run(lambda now: None, duration=0.1)
    assert len(stats.tick_times) == 11  # t = 0, 10, ..., 100 ms
    clock = SimClock()
    counter = iter(range(100))
    stats = PeriodicLoop(0.01, clock=clock, sleep=clock.sleep).run(lambda now: next(counter) < 4)
    assert len(stats.tick_times) == 5
    with pytest.raises(ValueError):
        PeriodicLoop(0.0)


def test_stats_summary():
    ticks = np.array([0.0, 0.010, 0.020, 0.0315, 0.040, 0.050])
    stats = LoopStats(0.01, ticks, np.full(6, 0.001), missed_deadlines=0)
    s = stats.summary()
    assert s["ticks"] == 6
    assert s["period_p50_ms"] == pytest.approx(10.0)
    assert s["period_max_ms"] == pytest.approx(11.5)
    assert s["jitter_max_ms"] == pytest.approx(1.5)
    assert s["late_fraction"] == pytest.approx(1 / 5)  # one period beyond 11 ms
    assert s["budget_ms"] == pytest.approx(10.0)


def test_real_clock_loop_keeps_the_average_period():
    stats = PeriodicLoop(0.01).run(lambda now: None, duration=0.3)
    # The average period is exact by construction (absolute deadlines), whatever the jitter;
    # only a preemption longer than a period (a busy machine) can cost a tick.
    span = stats.tick_times[-1] - stats.tick_times[0]
    assert len(stats.tick_times) + stats.missed_deadlines == 31
    assert span == pytest.approx(0.3, abs=0.03)


def test_bench_prints_its_figures_against_the_budget(capsys):
    assert bench.main(["--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "arm streaming loop" in out and "period  p50" in out and "jitter  p50" in out
    assert "reference: movep_canfd budget 10 ms per set-point" in out
    assert bench.main(["--seconds", "0.3", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["budget_ms"] == 10.0 and figures["setpoints_sent"] > 20
    assert figures["setpoints_ignored_by_arm"] == 0
    assert figures["tracking_error_p50_mm"] < 5.0


@pytest.mark.parametrize("where", [[], ["--controller-in-process"]], ids=["own-process", "in-process"])
def test_bench_against_the_moving_fake_controller_keeps_the_acceleration_limit(capsys, where):
    import multiprocessing

    assert bench.main(["--arm", "fake", "--seconds", "1.5", "--json", *where]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["setpoints_sent"] > 50 and figures["setpoints_ignored_by_arm"] == 0
    # Between restarts; a stall (likely on a loaded machine) stops the motion and restarts it at
    # rest from the measured pose, which must be where the arm was left, within tracking error.
    assert figures["peak_accel"] <= figures["max_accel"] and figures["chunks_refused"] == 0
    assert figures["tracking_error_p50_mm"] < 5.0 and figures["restart_step_mm"] < 5.0
    assert multiprocessing.active_children() == []  # the controller's process is gone


def test_bench_rejects_a_period_that_does_not_divide_the_control_period(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--seconds", "0.1", "--period-ms", "7"])
    assert "whole multiple" in capsys.readouterr().err
