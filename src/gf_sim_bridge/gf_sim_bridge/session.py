"""One simulated episode at a time, stepped in lock-step with the actions it is given (ROS-free).

The sim bridge node is a thin adapter around ``SimSession``; benchmarks and tests drive it
directly to compare the ROS graph with a plain Python loop.

Time: the session keeps a simulated clock that only advances with control steps (1/20 s each)
and never goes backwards across episodes, so nodes running on ``/clock`` see monotonic time.
An episode ends with ``success`` (the benchmark's rule, as upstream), or after ``max_steps``
control steps with ``wrong_card`` or ``timeout`` (``gf_eval.scoring``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from gf_bringup.constants import CONTROL_PERIOD_NS, DEFAULT_SPLIT, EPISODE_STEPS
from gf_eval.action_space import ValidChunk
from gf_eval.scoring import END_SUCCESS, END_TIMEOUT, END_WRONG_CARD
from gf_eval.trials import TrialSpec

# Torch CPU threads for a process that runs one env: its tensors are tiny, so a second thread
# only adds hand-offs, and when other processes (policy, eval) want the other core the two
# threads wait for each other. A one-off timing of SimSession.execute on this 2-core host (oracle,
# Val trials): 3.7 ms per control step with 1 thread vs 4.2 ms with 2.
SIM_TORCH_THREADS = 1


def limit_torch_threads(threads: int = SIM_TORCH_THREADS) -> None:
    """Process-wide torch CPU thread count for simulation processes (0 leaves torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


@dataclass
class SimConfig:
    robot: str = "widowx"
    image_size: int = 224
    split: str = DEFAULT_SPLIT
    max_steps: int = EPISODE_STEPS
    emoji_fraction: float = 0.25
    obs_mode: str = "none"


@dataclass
class EpisodeStatusData:
    """Progress of the current episode (mirrors gf_interfaces/EpisodeStatus)."""

    trial_id: str = ""
    step: int = 0
    done: bool = False
    reason: str = "running"
    placed_card: int = -1
    success: bool = False
    upstream_success: bool = False
    cube_released: bool = True
    arm_still: bool = True
    card_distances: tuple[float, ...] = ()
    chunks_executed: int = 0
    chunks_rejected: int = 0
    last_rejection: str = ""


@dataclass
class Observation:
    """What the robot's sensors report at one instant (no rendering unless asked)."""

    sim_time_ns: int
    step: int
    proprio: np.ndarray
    joint_names: list[str]
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    tcp_pose_base: tuple[np.ndarray, np.ndarray]  # position (m), quaternion (x, y, z, w), robot base frame
    gripper_opening: float
    image: np.ndarray | None = None
    privileged: dict | None = field(default=None, repr=False)


class SimSession:
    """Owns one GrinningFace env; ``reset(trial)``, ``execute(chunk)``, ``observe()``."""

    def __init__(self, config: SimConfig | None = None, **env_kwargs):
        import gf_sim_bridge.env  # noqa: F401 - registers GrinningFace-v1

        self.config = config or SimConfig()
        self.env = gym.make(
            "GrinningFace-v1", robot=self.config.robot, image_size=self.config.image_size,
            split=self.config.split, emoji_fraction=self.config.emoji_fraction, obs_mode=self.config.obs_mode,
            max_episode_steps=self.config.max_steps, **env_kwargs,
        )
        self.task = self.env.unwrapped
        self.trial: TrialSpec | None = None
        self.status = EpisodeStatusData()
        self.sim_time_ns = 0
        self.step_ns = CONTROL_PERIOD_NS

    def close(self) -> None:
        self.env.close()

    def reset(self, trial: TrialSpec) -> None:
        """Lay the scene out exactly as ``trial`` says and start a new episode."""
        self.env.reset(seed=trial.seed, options={"trial": trial})
        # The reset is an instant of its own: the first observation of an episode never shares a
        # stamp with the last one of the previous episode (consumers key observations by stamp).
        self.sim_time_ns += self.step_ns
        self.trial = trial
        self.status = EpisodeStatusData(trial_id=trial.trial_id)
        self._update_status(self.task.get_info())

    def _update_status(self, info: dict) -> None:
        s = self.status
        s.placed_card = int(info["placed_card"][0])
        s.success = bool(info["success"][0])
        s.upstream_success = bool(info["upstream_success"][0])
        s.cube_released = bool(info["cube_released"][0])
        s.arm_still = bool(info["arm_still"][0])
        s.card_distances = tuple(float(d) for d in info["card_distances"][0])

    def execute(self, chunk: ValidChunk) -> int:
        """Run the chunk's actions one per control step until it ends or the episode does."""
        if self.trial is None or self.status.done:
            raise RuntimeError("no running episode")
        executed = 0
        for action in chunk.actions:
            _, _, _, _, info = self.env.step(action)
            executed += 1
            self.sim_time_ns += self.step_ns
            self.status.step += 1
            self._update_status(info)
            if self.status.success:
                self.end(END_SUCCESS)
                break
            if self.status.step >= self.config.max_steps:
                self.end(END_WRONG_CARD if self.status.placed_card >= 0 else END_TIMEOUT)
                break
        self.status.chunks_executed += 1
        return executed

    def end(self, reason: str) -> None:
        self.status.done = True
        self.status.reason = reason

    def reject(self, reason: str) -> None:
        self.status.chunks_rejected += 1
        self.status.last_rejection = reason

    def observe(self, render: bool, privileged: bool = False) -> Observation:
        """The current sensor readings; the camera is rendered only when ``render`` is true."""
        task = self.task
        names, qpos, qvel = task.joint_state()
        p, q = task.tcp_pose_world()
        base = np.asarray(task.robot.base_xyz)
        return Observation(
            sim_time_ns=self.sim_time_ns, step=self.status.step, proprio=task.proprio(),
            joint_names=names, joint_positions=qpos, joint_velocities=qvel,
            tcp_pose_base=(p - base, np.array([q[1], q[2], q[3], q[0]])),
            gripper_opening=task.gripper_opening(),
            image=task.policy_image() if render else None,
            privileged=task.privileged_state() if privileged else None,
        )
