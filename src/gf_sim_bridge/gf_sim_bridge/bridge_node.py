"""sim_bridge node: the simulated arm, camera and table of the GrinningFace task on ROS 2 topics.

Lock-step: nothing moves until an action chunk arrives; each accepted chunk runs one row per
control step as fast as the machine allows, then the node publishes one observation (sim time on
/clock, joint states, EE state, the camera image when anyone subscribes to it, optionally the
privileged ground truth) and finally /gf/episode_status, which tells the policy that everything
for that instant has been sent. Chunks are validated by gf_eval.action_space before any row
runs; a rejected chunk is counted in the episode status and never executed.

A lost message must not stall the loop: when no valid chunk came for ``reannounce_s`` while an
episode runs, the current observation is published again, and the policy answers the step again.
Rejections are logged once per reason and then summarised (a flood of bad chunks stays a few lines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from geometry_msgs.msg import Point
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState

from gf_bringup import names
from gf_bringup.constants import DEFAULT_SPLIT, EPISODE_STEPS
from gf_bringup.images import camera_info_msg, image_to_msg
from gf_bringup.rosutil import (
    SummarisedWarnings,
    config_field,
    config_help,
    create_publisher,
    create_subscription,
    declare_config,
    ns_to_stamp,
    reliable_qos,
    run_node,
    sensor_qos,
    status_qos,
)
from gf_eval.action_space import ChunkRejected, validate_chunk
from gf_eval.ros_msgs import trial_from_msg
from gf_interfaces.msg import ActionChunk, EeState, EpisodeStatus, SimState
from gf_interfaces.srv import ResetTrial
from gf_sim_bridge.session import SIM_TORCH_THREADS, SimConfig, SimSession, limit_torch_threads


@dataclass
class BridgeConfig:
    robot: str = config_field("widowx", "robot in the scene: widowx (WidowX 250 S) or panda")
    image_size: int = config_field(224, "policy camera resolution (square, pixels)")
    split: str = config_field(DEFAULT_SPLIT, "emoji split file (name or path) the trials come from")
    max_steps: int = config_field(EPISODE_STEPS, "episode length in control steps")
    render: str = config_field("auto", "camera rendering: auto (when /camera/image_raw has subscribers), always, never")
    ground_truth: bool = config_field(False, "publish privileged simulator state on /gf/sim_state (oracle baselines only)")
    frame_id: str = config_field("base_link", "frame of the EE state and action deltas")
    viewer: bool = config_field(False, "open the SAPIEN viewer window and draw every executed chunk (needs a display)")
    reannounce_s: float = config_field(2.0, "wall-clock seconds without a valid chunk before the current observation is published again")
    rejection_log_s: float = config_field(10.0, "rejected chunks: the first of each reason is logged, the rest summarised this often (s)")
    torch_threads: int = config_field(
        SIM_TORCH_THREADS, "torch CPU threads of this process (process-wide, also when composed; 0: torch's default)"
    )


class SimBridgeNode(Node):
    """Adapter: SimSession <-> topics and the reset_trial service."""

    def __init__(self, **node_kwargs):
        super().__init__("sim_bridge", **node_kwargs)
        self.cfg = declare_config(self, BridgeConfig)
        started = time.perf_counter()
        limit_torch_threads(self.cfg.torch_threads)
        self.session = SimSession(SimConfig(
            robot=self.cfg.robot, image_size=self.cfg.image_size, split=self.cfg.split, max_steps=self.cfg.max_steps,
        ), render_mode="human" if self.cfg.viewer else None)
        self.pub_clock = create_publisher(self, Clock, names.CLOCK, reliable_qos(10), lean=True)
        self.pub_image = create_publisher(self, Image, names.IMAGE, sensor_qos(), lean=True)
        self.pub_info = create_publisher(self, CameraInfo, names.CAMERA_INFO, sensor_qos(), lean=True)
        self.pub_joints = create_publisher(self, JointState, names.JOINT_STATES, reliable_qos(), lean=True)
        self.pub_ee = create_publisher(self, EeState, names.EE_STATE, reliable_qos(), lean=True)
        self.pub_status = create_publisher(self, EpisodeStatus, names.EPISODE_STATUS, status_qos(), lean=True)
        self.pub_truth = (
            create_publisher(self, SimState, names.SIM_STATE, reliable_qos(), lean=True) if self.cfg.ground_truth else None
        )
        create_subscription(self, ActionChunk, names.ACTION_CHUNK, self._on_chunk, reliable_qos(), lean=True)
        self.create_service(ResetTrial, names.RESET_TRIAL, self._on_reset)
        self.rejections = SummarisedWarnings(self.get_logger(), self.cfg.rejection_log_s)
        self.reannouncements = 0
        self._announced = time.monotonic()
        self.create_timer(self.cfg.reannounce_s / 4, self._reannounce_if_waiting)
        self.get_logger().info(
            f"sim bridge ready ({self.cfg.robot}, {self.cfg.image_size}px, render={self.cfg.render}, "
            f"ground_truth={self.cfg.ground_truth}) in {time.perf_counter() - started:.1f} s"
        )

    def close(self) -> None:
        self.session.close()

    # --- callbacks -------------------------------------------------------------------------

    def _on_reset(self, request, response):
        try:
            trial = trial_from_msg(request.trial)
            self.session.reset(trial)
        except Exception as exc:  # noqa: BLE001 - report any failure to the caller
            response.ok, response.message = False, f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"reset_trial failed: {response.message}")
            return response
        response.ok, response.message = True, f"reset to {trial.trial_id}"
        self._publish_observation()
        return response

    def _on_chunk(self, msg) -> None:
        session = self.session
        running = session.trial is not None and not session.status.done
        try:
            if not running:
                raise ChunkRejected("no_episode", f"chunk for {msg.trial_id!r} but no episode is running")
            chunk = validate_chunk(
                trial_id=msg.trial_id, step_index=msg.step_index, horizon=msg.horizon,
                execute_steps=msg.execute_steps, action_dim=msg.action_dim, action_space=msg.action_space,
                data=msg.data, expected_trial_id=session.status.trial_id, next_step=session.status.step,
            )
        except ChunkRejected as exc:
            if running:
                session.reject(exc.reason)
                self.rejections.warn(exc.reason, f"rejected action chunk: {exc}")
                self._publish_status(session.sim_time_ns)
            else:
                self.get_logger().debug(f"ignored action chunk: {exc}")
            return
        session.execute(chunk)
        if self.cfg.viewer:
            session.env.render()
        self._publish_observation()

    def _reannounce_if_waiting(self) -> None:
        waiting = self.session.trial is not None and not self.session.status.done
        if waiting and time.monotonic() - self._announced >= self.cfg.reannounce_s:
            self.reannouncements += 1
            self.get_logger().info(
                f"no valid chunk for step {self.session.status.step} of {self.session.status.trial_id} "
                f"in {self.cfg.reannounce_s:g} s: publishing the observation again", throttle_duration_sec=30.0,
            )
            self._publish_observation()

    # --- publishing --------------------------------------------------------------------------

    def _wants_image(self) -> bool:
        if self.cfg.render == "always":
            return True
        if self.cfg.render == "never":
            return False
        return self.pub_image.get_subscription_count() > 0

    def _publish_observation(self) -> None:
        self._announced = time.monotonic()
        render = self._wants_image()
        obs = self.session.observe(render=render, privileged=self.pub_truth is not None)
        stamp = ns_to_stamp(obs.sim_time_ns)
        # Volatile topics nobody listens to are skipped: each publish is serialisation and DDS work
        # on the lock-step critical path. The latched status is always published.
        if self.pub_clock.get_subscription_count():
            self.pub_clock.publish(Clock(clock=stamp))
        if obs.image is not None:
            h, w = obs.image.shape[:2]
            self.pub_image.publish(image_to_msg(obs.image, stamp))
            self.pub_info.publish(camera_info_msg(self.session.task.camera_intrinsics(), w, h, stamp))
        if self.pub_joints.get_subscription_count():
            joints = JointState()
            joints.header.stamp = stamp
            joints.name = obs.joint_names
            joints.position = obs.joint_positions.astype(float).tolist()
            joints.velocity = obs.joint_velocities.astype(float).tolist()
            self.pub_joints.publish(joints)
        ee = EeState()
        ee.header.stamp = stamp
        ee.header.frame_id = self.cfg.frame_id
        position, quat = obs.tcp_pose_base
        ee.pose.position.x, ee.pose.position.y, ee.pose.position.z = (float(v) for v in position)
        ee.pose.orientation.x, ee.pose.orientation.y, ee.pose.orientation.z, ee.pose.orientation.w = (float(v) for v in quat)
        ee.rpy = [float(v) for v in obs.proprio[3:6]]
        ee.gripper_opening = float(obs.gripper_opening)
        ee.gripper_opening_max = float(self.session.task.robot.gripper_opening_max)
        ee.proprio = [float(v) for v in obs.proprio]
        self.pub_ee.publish(ee)
        if self.pub_truth is not None:
            self.pub_truth.publish(self._sim_state_msg(obs, stamp))
        self._publish_status(obs.sim_time_ns)

    def _sim_state_msg(self, obs, stamp):
        truth = obs.privileged
        msg = SimState()
        msg.header.stamp = stamp
        msg.header.frame_id = "world"
        msg.trial_id = self.session.status.trial_id
        msg.step = obs.step
        msg.cube_pose.position.x, msg.cube_pose.position.y, msg.cube_pose.position.z = (float(v) for v in truth["cube_pos"])
        msg.tcp_pose.position.x, msg.tcp_pose.position.y, msg.tcp_pose.position.z = (float(v) for v in truth["tcp_pos"])
        w, x, y, z = (float(v) for v in truth["tcp_quat_wxyz"])
        msg.tcp_pose.orientation.x, msg.tcp_pose.orientation.y, msg.tcp_pose.orientation.z, msg.tcp_pose.orientation.w = x, y, z, w
        msg.cube_half_size = float(self.session.task.geometry.cube_half_size)
        msg.grasped = bool(truth["cube_grasped"])
        msg.gripper_opening = float(truth["gripper_opening"])
        msg.card_positions = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in truth["card_positions"]]
        return msg

    def _publish_status(self, sim_time_ns: int) -> None:
        s = self.session.status
        msg = EpisodeStatus()
        msg.header.stamp = ns_to_stamp(sim_time_ns)
        msg.trial_id = s.trial_id
        msg.step = s.step
        msg.done = s.done
        msg.reason = s.reason
        msg.placed_card = s.placed_card
        msg.success = s.success
        msg.upstream_success = s.upstream_success
        msg.cube_released = s.cube_released
        msg.arm_still = s.arm_still
        msg.card_distances = [float(d) for d in s.card_distances]
        msg.chunks_executed = s.chunks_executed
        msg.chunks_rejected = s.chunks_rejected
        msg.last_rejection = s.last_rejection
        self.pub_status.publish(msg)


def main(args=None) -> int:
    return run_node(SimBridgeNode, args, help_text=f"gf-sim-bridge --ros-args [-p name:=value ...]\n\nparameters:\n{config_help(BridgeConfig)}")
