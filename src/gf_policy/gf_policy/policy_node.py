"""policy node: runs a policy backend on the robot's observations and publishes action chunks.

Decision points:

* ``trigger: status`` (simulation, lock-step): every /gf/episode_status of the current trial that
  is not done asks for one chunk, taken from the observation with the same time stamp (EE state,
  camera image and ground truth as the backend needs). A step already answered is answered again
  only when that answer is ``answer_again_s`` old and the simulator still asks for the step (the
  chunk was lost on the way; the sim bridge re-announces a step it waits on).
* ``trigger: stream`` (real robot): act on the newest complete observation as soon as the
  previous inference has finished, at most ``stream_rate_hz`` times per second.

Every chunk carries the trial id and the step it starts at, so the executor can recognise stale
chunks. Inference runs in a worker thread; the ROS executor keeps receiving meanwhile.
"""

from __future__ import annotations

import array
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import yaml
from rclpy.node import Node
from sensor_msgs.msg import Image

from gf_bringup import names
from gf_bringup.images import msg_to_image
from gf_bringup.rosutil import (
    config_field,
    config_help,
    create_publisher,
    create_subscription,
    declare_config,
    latched_qos,
    reliable_qos,
    run_node,
    sensor_qos,
    stamp_to_ns,
    status_qos,
)
from gf_bringup.signing import load_signer, sign_message
from gf_eval.ros_msgs import trial_from_msg
from gf_interfaces.msg import ActionChunk, EeState, EpisodeStatus, SimState, Trial
from gf_policy.backend import ActionPlan, PolicyBackend, PolicyObservation, load_backend

KEEP_STAMPS = 8  # observations kept per topic while waiting for the rest of an instant


@dataclass
class PolicyNodeConfig:
    backend: str = config_field("oracle", "policy backend (gf.policy_backends entry point): oracle, chance, replay, vla, remote, ...")
    backend_args: str = config_field("", "YAML mapping of keyword arguments for the backend, e.g. '{checkpoint: /path}'")
    trigger: str = config_field("status", "when to act: status (lock-step sim) or stream (real robot)")
    stream_rate_hz: float = config_field(10.0, "maximum decisions per second in stream mode")
    stream_sync_s: float = config_field(0.05, "stream mode: the image and EE state of one decision may be this far apart (s)")
    control_rate_hz: float = config_field(20.0, "executor control rate: in stream mode the next decision waits until the executed part of a chunk has run")
    answer_again_s: float = config_field(1.0, "lock-step: answer a step again when the last answer is this old and the step is still asked for (s)")
    frame_id: str = config_field("base_link", "frame of the action deltas")
    key_file: str = config_field("", "sign every action chunk with this key file (gf-keys create; '' = unsigned)")


def sim_state_to_dict(msg: SimState) -> dict:
    """gf_interfaces/SimState -> the expert's privileged-state dict (world frame)."""
    p, q = msg.tcp_pose.position, msg.tcp_pose.orientation
    return {
        "tcp_pos": np.array([p.x, p.y, p.z]),
        "tcp_quat_wxyz": np.array([q.w, q.x, q.y, q.z]),
        "cube_pos": np.array([msg.cube_pose.position.x, msg.cube_pose.position.y, msg.cube_pose.position.z]),
        "cube_grasped": bool(msg.grasped),
        "gripper_opening": float(msg.gripper_opening),
        "card_positions": np.array([[c.x, c.y, c.z] for c in msg.card_positions]),
    }


class LockStepRule:
    """``trigger: status``: one chunk per asked step, from the observation stamped like the status.

    Every input may complete the observation a pending status waits for, so every input wakes it.
    """

    wakes_on_input = True

    def __init__(self, cfg: PolicyNodeConfig):
        self.cfg = cfg
        self.pending: EpisodeStatus | None = None
        self.answered: dict[tuple[str, int], float] = {}  # (trial, step) -> when its chunk went out (inf: in flight)

    def start(self, node: PolicyNode) -> None:
        pass

    def reset(self) -> None:
        self.pending, self.answered = None, {}

    def on_status(self, msg: EpisodeStatus) -> None:
        self.pending = msg

    def decide(self, node: PolicyNode) -> PolicyObservation | None:
        """The observation to act on now, or None (the node's lock held)."""
        status = self.pending
        if status is None or node.trial is None or status.trial_id != node.trial.trial_id:
            return None
        key = (status.trial_id, status.step)
        if time.monotonic() - self.answered.get(key, -math.inf) < self.cfg.answer_again_s:
            return None  # answered (or being answered) recently
        obs = node.observation_at(stamp_to_ns(status.header.stamp), status.step)
        if obs is not None:
            self.answered[key] = math.inf
            self.pending = None
        return obs

    def published(self, plan: ActionPlan, steps: int) -> None:
        pass

    def finished(self, obs: PolicyObservation) -> None:
        """Inference for ``obs`` is over, published or not (the node's lock held)."""
        if (obs.trial.trial_id, obs.step) in self.answered:
            self.answered[(obs.trial.trial_id, obs.step)] = time.monotonic()


