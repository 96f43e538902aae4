"""eval node: runs the benchmark's trials through the ROS graph, scores and reports them.

For every pending trial (protocol x index, after those already in the output directory) it
announces /gf/trial, calls the sim bridge's reset_trial, waits until /gf/episode_status says the
episode is done (success or the episode length) or until the policy makes no progress for
``policy_timeout_s`` wall-clock seconds (sim time stands still while a lock-step sim waits for a
chunk), scores the outcome with gf_eval.scoring, appends it to results.jsonl (fsynced) and
publishes /gf/trial_result. At the end it writes the report folder, prints the paper's table and
shuts the node down (exit code 0 when every trial ran).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from rclpy.node import Node

from gf_bringup import names
from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.rosutil import (
    config_field,
    config_help,
    create_publisher,
    create_subscription,
    declare_config,
    latched_qos,
    reliable_qos,
    run_node,
    status_qos,
)
from gf_eval.evaluation import Evaluation, EvaluationConfig, package_versions
from gf_eval.evaluation_loop import EvaluationLoop
from gf_eval.results import TrialRecord
from gf_eval.ros_msgs import result_to_msg, trial_to_msg
from gf_interfaces.msg import EpisodeStatus, Trial, TrialResult
from gf_interfaces.srv import ResetTrial


@dataclass
class EvalNodeConfig:
    output_dir: str = config_field("outputs/sim_eval", "directory of results.jsonl, run.json and report/ (resumed if it exists)")
    policy: str = config_field("oracle", "name of the evaluated policy (recorded in run.json; must match on resume)")
    checkpoint: str = config_field("", "checkpoint of the evaluated policy (recorded in run.json)")
    protocols: list[str] = config_field(["ID", "Train", "Val"], "protocols to run, in order")
    trials: int = config_field(100, "trials per protocol")
    first_index: int = config_field(0, "index of the first trial of each protocol (to split a run across workers)")
    seed: int = config_field(0, "base seed of the trial specs")
    split: str = config_field(DEFAULT_SPLIT, "emoji split file (name or path)")
    demo_manifest: str = config_field("", "demo manifest whose episodes define the ID protocol ('' = the canonical demo set)")
    robot: str = config_field("widowx", "robot (recorded in run.json)")
    template: str = config_field("", "instruction template with {desc} ('' = the split's)")
    policy_timeout_s: float = config_field(60.0, "wall-clock seconds without episode progress before a trial ends as policy_timeout")
    startup_timeout_s: float = config_field(180.0, "seconds to wait for the sim bridge and the policy to come up")
    progress_every: int = config_field(1, "log a progress line every N trials")
    force: bool = config_field(False, "start over in output_dir even if it holds a different run")


class EvalNode(EvaluationLoop, Node):
    def __init__(self, **node_kwargs):
        super().__init__("eval", **node_kwargs)
        self.cfg = declare_config(self, EvalNodeConfig)
        self.evaluation = Evaluation(EvaluationConfig(
            output_dir=self.cfg.output_dir, policy=self.cfg.policy, protocols=tuple(self.cfg.protocols),
            trials_per_protocol=self.cfg.trials, first_index=self.cfg.first_index, base_seed=self.cfg.seed, split=self.cfg.split,
            demo_manifest=self.cfg.demo_manifest, checkpoint=self.cfg.checkpoint, robot=self.cfg.robot,
            template=self.cfg.template,
        ), package_versions(), force=self.cfg.force)
        self.pub_trial = create_publisher(self, Trial, names.TRIAL, latched_qos(1))
        self.pub_result = create_publisher(self, TrialResult, names.TRIAL_RESULT, reliable_qos())
        self.reset_client = self.create_client(ResetTrial, names.RESET_TRIAL)
        create_subscription(self, EpisodeStatus, names.EPISODE_STATUS, self._on_status, status_qos(), lean=True)
        self._status_lock = threading.Condition()
        self._current: str | None = None
        self._status: EpisodeStatus | None = None
        self.start_loop("evaluation")

    def close(self) -> None:
        self.stopped_from_outside()

    def _on_status(self, msg: EpisodeStatus) -> None:
        with self._status_lock:
            if msg.trial_id == self._current:
                self._status = msg
                if msg.done:  # progress is polled (once a second); waking the loop every step costs a context switch
                    self._status_lock.notify_all()

    # --- the evaluation loop (own thread; the executor keeps serving callbacks) -----------

    def _wait_for_graph(self) -> bool:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        if not self.reset_client.wait_for_service(timeout_sec=self.cfg.startup_timeout_s):
            if self.context.ok():  # (it also returns when Ctrl-C shut the context down)
                self.get_logger().error("the sim bridge's reset_trial service did not appear")
            return False
        while self.count_publishers(names.ACTION_CHUNK) == 0:
            if time.monotonic() > deadline:
                self.get_logger().error("no policy publishes /gf/action_chunk")
                return False
            time.sleep(0.05)
        return True

    def _run(self) -> int:
        ev = self.evaluation
        pending = ev.pending()
        self.get_logger().info(
            f"{len(ev.plan)} trials planned ({', '.join(ev.config.protocols)} x {ev.config.trials_per_protocol}), "
            f"{len(ev.done)} already in {ev.config.output_dir}, {len(pending)} to run"
        )
        if pending and not self._wait_for_graph():
            return 3
        for i, spec in enumerate(pending, 1):
            record = self._run_trial(spec)
            if not self.context.ok():
                return 0  # stopped from outside: the trial in flight is not recorded, a resume re-runs it
            if record is None:
                return 4
            ev.record(record)
            self.pub_result.publish(result_to_msg(record, self.get_clock().now().to_msg()))
            if i % max(1, self.cfg.progress_every) == 0 or i == len(pending):
                self.get_logger().info(f"{ev.progress_line()}  last: {record.trial_id} {record.end_reason} placed={record.placed_card} target={record.target_index}")
        report = ev.finish()
        print("\n" + ev.results_table() + f"\nreport: {report}\n", file=sys.stdout, flush=True)
        return 0

    def _run_trial(self, spec) -> TrialRecord | None:
        started = time.monotonic()
        with self._status_lock:
            self._current, self._status = spec.trial_id, None
        msg = trial_to_msg(spec, self.get_clock().now().to_msg())
        self.pub_trial.publish(msg)
        future = self.reset_client.call_async(ResetTrial.Request(trial=msg))
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        if not answered.wait(timeout=self.cfg.startup_timeout_s):
            self.get_logger().error(f"reset_trial for {spec.trial_id} timed out")
            return None
        response = future.result()
        if not response.ok:
            self.get_logger().error(f"the sim bridge refused {spec.trial_id}: {response.message}")
            return None
        end_reason, last_progress, seen = "", time.monotonic(), (-1, -1)
        with self._status_lock:
            while True:
                status = self._status
                if status is not None:
                    if status.done:
                        end_reason = status.reason
                        break
                    if (status.step, status.chunks_rejected) != seen:
                        seen, last_progress = (status.step, status.chunks_rejected), time.monotonic()
                waited = time.monotonic() - last_progress
                if waited >= self.cfg.policy_timeout_s:
                    end_reason = "policy_timeout"
                    self.get_logger().warning(f"{spec.trial_id}: no progress for {waited:.0f} s, ending the trial")
                    break
                self._status_lock.wait(timeout=min(1.0, self.cfg.policy_timeout_s - waited))
            self._current = None
        status = status or EpisodeStatus(placed_card=-1)
        return TrialRecord.score(
            spec, placed_card=status.placed_card, upstream_success=status.upstream_success, end_reason=end_reason,
            steps=status.step, wall_time=time.monotonic() - started, chunks_rejected=status.chunks_rejected,
        )


def main(args=None) -> int:
    return run_node(EvalNode, args, help_text=f"gf-eval --ros-args [-p name:=value ...]\n\nparameters:\n{config_help(EvalNodeConfig)}")
