"""An evaluation run without ROS: the plan of trials, resumption, progress and the final report.

The eval node (and the real-robot Touch evaluation) drive an ``Evaluation``: ``pending()`` lists
the trials still to run (after those already in the output directory), ``record()`` stores one
scored trial, ``progress_line()`` says how far along the run is, ``finish()`` writes the report
and ``results_table()`` gives the paper's table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.runtime import lock_directory
from gf_eval.results import ResultsFile, TrialRecord, write_run_config
from gf_eval.scoring import summarize
from gf_eval.splits import EmojiSplits, load_splits
from gf_eval.trials import Combination, TrialSpec, combinations_from_manifest, make_trial


def package_versions() -> dict:
    """Versions of the packages a result depends on, recorded in every run's configuration."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("gf_eval", "gf_sim_bridge", "gf_policy", "mani_skill", "sapien", "torch", "transformers", "peft", "ros-rclpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class EvaluationConfig:
    """What to evaluate; everything that identifies the run goes into run.json."""

    output_dir: str
    policy: str
    protocols: tuple[str, ...] = ("ID", "Train", "Val")
    trials_per_protocol: int = 100
    first_index: int = 0  # trial indices first_index .. first_index + trials_per_protocol - 1
    base_seed: int = 0
    split: str = DEFAULT_SPLIT
    demo_manifest: str = ""
    checkpoint: str = ""
    robot: str = "widowx"
    task: str = "sim"
    template: str = ""
    extra: dict = field(default_factory=dict)


class Evaluation:
    """One evaluation run's state: plan, results so far, progress."""

    def __init__(
        self, config: EvaluationConfig, package_versions: dict | None = None, force: bool = False,
        plan: list[TrialSpec] | None = None,
    ):
        """``plan`` replaces the trials of ``config.protocols`` (e.g. the real-robot Touch trials)."""
        self.config = config
        self._lock = lock_directory(Path(config.output_dir), "evaluation")
        self.splits: EmojiSplits = load_splits(config.split)
        self.results = ResultsFile(Path(config.output_dir))
        if plan is None:
            id_combos: list[Combination] | None = None
            if config.demo_manifest:
                id_combos = combinations_from_manifest(Path(config.demo_manifest))
            plan = [
                make_trial(p, i, config.base_seed, self.splits, id_combinations=id_combos, template=config.template or None)
                for p in config.protocols
                for i in range(config.first_index, config.first_index + config.trials_per_protocol)
            ]
        self.plan: list[TrialSpec] = plan
        self.run_info = write_run_config(Path(config.output_dir), {
            "policy": config.policy, "checkpoint": config.checkpoint, "split_name": self.splits.name,
            "split_hash": self.splits.hash, "base_seed": config.base_seed, "robot": config.robot,
            "task": config.task, "protocols": list(config.protocols),
            "trials_per_protocol": config.trials_per_protocol, "first_index": config.first_index, "demo_manifest": config.demo_manifest,
            "template": config.template or self.splits.template, "versions": package_versions or {},
            **config.extra,
        }, force=force)
        self.done: list[TrialRecord] = self.results.repair()
        planned = {s.trial_id for s in self.plan}
        self.done = [r for r in self.done if r.trial_id in planned]
        self._done_ids = {r.trial_id for r in self.done}
        self._started = time.monotonic()
        self._finished_this_session = 0

    def close(self) -> None:
        """Release the output directory (another process may then resume it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def pending(self) -> list[TrialSpec]:
        return [s for s in self.plan if s.trial_id not in self._done_ids]

    def record(self, record: TrialRecord) -> None:
        if record.trial_id in self._done_ids:
            raise ValueError(f"trial {record.trial_id} is already recorded")
        self.results.append(record)
        self.done.append(record)
        self._done_ids.add(record.trial_id)
        self._finished_this_session += 1

    def interrupted_line(self) -> str:
        return (f"evaluation stopped before the end: {len(self.done)} of {len(self.plan)} trials are recorded in "
                f"{self.config.output_dir}; run the same command again to resume")

    @property
    def complete(self) -> bool:
        return not self.pending()

    def progress_line(self) -> str:
        """'[37/60] Val: exe 95% rec 40% sr 38% | 1.2 s/trial, ETA 0:28'."""
        total, n = len(self.plan), len(self.done)
        elapsed = time.monotonic() - self._started
        per_trial = elapsed / max(1, self._finished_this_session)
        remaining = (total - n) * per_trial
        parts = [f"[{n}/{total}]"]
        for protocol, s in summarize([r.to_dict() for r in self.done]).items():
            # Recognition is undefined until something was placed: say so rather than "nan%".
            rec = f"{100 * s.recognition.value:.0f}%" if s.recognition.trials else "-"
            parts.append(f"{protocol}: exe {100 * s.execution.value:.0f}% rec {rec} sr {100 * s.overall.value:.0f}%")
        if self._finished_this_session:
            parts.append(f"{per_trial:.2f} s/trial, ETA {int(remaining // 60)}:{int(remaining % 60):02d}")
        else:
            parts.append("ETA ?")
        return " | ".join(parts)

    def finish(self) -> Path:
        """Write the report folder and return its path."""
        from gf_eval.report import write_report

        return write_report(Path(self.config.output_dir), self.done, self.run_info, self.splits)

    def results_table(self) -> str:
        """The paper's table of the trials recorded so far, titled with the policy and directory."""
        from gf_eval.report import results_table

        return results_table(summarize([r.to_dict() for r in self.done]), f"{self.config.policy} ({self.config.output_dir})")
