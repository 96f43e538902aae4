"""The stages of a mini recipe (``stages``): the command each runs, how to tell it is finished
(demos in the manifest, the final checkpoint, complete sweep and evaluation results) and its
time estimate.

Separate from ``gf_training.mini``, which runs them: the checks only read files, so they stay
testable and usable (``--dry-run``) without starting anything.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.runtime import console_script
from gf_training.mini_plan import EVAL_PROTOCOLS, PROBE_DIR, Plan, VLData

# The policy node runs torch on one thread: the simulator needs the other core, and two
# intra-op threads competing with it for one core are slower than one.
POLICY_BACKEND_ARGS = {"num_threads": 1}
PROBE_SCENES = 100  # a VLM recipe's which-card questions per list (gf-probe --scenes)
STAGES = ("tokenizer", "vlm", "pretrain", "demos", "vl", "train", "export", "probe", "sweep", "eval", "report")

# Rough rates on a 2-core CPU, for the between-stage estimate of the remaining time only:
# demo episodes with gf-demos' 2 workers, optimiser steps of the mini model, evaluated trials
# (a failed trial runs the full 200 steps, a successful one about 50).
ESTIMATED_RATES = {"demo_s_per_episode": 1.6, "vl_s_per_scene": 0.5, "train_steps_per_s": 3.0,
                   "eval_s_per_trial": 9.0}


# ---------------------------------------------------------------------------------------------
# what is finished
# ---------------------------------------------------------------------------------------------


def usable_demos(demo_dir: Path) -> int:
    """Complete, successful episodes in a demo directory's manifest (what training uses)."""
    manifest = demo_dir / "manifest.jsonl"
    if not manifest.exists():
        return 0
    count = 0
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            count += bool(entry.get("complete") and entry.get("success"))
    return count