class StreamRule:
    """``trigger: stream``: the newest complete observation, at most ``stream_rate_hz`` times a
    second, one inference at a time, and not before the executed part of the last chunk has run.
    A timer wakes it; inputs only refresh what it will see."""

    wakes_on_input = False

    def __init__(self, cfg: PolicyNodeConfig):
        self.cfg = cfg
        self.busy = False
        self.next_decision = 0.0  # monotonic time before which it does not act

    def start(self, node: PolicyNode) -> None:
        node.create_timer(1.0 / self.cfg.stream_rate_hz, node.try_decide)

    def reset(self) -> None:
        self.next_decision = 0.0

    def on_status(self, msg: EpisodeStatus) -> None:
        pass

    def decide(self, node: PolicyNode) -> PolicyObservation | None:
        if self.busy or node.trial is None or node.trial_done or time.monotonic() < self.next_decision:
            return None
        obs = node.latest_observation(self.cfg.stream_sync_s)
        self.busy = obs is not None
        return obs

    def published(self, plan: ActionPlan, steps: int) -> None:
        # The executor queues chunks: ask again only once the executed part has run.
        self.next_decision = time.monotonic() + (plan.execute_steps or steps) / self.cfg.control_rate_hz

    def finished(self, obs: PolicyObservation) -> None:
        self.busy = False


DECISION_RULES = {"status": LockStepRule, "stream": StreamRule}


