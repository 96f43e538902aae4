"""A mini run's stage log (``runs/mini/<run>/mini_stages.json``): the wall time of every stage,
including the attempts that were killed before they finished.

``gf-mini run`` writes the current attempt's time while it runs (every ``BEAT_S`` seconds), so a
stage whose process was killed (a machine restart, a session's end) keeps the time it had run;
the attempt that finishes it adds its own. A stage finished earlier and run again (new data, the
report) starts its count over. One entry per stage::

    "train": {"seconds": 2710.4, "skipped": false, "finished_at": "2026-12-07T22:40:11",
              "attempts": [{"started_at": "2026-12-07T21:11:02", "seconds": 1790.0, "finished": false},
                           {"started_at": "2026-12-07T22:25:01", "seconds": 920.4, "finished": true}]}

``seconds`` is the sum over the attempts. Logs written before attempts were recorded hold only
the last attempt's ``seconds`` and ``finished_at``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

BEAT_S = 30.0  # how often a running stage's time is written down
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def _now() -> str:
    return time.strftime(_TIME_FORMAT)


class StageLog:
    """Reads and writes one run's stage log."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}

    def _write(self, log: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
        partial.replace(self.path)  # a reader (gf-mini compare) never sees half a file

    def start(self, name: str) -> None:
        """A new attempt at ``name``: after earlier killed attempts, or the first of new work."""
        log = self.read()
        attempts = log.get(name, {}).get("attempts", [])
        if not attempts or attempts[-1]["finished"]:
            attempts = []  # finished (or skipped) before: this is new work
        attempts.append({"started_at": _now(), "seconds": 0.0, "finished": False})
        log[name] = {"seconds": _total(attempts), "skipped": False, "finished_at": None, "attempts": attempts}
        self._write(log)

    def beat(self, name: str, seconds: float, finished: bool = False) -> None:
        """The current attempt has run ``seconds`` (and is over, if ``finished``)."""
        log = self.read()
        entry = log[name]
        entry["attempts"][-1].update(seconds=round(seconds, 1), finished=finished)
        entry["seconds"] = _total(entry["attempts"])
        if finished:
            entry["finished_at"] = _now()
        self._write(log)

    def skip(self, name: str) -> None:
        """``name`` was finished before this run: keep the time of the run that did the work."""
        log = self.read()
        if name not in log:
            log[name] = {"seconds": 0.0, "skipped": True, "finished_at": _now()}
            self._write(log)


def _total(attempts: list[dict]) -> float:
    return round(sum(a["seconds"] for a in attempts), 1)


def busy_intervals(entry: dict) -> list[tuple[float, float]]:
    """The (start, end) times, in seconds since the epoch, a stage's attempts ran."""
    if entry.get("skipped"):
        return []
    if "attempts" in entry:
        out = []
        for attempt in entry["attempts"]:
            start = datetime.strptime(attempt["started_at"], _TIME_FORMAT).timestamp()
            out.append((start, start + attempt["seconds"]))
        return out
    if not entry.get("finished_at"):
        return []
    end = datetime.strptime(entry["finished_at"], _TIME_FORMAT).timestamp()
    return [(end - entry["seconds"], end)]


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``intervals``: runs side by side counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