def vl_samples(directory: Path) -> int:
    """Samples in a gf-vl-data directory's manifest (0 if there is none yet)."""
    from gf_training.vl_data import MANIFEST

    manifest = directory / MANIFEST
    if not manifest.exists():
        return 0
    stat = manifest.stat()
    return _manifest_lines(manifest, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _manifest_lines(manifest: Path, mtime_ns: int, size: int) -> int:
    """Non-empty lines, counted once per version of the file: the VLM's manifests hold 44 000
    lines and every row's stages ask about them."""
    return sum(1 for line in manifest.read_bytes().splitlines() if line.strip())


def final_checkpoint(plan: Plan) -> Path:
    return plan.final_checkpoint


def trained(plan: Plan) -> bool:
    """The final checkpoint exists and was trained with the plan's config: a run of changed data
    or model is not done (its gf-train then refuses to resume it, saying what changed)."""
    from gf_training.checkpoints import config_changes
    from gf_training.train import INFERENCE_WEIGHTS

    if not (final_checkpoint(plan) / INFERENCE_WEIGHTS).exists():
        return False
    return not config_changes(plan.run_dir, plan.resolved_config().to_dict())


def sweep_file(plan: Plan) -> Path:
    from gf_training.sweep import SWEEP_DIR

    return plan.run_dir / SWEEP_DIR / "sweep.json"


def swept(plan: Plan) -> bool:
    """The sweep covered every checkpoint with enough trials."""
    from gf_training.sweep import find_checkpoints

    path = sweep_file(plan)
    if not path.exists():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    done = {c["step"]: c["protocols"] for c in data.get("checkpoints", [])}
    wanted = [s for s, _ in find_checkpoints(plan.run_dir)]
    return bool(wanted) and all(
        s in done and all(done[s].get(p, {}).get("trials", 0) >= plan.sweep_trials for p in plan.recipe.sweep_protocols)
        for s in wanted)


def chosen_checkpoint(plan: Plan) -> Path | None:
    """The checkpoint the evaluation uses: the sweep's best, the final one without a sweep."""
    if plan.sweep_trials <= 0:
        return final_checkpoint(plan)
    path = sweep_file(plan)
    if not path.exists():
        return None
    best = json.loads(path.read_text(encoding="utf-8")).get("best")
    return Path(best["checkpoint"]) if best else None


def evaluated(plan: Plan) -> bool:
    from gf_eval.results import ResultsFile
    from gf_training.sweep import is_complete

    records = [r.to_dict() for r in ResultsFile(plan.eval_dir).read()]
    return is_complete(records, plan.eval_trials, EVAL_PROTOCOLS)


# ---------------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    done: Callable[[], bool]
    command: Callable[[], list[str] | None]  # None: runs in this process (the report)
    estimate_s: Callable[[], float]


def eval_command(plan: Plan, checkpoint: Path | str) -> list[str]:
    """``checkpoint``: a directory (made absolute: the nodes need not share this working
    directory) or a placeholder text for a dry run."""
    if isinstance(checkpoint, Path):
        checkpoint = checkpoint.resolve()
    args = {"checkpoint": str(checkpoint), **POLICY_BACKEND_ARGS}
    backend = yaml.safe_dump(args, default_flow_style=True, width=10**6).strip()
    return [console_script("gf-launch"), "sim_eval", "policy:=vla", f"backend_args:={backend}", f"checkpoint:={checkpoint}",
            f"protocols:=[{','.join(EVAL_PROTOCOLS)}]", f"trials:={plan.eval_trials}", f"output_dir:={plan.eval_dir}"]


def stages(plan: Plan) -> list[Stage]:
    rates = ESTIMATED_RATES
    checkpoints = len(plan.resolved_config().train.save_steps) or 1

    def eval_cmd() -> list[str]:
        chosen = chosen_checkpoint(plan)
        return eval_command(plan, chosen if chosen is not None else "<best checkpoint of the sweep>")

    def vl_stage(data: VLData) -> Stage:
        directory = plan.vl_dir(data)
        wanted = data.samples(DEFAULT_SPLIT)  # gf-vl-data's default split, as the command runs it
        return Stage("vl", lambda: vl_samples(directory) >= wanted,
                     lambda: [console_script("gf-vl-data"), *data.command_args(), "--out", str(directory)],
                     lambda: max(wanted - vl_samples(directory), 0) * rates["vl_s_per_scene"] * (not data.per_emoji))

    train = Stage("train", lambda: trained(plan), lambda: [console_script("gf-train"), *plan.train_args()],
                  lambda: plan.train_steps() / rates["train_steps_per_s"])
    tokenizer = Stage("tokenizer", lambda: (plan.tokenizer_dir / "tokenizer_config.json").exists(),
                      lambda: [console_script("gf-vl-data"), "tokenizer", "--out", str(plan.tokenizer_dir)], lambda: 5.0)
    base = plan.base_plan
    # The base recipe runs whole (its own stages resume), so the run starts from a probed VLM or a
    # finished pre-training; the stage is named after the base's kind.
    base_stages = [] if base is None else [
        Stage(base.recipe.kind, lambda: all(s.done() for s in stages(base)),
              lambda: [console_script("gf-mini"), "run", base.recipe.name, "--root", str(base.root)],
              lambda: sum(s.estimate_s() for s in stages(base) if not s.done()))]
    if plan.recipe.kind == "vlm":
        return [
            tokenizer,
            *base_stages,
            *(vl_stage(d) for d in plan.recipe.vl_data),
            train,
            # A retrained VLM is exported and probed again.
            Stage("export", lambda: trained(plan) and (plan.vlm_export_dir / "config.json").exists(),
                  lambda: [console_script("gf-vlm"), "export", str(final_checkpoint(plan)), "--out",
                           str(plan.vlm_export_dir)], lambda: 10.0),
            # The final checkpoint (the export's weights) keeps the camera crop the scenes need.
            Stage("probe", lambda: trained(plan) and (plan.run_dir / PROBE_DIR / "summary.json").exists(),
                  lambda: [console_script("gf-probe"), str(final_checkpoint(plan)), "--out", str(plan.run_dir / PROBE_DIR),
                           "--scenes", str(PROBE_SCENES), "--table-cards", "--name", plan.recipe.name, "--no-progress"],
                  lambda: 120.0 + 3 * PROBE_SCENES * rates["vl_s_per_scene"]),
        ]
    demos = Stage("demos", lambda: usable_demos(plan.demo_dir) >= plan.demo_episodes,
                  lambda: [console_script("gf-demos"), "generate", "--split", "train", "--episodes",
                           str(plan.demo_episodes), "--out", str(plan.demo_dir),
                           *([] if plan.recipe.demo_split == DEFAULT_SPLIT else ["--split-file", plan.recipe.demo_split]),
                           *(["--seed", str(plan.recipe.demo_seed)] if plan.recipe.demo_seed else []),
                           *([] if plan.recipe.expert_profile == "fast"
                             else ["--backend-args", f"{{profile: {plan.recipe.expert_profile}}}"])],
                  lambda: max(plan.demo_episodes - usable_demos(plan.demo_dir), 0) * rates["demo_s_per_episode"])
    before = [
        *([tokenizer] if plan.recipe.catalogue_tokenizer and base is None else []),
        *base_stages,
        demos,
        *(vl_stage(d) for d in plan.recipe.vl_data),
        train,
    ]
    if plan.recipe.kind == "pretrain":
        return before
    return [
        *before,
        Stage("sweep", lambda: plan.sweep_trials <= 0 or swept(plan),
              lambda: [console_script("gf-sweep"), str(plan.run_dir), "--trials", str(plan.sweep_trials),
                       "--protocols", ",".join(plan.recipe.sweep_protocols),
                       *(f"--backend-arg={k}={v}" for k, v in POLICY_BACKEND_ARGS.items())],
              lambda: checkpoints * plan.sweep_trials * len(plan.recipe.sweep_protocols) * rates["eval_s_per_trial"]),
        Stage("eval", lambda: evaluated(plan), eval_cmd,
              lambda: plan.eval_trials * len(EVAL_PROTOCOLS) * rates["eval_s_per_trial"]),
        Stage("report", lambda: False, lambda: None, lambda: 5.0),
    ]
