"""realman_driver node: the RM75 (or, with ``dry_run``, a ``SimulatedArm``) on the project's topics.

Publishes ``/joint_states`` (``joint1..joint7``, rad, as Realman's own ROS 2 driver) and
``/gf/ee_state`` (EE pose, gripper, the 7-D proprio) at ``publish_rate_hz``; executes
``/gf/action_chunk`` through ``ArmDriver`` (validation, safety limits, streaming set-points at
``stream_period_s``, watchdog, reconnect with backoff). Follows ``/gf/trial`` and
``/gf/episode_status`` to gate chunks to the running trial (``trial_gating``).

Services (``gf_interfaces/srv/Command``: the request is ignored, ``success`` is the answer;
the reason is logged): ``~/emergency_stop`` (stop and latch), ``~/resume`` (release the latch),
``~/clear_error`` (operator: clear a latched controller error on the controller and release it),
``~/home`` (lift to ``home_safe_z``, planned move to ``home_joints_deg``, gripper open).
``~/status`` (std_msgs/String, JSON of ``DriverStatus``, latched) reports the connection, e-stop,
controller errors, counters and last rejection; ``/diagnostics`` (diagnostic_msgs/DiagnosticArray)
carries the same health as one status (ERROR while a controller error is latched or the link is
down, WARN while e-stopped).

Signed commands (``require_signed``, ``key_file``; gf_bringup.signing): when required, every chunk
must carry a valid signature of the key in ``key_file``, fresh within ``signature_max_age_s`` of
this computer's clock and with a sequence above the last one; any other chunk is refused before
every other check, counted per reason in ``~/status`` (``signature_rejections``) and
``/diagnostics``, and logged summarised. ``auto`` requires it exactly in robot network mode
(``GF_NETWORK=robot``); ``false`` is the operator's explicit opt-out.

Frame and scale of the actions: see ``gf_realman_driver.safety`` (``frame_rotation``,
``translation_scale``, ``rotation_scale``); limits are in the RM75 base frame, their defaults are
``SafetyLimits``'. At start-up every corner of the workspace box must be reachable with the gripper
pointing down (``JointChecks.check_workspace``), or the node does not start. The table floor is
``floor_z`` when set, else the card plane of ``card_layout`` (a ``gf-calibrate`` layout) plus
``calibration.CARD_FLOOR_MARGIN``, else ``SafetyLimits``' default.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from gf_bringup import names
from gf_bringup.rosutil import (
    SummarisedWarnings,
    config_field,
    config_help,
    create_publisher,
    create_subscription,
    declare_config,
    latched_qos,
    ns_to_stamp,
    reliable_qos,
    run_node,
    stamp_to_ns,
    status_qos,
)
from gf_bringup.signing import DEFAULT_MAX_AGE_S, ChunkVerifier, load_key, signing_required
from gf_eval.action_space import ChunkRejected
from gf_eval.touch import load_layout
from gf_interfaces.msg import ActionChunk, EeState, EpisodeStatus, Trial
from gf_interfaces.srv import Command

from .arm import ArmBackend
from .calibration import CARD_FLOOR_MARGIN, card_floor_z
from .driver import IGNORED_REASONS, SIGNATURE_REASONS, ArmDriver, DriverSettings, DriverStatus
from .safety import FrameMapping, JointChecks, SafetyLimits, TargetPlanner
from .smoothing import MotionLimits

SERVICE_TYPE = Command
LIMITS = SafetyLimits()  # the defaults of the safety parameters
FLANGE_TOOL_FRAME = "Arm_Tip"  # Realman's default tool frame: the flange itself


@dataclass
class DriverConfig:
    dry_run: bool = config_field(False, "true: a kinematic SimulatedArm instead of the real RM75 (no network traffic)")
    arm_ip: str = config_field("", "controller IP address (set it in config/rm75.yaml; '' = not configured)")
    arm_port: int = config_field(8080, "controller TCP port")
    connect_timeout_s: float = config_field(3.0, "give up one connection attempt after this long")
    command_timeout_ms: int = config_field(500, "SDK receive timeout per command")
    reconnect_initial_s: float = config_field(0.5, "first retry delay after a failed connect / dropped link")
    reconnect_max_s: float = config_field(10.0, "retry delays double up to this")
    stream_period_s: float = config_field(0.01, "movep_canfd set-point period (<= 0.01 s for high-follow mode)")
    control_period_s: float = config_field(0.05, "duration of one action (policy control step; 20 Hz as in the sim)")
    stream_spin_us: float = config_field(0.0, "busy-wait this long before each set-point deadline (tighter period; costs CPU; see gf-bench arm)")
    publish_rate_hz: float = config_field(50.0, "rate of /joint_states and /gf/ee_state")
    watchdog_timeout_s: float = config_field(1.0, "stop the arm when no valid chunk came for this long")
    workspace_min: list[float] = config_field(list(LIMITS.workspace_min), "fingertip workspace box, lower corner (m, base frame); "
                                              "every corner must be reachable with the gripper pointing down")
    workspace_max: list[float] = config_field(list(LIMITS.workspace_max), "fingertip workspace box, upper corner (m, base frame)")
    floor_z: float = config_field(math.nan, "table floor: no fingertip below this z (m, base frame); nan = the card plane of "
                                            f"card_layout + {CARD_FLOOR_MARGIN} m, or {LIMITS.floor_z} m without one")
    card_layout: str = config_field("", "Touch layout YAML from gf-calibrate whose card plane sets the floor when floor_z is nan "
                                        "('' = none)")
    tcp_offset: list[float] = config_field(list(LIMITS.tcp_offset), "fingertip in the controller's tool frame (m); the box and floor apply to it")
    tool_frame: str = config_field("", "required active tool frame on the controller ('' = not checked)")
    tool_frame_pose: list[float] = config_field([], "required pose of that tool frame (x y z m, rx ry rz rad; [] = not checked)")
    work_frame: str = config_field("", "required active work frame on the controller ('' = not checked)")
    realtime_push: bool = config_field(True, "read the arm state from the controller's UDP push (5 ms) instead of queries")
    smooth_setpoints: bool = config_field(True, "jerk/acceleration-limited set-points (ruckig); false: the planner's straight lines")
    max_linear_acceleration: float = config_field(5.0, "per-axis limit of the commanded acceleration (m/s^2)")
    max_linear_jerk: float = config_field(100.0, "per-axis limit of the commanded jerk (m/s^3)")
    max_angular_acceleration: float = config_field(10.0, "per-axis limit of the commanded angular acceleration (rad/s^2)")
    max_angular_jerk: float = config_field(200.0, "per-axis limit of the commanded angular jerk (rad/s^3)")
    home_safe_z: float = config_field(0.25, "~/home first lifts the tool straight up to this z when lower (m)")
    max_step_translation: float = config_field(LIMITS.max_step_translation, "max EE translation per control step (m)")
    max_translation_per_second: float = config_field(LIMITS.max_translation_per_second, "max EE path length within any second (m)")
    max_step_rotation: float = config_field(LIMITS.max_step_rotation, "max EE rotation per control step (rad)")
    max_rotation_per_second: float = config_field(LIMITS.max_rotation_per_second, "max EE rotation within any second (rad)")
    max_tracking_error: float = config_field(LIMITS.max_tracking_error, "stop the arm / refuse chunks while it is this far from "
                                             "the path its set-points could have taken it along (m)")
    max_tracking_rotation: float = config_field(LIMITS.max_tracking_rotation, "the same for its orientation (rad; "
                                                f"{math.degrees(LIMITS.max_tracking_rotation):g} deg)")
    tracking_latency_s: float = config_field(LIMITS.tracking_latency, "the arm may follow its set-points this late "
                                             "(controller latency + age of the pushed state) before it counts as off")
    frame_rotation: list[float] = config_field([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                                               "3x3 rotation (row-major) from the policy's action axes to the RM75 base axes")
    translation_scale: float = config_field(1.0, "scale of action translations on the real arm")
    rotation_scale: float = config_field(1.0, "scale of action rotations on the real arm")
    gripper_max_opening: float = config_field(0.08, "gripper opening when fully open (m)")
    gripper_force: float = config_field(0.5, "gripper closing force, fraction of the maximum")
    home_joints_deg: list[float] = config_field([0.0, 20.0, 0.0, 90.0, 0.0, 70.0, 0.0], "home posture for ~/home (deg)")
    home_speed: float = config_field(0.2, "joint speed of ~/home, fraction of the maximum")
    trial_gating: bool = config_field(True, "execute only chunks of the running trial (false for teleop and calibration)")
    movep_follow: bool = config_field(True, "movep_canfd high-follow mode")
    movep_trajectory_mode: int = config_field(0, "movep_canfd trajectory mode: 0 pass-through, 1 curve fitting, 2 filtering")
    movep_smoothing: int = config_field(0, "movep_canfd smoothing ratio (mode 2)")
    sim_rate_hz: float = config_field(500.0, "dry run: SimulatedArm stepping rate")
    sim_latency_s: float = config_field(0.005, "dry run: SimulatedArm command latency")
    frame_id: str = config_field("base_link", "frame of the EE state (the arm base)")
    require_signed: str = config_field("auto", "accept only signed action chunks: auto (required in robot network mode), "
                                               "true, false (the operator's explicit opt-out)")
    key_file: str = config_field("", "signing key file accepted for action chunks (gf-keys create); needed when signing is required")
    signature_max_age_s: float = config_field(DEFAULT_MAX_AGE_S, "refuse signed chunks stamped further than this from this "
                                                                 "computer's clock (s; clocks must be synchronised)")


MOVEP_MAX_PERIOD = 0.01  # s; movep_canfd high-follow mode needs a set-point at least this often


def safety_floor(cfg: DriverConfig) -> tuple[float, str]:
    """The table floor (m) and where it comes from: ``floor_z`` when the operator set it, else the
    card plane of ``card_layout`` plus ``CARD_FLOOR_MARGIN``, else the default."""
    if math.isfinite(cfg.floor_z):
        return float(cfg.floor_z), "floor_z"
    if cfg.card_layout:
        layout = load_layout(cfg.card_layout)
        return card_floor_z(layout, cfg.tcp_offset), f"card plane of {cfg.card_layout} + {CARD_FLOOR_MARGIN * 1000:g} mm"
    return LIMITS.floor_z, "default"


def build_joint_checks(cfg: DriverConfig) -> JointChecks:
    """The IK-based checks for the controller's active tool frame (``ValueError`` when its pose is unknown)."""
    if cfg.tool_frame_pose:
        if len(cfg.tool_frame_pose) != 6:
            raise ValueError(f"tool_frame_pose needs 6 numbers (x y z m, rx ry rz rad), got {len(cfg.tool_frame_pose)}")
        return JointChecks(tool_frame_pose=tuple(cfg.tool_frame_pose))
    if cfg.tool_frame not in ("", FLANGE_TOOL_FRAME):
        raise ValueError(f"tool_frame {cfg.tool_frame!r} needs its tool_frame_pose: the joint checks solve the IK of the "
                         f"flange, so they must know where the tool frame is on it")
    return JointChecks()