class PolicyNode(Node):
    """Observations in, action chunks out; when to act is the decision rule's (``trigger``).

    ``backend``: a ready backend to use instead of loading the ``backend`` parameter's (tests, or a
    program that embeds the node)."""

    def __init__(self, backend: PolicyBackend | None = None, **node_kwargs):
        super().__init__("policy", **node_kwargs)
        self.cfg = declare_config(self, PolicyNodeConfig)
        if self.cfg.trigger not in DECISION_RULES:
            raise ValueError(f"trigger must be one of {sorted(DECISION_RULES)}, got {self.cfg.trigger!r}")
        self.rule = DECISION_RULES[self.cfg.trigger](self.cfg)
        started = time.perf_counter()
        if backend is None:
            kwargs = yaml.safe_load(self.cfg.backend_args) if self.cfg.backend_args.strip() else {}
            if not isinstance(kwargs, dict):
                raise ValueError(f"backend_args must be a YAML mapping, got {self.cfg.backend_args!r}")
            backend = load_backend(self.cfg.backend, **kwargs)
        self.backend = backend
        self.needs_image, self.needs_privileged = backend.needs_image, backend.needs_privileged
        self.signer = load_signer(self.cfg.key_file)
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.trial = None
        self.trial_done = False
        self._ee: dict[int, EeState] = {}
        self._images: dict[int, Image] = {}
        self._truth: dict[int, SimState] = {}
        self._trial_stamp = -1  # announcement stamp of the current trial (a re-announcement restarts it)
        self._chunks_published = 0  # in the current trial
        self.pub_chunk = create_publisher(self, ActionChunk, names.ACTION_CHUNK, reliable_qos(), lean=True)
        create_subscription(self, Trial, names.TRIAL, self._on_trial, latched_qos(1), lean=True)
        create_subscription(self, EeState, names.EE_STATE, self._store(self._ee), reliable_qos(), lean=True)
        if self.needs_image:
            create_subscription(self, Image, names.IMAGE, self._store(self._images), sensor_qos(), lean=True)
        if self.needs_privileged:
            create_subscription(self, SimState, names.SIM_STATE, self._store(self._truth), reliable_qos(), lean=True)
        create_subscription(self, EpisodeStatus, names.EPISODE_STATUS, self._on_status, status_qos(), lean=True)
        self.rule.start(self)
        self.get_logger().info(
            f"policy backend {self.cfg.backend!r} ready in {time.perf_counter() - started:.1f} s "
            f"(image={self.needs_image}, ground_truth={self.needs_privileged}, trigger={self.cfg.trigger})"
        )

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self.backend.close()

    # --- inputs ---------------------------------------------------------------------------------

    def _store(self, table: dict):
        def callback(msg) -> None:
            with self._lock:
                stamp = stamp_to_ns(msg.header.stamp)
                table.pop(stamp, None)
                table[stamp] = msg
                while len(table) > KEEP_STAMPS:  # forget the oldest arrival (a foreign stamp cannot stick)
                    table.pop(next(iter(table)))
            if self.rule.wakes_on_input:
                self.try_decide()

        return callback

    def _on_trial(self, msg: Trial) -> None:
        trial, stamp = trial_from_msg(msg), stamp_to_ns(msg.header.stamp)
        with self._lock:
            same = self.trial is not None and self.trial.trial_id == trial.trial_id
            if same and stamp == self._trial_stamp:
                return  # the same announcement again (latched topic)
            # A new trial, or the same trial announced anew (e.g. re-run after the operator voided it).
            self.trial, self._trial_stamp, self.trial_done = trial, stamp, False
            self._chunks_published = 0
            for table in (self._ee, self._images, self._truth):
                table.clear()  # observations of the previous trial must not feed this one
            self.rule.reset()
        self._worker.submit(self.backend.reset, trial).result()
        self.get_logger().debug(f"trial {trial.trial_id}: {trial.instruction}")
        if self.rule.wakes_on_input:
            self.try_decide()

    def _on_status(self, msg: EpisodeStatus) -> None:
        with self._lock:
            if msg.done:
                if self.trial is not None and msg.trial_id == self.trial.trial_id and not self.trial_done:
                    self.trial_done = True  # stop spending compute on a finished trial
                    self.get_logger().info(f"trial {msg.trial_id} ended: {self._chunks_published} action chunks published")
                return
            self.rule.on_status(msg)
        if self.rule.wakes_on_input:
            self.try_decide()

    # --- observations (the node's lock held) ----------------------------------------------------

    def observation_at(self, stamp: int, step: int) -> PolicyObservation | None:
        """The complete observation stamped ``stamp``, or None while parts are missing."""
        return self._build(self._ee.get(stamp), self._images.get(stamp), self._truth.get(stamp), step, stamp)

    def latest_observation(self, sync_s: float) -> PolicyObservation | None:
        """The newest image with the EE state nearest to it in time.

        Camera and arm stamp their messages independently, so the two are paired by time, not by
        equal stamps; a pair further apart than ``sync_s`` is not used.
        """
        if not self._ee:
            return None
        if not self.needs_image:
            newest = max(self._ee)
            return self._build(self._ee[newest], None, self._truth.get(newest), 0, newest)
        if not self._images:
            return None
        image_stamp = max(self._images)
        ee_stamp = min(self._ee, key=lambda s: abs(s - image_stamp))
        if abs(ee_stamp - image_stamp) > sync_s * 1e9:
            return None
        return self._build(self._ee[ee_stamp], self._images[image_stamp], self._truth.get(ee_stamp), 0, image_stamp)

    def _build(self, ee, image, truth, step: int, stamp: int) -> PolicyObservation | None:
        if ee is None or (self.needs_image and image is None) or (self.needs_privileged and truth is None):
            return None
        return PolicyObservation(
            trial=self.trial, step=step, proprio=np.asarray(ee.proprio, dtype=np.float32),
            image=msg_to_image(image) if image is not None else None,
            privileged=sim_state_to_dict(truth) if truth is not None else None, stamp_ns=stamp,
        )

    # --- decisions ------------------------------------------------------------------------------

    def try_decide(self) -> None:
        """Ask the decision rule whether to act now, and act (inline or in the worker)."""
        with self._lock:
            obs = self.rule.decide(self)
        if obs is None:
            return
        if self.backend.runs_inline:
            self._infer_and_publish(obs)
        else:
            self._worker.submit(self._infer_and_publish, obs)

    def _infer_and_publish(self, obs: PolicyObservation) -> None:
        try:
            plan = self.backend.act(obs)
            actions = np.asarray(plan.actions, dtype=np.float32)
            if actions.ndim != 2:
                raise ValueError(f"backend returned actions of shape {actions.shape}, expected (horizon, dim)")
            msg = ActionChunk()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.cfg.frame_id
            msg.trial_id = obs.trial.trial_id
            msg.step_index = obs.step
            msg.horizon = int(actions.shape[0])
            msg.execute_steps = int(plan.execute_steps)
            msg.action_dim = int(actions.shape[1])
            msg.action_space = plan.action_space
            msg.data = array.array("f", actions.reshape(-1).tobytes())
            if self.signer is not None:
                sign_message(self.signer, msg)
            with self._lock:
                if self.trial_done or self.trial is None or self.trial.trial_id != msg.trial_id:
                    return  # the trial ended (or another began) while this chunk was computed
                self.pub_chunk.publish(msg)
                self._chunks_published += 1
                self.rule.published(plan, actions.shape[0])
        except Exception as exc:  # noqa: BLE001 - keep the node alive; the eval times the trial out
            self.get_logger().error(f"policy backend failed on {obs.trial.trial_id} step {obs.step}: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.rule.finished(obs)


def main(args=None) -> int:
    return run_node(PolicyNode, args, help_text=f"gf-policy --ros-args [-p name:=value ...]\n\nparameters:\n{config_help(PolicyNodeConfig)}")
