"""Evaluation results on disk: one JSON line per scored trial, safe to resume after a crash.

``results.jsonl`` gets one line per trial, flushed and fsynced before the next trial starts, so
a run killed at any moment (even SIGKILL mid-write) loses at most the trial it was running: a
torn last line is dropped when the file is read again and rewritten cleanly on resume.
``run.json`` holds the run's configuration; resuming with a different policy, split or seed is
refused, because the results would no longer be one experiment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gf_eval.scoring import score_placement
from gf_eval.trials import TrialSpec

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
# Configuration keys that must match for results to be resumed into the same file.
IDENTITY_KEYS = ("policy", "checkpoint", "split_name", "split_hash", "base_seed", "robot", "task")


@dataclass(frozen=True)
class TrialRecord:
    """The scored outcome of one trial, as stored in results.jsonl."""

    trial_id: str
    protocol: str
    index: int
    seed: int
    base_seed: int
    instruction: str
    emoji_ids: tuple[str, ...]
    target_index: int
    target_emoji_id: str
    placed_card: int
    executed: bool
    recognised: bool
    success: bool
    upstream_success: bool
    end_reason: str
    steps: int
    wall_time: float
    chunks_rejected: int = 0
    operator_note: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def score(
        cls, spec: TrialSpec, placed_card: int, upstream_success: bool, end_reason: str, steps: int,
        wall_time: float, chunks_rejected: int = 0, operator_note: str = "", extra: dict | None = None,
    ) -> "TrialRecord":
        """Build the record of a finished trial, scoring it with gf_eval.scoring."""
        executed, recognised, success = score_placement(placed_card, spec.target_index)
        return cls(
            trial_id=spec.trial_id, protocol=spec.protocol, index=spec.index, seed=spec.seed,
            base_seed=spec.base_seed, instruction=spec.instruction, emoji_ids=spec.emoji_ids,
            target_index=spec.target_index, target_emoji_id=spec.target.emoji_id, placed_card=placed_card,
            executed=executed, recognised=recognised, success=success,
            upstream_success=bool(upstream_success), end_reason=end_reason, steps=steps,
            wall_time=round(wall_time, 3), chunks_rejected=chunks_rejected, operator_note=operator_note,
            extra=dict(extra or {}),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["emoji_ids"] = list(self.emoji_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrialRecord":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["emoji_ids"] = tuple(d["emoji_ids"])
        return cls(**d)


class ResultsFile:
    """Append-only, crash-safe JSON-lines file of TrialRecords in an output directory."""

    def __init__(self, output_dir: Path):
        self.dir = Path(output_dir)
        self.path = self.dir / RESULTS_FILE

    def read(self) -> list[TrialRecord]:
        """All complete records; a torn last line (crash mid-write) is ignored."""
        if not self.path.exists():
            return []
        records = []
        lines = self.path.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(TrialRecord.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                if i == len(lines) - 1:  # only the final line may be torn
                    break
                raise ValueError(f"{self.path}:{i + 1}: corrupt result line ({exc})") from exc
        return records

    def repair(self) -> list[TrialRecord]:
        """Drop a torn last line and duplicates so appends start on a clean line; return records."""
        records, seen = [], set()
        for r in self.read():
            if r.trial_id not in seen:
                seen.add(r.trial_id)
                records.append(r)
        if self.path.exists():
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, self.path)
        return records

    def append(self, record: TrialRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def write_run_config(output_dir: Path, config: dict, force: bool = False) -> dict:
    """Record the run's configuration, or check it against the one already there (resume)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RUN_FILE
    if path.exists() and not force:
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), config.get(k)) for k in IDENTITY_KEYS if old.get(k) != config.get(k)}
        if diff:
            details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{output_dir} holds results of a different run ({details}); use another output directory")
        merged = {**old, **config, "resumed": old.get("resumed", 0) + 1}
    else:
        merged = {**config, "resumed": 0}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return merged