def build_planner(cfg: DriverConfig) -> TargetPlanner:
    """The safety core's planner from the node parameters (``ValueError`` for unusable ones, among
    them a workspace box the arm cannot reach)."""
    if not cfg.dry_run and cfg.movep_follow and cfg.stream_period_s > MOVEP_MAX_PERIOD + 1e-9:
        raise ValueError(f"stream_period_s {cfg.stream_period_s} s is too long for movep_canfd high-follow mode "
                         f"(at most {MOVEP_MAX_PERIOD} s)")
    floor_z, source = safety_floor(cfg)
    try:
        limits = SafetyLimits(
            workspace_min=tuple(cfg.workspace_min), workspace_max=tuple(cfg.workspace_max), floor_z=floor_z,
            max_step_translation=cfg.max_step_translation, max_translation_per_second=cfg.max_translation_per_second,
            max_step_rotation=cfg.max_step_rotation, max_rotation_per_second=cfg.max_rotation_per_second,
            max_tracking_error=cfg.max_tracking_error, max_tracking_rotation=cfg.max_tracking_rotation,
            tracking_latency=cfg.tracking_latency_s, tcp_offset=tuple(cfg.tcp_offset),
        )
    except ValueError as exc:
        raise ValueError(f"{exc} (floor from: {source})") from exc
    joint_checks = build_joint_checks(cfg)
    joint_checks.check_workspace(limits)
    if len(cfg.frame_rotation) != 9:
        raise ValueError(f"frame_rotation needs 9 numbers (a row-major 3x3 rotation), got {len(cfg.frame_rotation)}")
    rows = tuple(tuple(float(v) for v in cfg.frame_rotation[i:i + 3]) for i in (0, 3, 6))
    mapping = FrameMapping(rotation=rows, translation_scale=cfg.translation_scale, rotation_scale=cfg.rotation_scale)
    return TargetPlanner(limits, mapping, control_period=cfg.control_period_s, stream_period=cfg.stream_period_s,
                         joint_checks=joint_checks)


