"""A flood of the same warning becomes one line per kind plus periodic counts."""

from gf_bringup.rosutil import SummarisedWarnings


class Lines:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)


def test_each_kind_is_logged_once_then_counted_and_summarised_per_period():
    now = [0.0]
    log = Lines()
    warnings = SummarisedWarnings(log, period_s=10.0, clock=lambda: now[0])
    for i in range(1000):
        now[0] = i * 0.01  # 100 per second for 10 s
        warnings.warn("nan" if i % 2 else "stale", f"rejected: {i}")
    now[0] = 10.0
    warnings.warn("nan", "rejected: last")
    assert log.lines[:2] == ["rejected: 0", "rejected: 1"]
    assert log.lines[2:] == ["... and 999 more in the last 10 s (nan: 500, stale: 499)"]