def build_motion_limits(cfg: DriverConfig) -> MotionLimits | None:
    """Set-point smoothing limits (None when ``smooth_setpoints`` is off). The velocity limits are
    the planner's per-step limits, so smoothing never slows down an accepted chunk by itself."""
    if not cfg.smooth_setpoints:
        return None
    return MotionLimits(
        max_linear_velocity=cfg.max_step_translation / cfg.control_period_s,
        max_linear_acceleration=cfg.max_linear_acceleration, max_linear_jerk=cfg.max_linear_jerk,
        max_angular_velocity=cfg.max_step_rotation / cfg.control_period_s,
        max_angular_acceleration=cfg.max_angular_acceleration, max_angular_jerk=cfg.max_angular_jerk,
        stall_after=3 * cfg.stream_period_s,
    )


def build_arm(cfg: DriverConfig) -> ArmBackend:
    """``SimulatedArm`` for a dry run, otherwise ``RealmanArm`` at ``arm_ip:arm_port``."""
    if cfg.dry_run:
        from .simulated_arm import SimulatedArm

        return SimulatedArm(realtime=True, rate_hz=cfg.sim_rate_hz, latency_s=cfg.sim_latency_s,
                            gripper_max_opening=cfg.gripper_max_opening)
    if not cfg.arm_ip:
        raise ValueError("arm_ip is empty: set the controller address in config/rm75.yaml or pass -p arm_ip:=ADDRESS "
                         "(or dry_run:=true for the simulated arm)")
    from .realman_arm import RealmanArm

    return RealmanArm(
        cfg.arm_ip, cfg.arm_port, connect_timeout=cfg.connect_timeout_s, command_timeout_ms=cfg.command_timeout_ms,
        follow=cfg.movep_follow, trajectory_mode=cfg.movep_trajectory_mode, smoothing=cfg.movep_smoothing,
        gripper_max_opening=cfg.gripper_max_opening, tool_frame=cfg.tool_frame or None,
        tool_frame_pose=cfg.tool_frame_pose or None, work_frame=cfg.work_frame or None,
        realtime_push=cfg.realtime_push,
    )


def build_verifier(cfg: DriverConfig, network: str) -> ChunkVerifier | None:
    """The signature check the parameters ask for (None: off); ``ValueError`` when it cannot be built."""
    if not signing_required(cfg.require_signed, network):
        return None
    if not cfg.key_file:
        raise ValueError(f"signed action chunks are required ({network} network, require_signed={cfg.require_signed}) but "
                         "no key_file is given: create one with `gf-keys create FILE` and pass key_file:=FILE, or opt out "
                         "explicitly with require_signed:=false")
    return ChunkVerifier([load_key(cfg.key_file)], max_age_s=cfg.signature_max_age_s)


def diagnostic_status(status: DriverStatus, hardware_id: str) -> DiagnosticStatus:
    """The driver's health as one ``DiagnosticStatus``."""
    if status.controller_error:
        level, message = DiagnosticStatus.ERROR, "controller error latched: " + "; ".join(status.controller_errors)
    elif not status.connected:
        level, message = DiagnosticStatus.ERROR, f"not connected: {status.last_error}"
    elif status.emergency_stopped:
        level, message = DiagnosticStatus.WARN, "emergency stop latched"
    else:
        level, message = DiagnosticStatus.OK, "streaming" if status.motion_active else "ready"
    refused = sum(status.signature_rejections.values())
    if refused:
        # Someone without the key is publishing commands: worth the operator's attention.
        level = max(level, DiagnosticStatus.WARN)
        message += f"; {refused} unauthenticated action chunks refused"
    values = {
        "connected": status.connected, "emergency_stopped": status.emergency_stopped,
        "controller_error": status.controller_error, "controller_errors": "; ".join(status.controller_errors),
        "controller_errors_now": "; ".join(status.controller_errors_now), "state_age_s": status.state_age_s,
        "setpoints_sent": status.setpoints_sent, "last_error": status.last_error,
        "signed_commands": "required" if status.signed_commands_required else "not required",
        "signature_rejections": json.dumps(status.signature_rejections, sort_keys=True),
        "last_signature_rejection": status.last_signature_rejection,
    }
    return DiagnosticStatus(level=level, name="realman_driver: arm", message=message[:500], hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


class DriverNode(Node):
    """Adapter: ArmDriver <-> topics and services."""

    def __init__(self, **node_kwargs):
        super().__init__("realman_driver", **node_kwargs)
        self.cfg = declare_config(self, DriverConfig)
        cfg = self.cfg
        planner = build_planner(cfg)
        arm = build_arm(cfg)
        settings = DriverSettings(
            state_period=min(0.02, 1.0 / cfg.publish_rate_hz), reconnect_initial=cfg.reconnect_initial_s,
            reconnect_max=cfg.reconnect_max_s, home_joints=tuple(math.radians(a) for a in cfg.home_joints_deg),
            home_speed=cfg.home_speed, trial_gating=cfg.trial_gating, spin=cfg.stream_spin_us * 1e-6,
            motion_limits=build_motion_limits(cfg), home_safe_z=cfg.home_safe_z,
        )
        logger = self.get_logger()
        verifier = build_verifier(cfg, os.environ.get("GF_NETWORK", "loopback"))
        self._refusals = SummarisedWarnings(logger, period_s=5.0)
        self.driver = ArmDriver(arm, planner, watchdog_timeout=cfg.watchdog_timeout_s, gripper_force=cfg.gripper_force,
                                settings=settings, on_event=self._log, verifier=verifier)
        self.pub_joints = create_publisher(self, JointState, names.JOINT_STATES, reliable_qos())
        self.pub_ee = create_publisher(self, EeState, names.EE_STATE, reliable_qos())
        self.pub_status = create_publisher(self, String, "~/status", latched_qos(1))
        self.pub_diagnostics = create_publisher(self, DiagnosticArray, names.DIAGNOSTICS, reliable_qos())
        self._hardware_id = "simulated RM75" if cfg.dry_run else f"RM75 at {cfg.arm_ip}:{cfg.arm_port}"
        create_subscription(self, ActionChunk, names.ACTION_CHUNK, self._on_chunk, reliable_qos())
        create_subscription(self, Trial, names.TRIAL, self._on_trial, latched_qos(1))
        create_subscription(self, EpisodeStatus, names.EPISODE_STATUS, self._on_status, status_qos())
        services = ReentrantCallbackGroup()  # e-stop must get through while ~/home blocks
        self.create_service(SERVICE_TYPE, "~/emergency_stop", self._service(self.driver.emergency_stop), callback_group=services)
        self.create_service(SERVICE_TYPE, "~/resume", self._service(self.driver.resume), callback_group=services)
        self.create_service(SERVICE_TYPE, "~/clear_error", self._service(self.driver.clear_controller_error),
                            callback_group=services)
        self.create_service(SERVICE_TYPE, "~/home", self._service(self.driver.home), callback_group=services)
        self.create_timer(1.0 / cfg.publish_rate_hz, self._publish_state)
        self.create_timer(0.5, self._publish_status)
        self.create_timer(1.0, self._publish_diagnostics)
        self._last_status = ""
        self._published_at = 0.0
        self.driver.start()
        what = "dry run: SimulatedArm" if cfg.dry_run else f"RM75 at {cfg.arm_ip}:{cfg.arm_port}"
        logger.info(
            f"realman driver up ({what}); streaming every {cfg.stream_period_s * 1000:g} ms, watchdog "
            f"{cfg.watchdog_timeout_s:g} s, workspace {cfg.workspace_min}..{cfg.workspace_max} m, "
            f"floor z {planner.limits.floor_z:.3f} m ({safety_floor(cfg)[1]}), "
            f"trial gating {'on' if cfg.trial_gating else 'off'}, "
            + (f"signed chunks required (keys {', '.join(verifier.keys)})" if verifier else "signed chunks not required")
        )

    def _log(self, level: str, text: str) -> None:
        # One call site per severity: rclpy refuses a call site whose severity changes.
        logger = self.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warning":
            logger.warning(text)
        elif level == "info":
            logger.info(text)
        else:
            logger.debug(text)

    def close(self) -> None:
        """Stop the arm and release the link (run_node calls this on shutdown)."""
        self.driver.shutdown()
        # The context is shut down by now: the console logger still works, /rosout does not.
        self.get_logger().info("arm stopped and link closed")

    # --- inputs ------------------------------------------------------------------------------

    def _on_chunk(self, msg: ActionChunk) -> None:
        try:
            self.driver.submit(
                trial_id=msg.trial_id, step_index=msg.step_index, horizon=msg.horizon, execute_steps=msg.execute_steps,
                action_dim=msg.action_dim, action_space=msg.action_space, data=msg.data,
                stamp_ns=stamp_to_ns(msg.header.stamp), frame_id=msg.header.frame_id, key_id=msg.key_id,
                sequence=msg.sequence, signature=bytes(msg.signature),
            )
        except ChunkRejected as exc:
            if exc.reason in SIGNATURE_REASONS:
                # An intruder can send thousands per second: one line per kind, then summaries.
                # The status timer reports them; publishing per chunk would let the flood through too.
                self._refusals.warn(exc.reason, f"refused unauthenticated action chunk: {exc}")
                return
            if exc.reason in IGNORED_REASONS:
                self.get_logger().debug(f"ignored action chunk: {exc}", throttle_duration_sec=2.0)
            else:
                self.get_logger().warning(f"rejected action chunk: {exc}", throttle_duration_sec=0.5)
            self._publish_status()

    def _on_trial(self, msg: Trial) -> None:
        self.driver.start_trial(msg.trial_id, stamp_to_ns(msg.header.stamp))
        self._publish_status()

    def _on_status(self, msg: EpisodeStatus) -> None:
        if msg.done:
            self.driver.end_trial(msg.trial_id, stamp_to_ns(msg.header.stamp))
            self._publish_status()

    def _service(self, action):
        def callback(request, response):  # noqa: ARG001 - the request carries nothing we need
            ok, message = action()
            response.success = bool(ok)
            stopping = not ok and message.endswith("the driver is shutting down")
            self._log("info" if ok or stopping else "error", f"{action.__name__}: {message}")
            self._publish_status()
            return response

        return callback

    # --- outputs -----------------------------------------------------------------------------

    def _publish_state(self) -> None:
        state, read_at = self.driver.latest_state, self.driver.latest_state_time
        if state is None or not self.driver.connected or read_at == self._published_at:
            return
        self._published_at = read_at
        stamp = ns_to_stamp(int(read_at * 1e9))  # when the state was measured, not when it is sent
        joints = JointState()
        joints.header.stamp = stamp
        joints.name = list(state.joint_names)
        joints.position = [float(v) for v in state.joint_positions]
        joints.velocity = [float(v) for v in state.joint_velocities]
        self.pub_joints.publish(joints)
        ee = EeState()
        ee.header.stamp = stamp
        ee.header.frame_id = self.cfg.frame_id
        ee.pose.position.x, ee.pose.position.y, ee.pose.position.z = (float(v) for v in state.ee_xyz)
        qx, qy, qz, qw = Rotation.from_euler("xyz", np.asarray(state.ee_rpy, dtype=np.float64)).as_quat()
        ee.pose.orientation.x, ee.pose.orientation.y, ee.pose.orientation.z, ee.pose.orientation.w = (
            float(qx), float(qy), float(qz), float(qw))
        ee.rpy = [float(v) for v in state.ee_rpy]
        ee.gripper_opening = float(state.gripper_opening)
        ee.gripper_opening_max = float(self.driver.arm.gripper_max_opening)
        ee.proprio = [float(v) for v in state.proprio(self.driver.arm.gripper_max_opening)]
        self.pub_ee.publish(ee)

    def _publish_status(self) -> None:
        status = self.driver.status()
        data = status.to_dict()
        data.pop("state_age_s")  # changes every time: it would defeat publishing on change only
        text = json.dumps(data, sort_keys=True)
        if text != self._last_status:
            self._last_status = text
            self.pub_status.publish(String(data=text))
            self._publish_diagnostics(status)

    def _publish_diagnostics(self, status: DriverStatus | None = None) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(status or self.driver.status(), self._hardware_id)]
        self.pub_diagnostics.publish(msg)


def main(args=None) -> int:
    return run_node(DriverNode, args, threads=3,
                    help_text=f"gf-realman-driver --ros-args [-p name:=value ...]\n\nparameters:\n{config_help(DriverConfig)}")
