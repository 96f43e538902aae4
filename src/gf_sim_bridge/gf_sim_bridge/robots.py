"""Robots of the GrinningFace task: their mount pose, start configuration and control set-up.

Both robots are driven in the benchmark's action space (gf_eval.action_space.EE_DELTA_POSE):
ManiSkill's ``pd_ee_target_delta_pose`` with normalised actions, +-1 = +-0.1 m / +-0.1 rad,
translation in the robot base frame, rotation about base-aligned axes; gripper 1 = open.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np
from mani_skill.agents.controllers import PDEEPoseControllerConfig, PDJointPosMimicControllerConfig
from mani_skill.agents.registration import register_agent
from mani_skill.agents.robots.widowx.widowx import WidowX250S

CONTROL_MODE = "pd_ee_target_delta_pose"


@register_agent(asset_download_ids=["widowx250s"])
class GFWidowX250S(WidowX250S):
    """WidowX 250 S (BridgeData v2 embodiment) with the benchmark's EE delta-pose controller."""

    uid = "gf_widowx250s"
    ee_link_name = "ee_gripper_link"
    arm_stiffness = 1e3
    arm_damping = 1e2
    arm_force_limit = 100
    gripper_stiffness = 1e3
    gripper_damping = 1e2
    gripper_force_limit = 100

    @property
    def _controller_configs(self):
        arm = PDEEPoseControllerConfig(
            joint_names=self.arm_joint_names,
            pos_lower=-0.1, pos_upper=0.1, rot_lower=-0.1, rot_upper=0.1,
            stiffness=self.arm_stiffness, damping=self.arm_damping, force_limit=self.arm_force_limit,
            ee_link=self.ee_link_name, urdf_path=self.urdf_path, use_target=True,
        )
        # Slightly beyond the finger range at both ends: closing keeps squeezing a 3 cm cube.
        gripper = PDJointPosMimicControllerConfig(
            self.gripper_joint_names, lower=-0.01, upper=0.04,
            stiffness=self.gripper_stiffness, damping=self.gripper_damping, force_limit=self.gripper_force_limit,
            mimic={"left_finger": {"joint": "right_finger"}},
        )
        return {CONTROL_MODE: dict(arm=arm, gripper=gripper)}

    def _after_init(self):
        from mani_skill.utils import sapien_utils

        self.tcp = sapien_utils.get_obj_by_name(self.robot.get_links(), self.ee_link_name)


@dataclass(frozen=True)
class RobotSetup:
    """How a robot is mounted and started in the GrinningFace scene."""

    uid: str
    base_xyz: tuple[float, float, float]
    rest_qpos: tuple[float, ...]
    arm_joints: int
    finger_links: tuple[str, str]
    gripper_opening_max: float = 0.08  # m, the normaliser of the proprio's gripper entry (upstream)
    # TCP orientation (base frame) with the gripper pointing straight down: the proprio's roll,
    # pitch and yaw are measured from it (GrinningFaceTask.proprio).
    tcp_down: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


ROBOTS: dict[str, RobotSetup] = {
    # Upstream: base at (-0.25, 0.70, 0.10), all joints 0 except the wrist pitched 90 deg down.
    "widowx": RobotSetup(
        uid=GFWidowX250S.uid, base_xyz=(-0.25, 0.70, 0.10),
        rest_qpos=(0.0, 0.0, 0.0, 0.0, np.pi / 2, 0.0, 0.037, 0.037), arm_joints=6,
        finger_links=("left_finger_link", "right_finger_link"),
        # The TCP's x axis runs along the fingers: pointing down is pitch +90 deg, where extrinsic
        # XYZ angles lock (BridgeData v2 measures the WidowX's orientation from the same pose).
        tcp_down=((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0)),
    ),
    # Panda ships with ManiSkill (works offline); mounted further back for its longer arm.
    "panda": RobotSetup(
        uid="panda", base_xyz=(-0.45, 0.70, 0.0),
        rest_qpos=(0.0, np.pi / 8, 0.0, -np.pi * 5 / 8, 0.0, np.pi * 3 / 4, np.pi / 4, 0.04, 0.04), arm_joints=7,
        finger_links=("panda_leftfinger", "panda_rightfinger"),
        tcp_down=((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),  # roll 180 deg: would wrap at +-pi
    ),
}


def robot_setup(name: str) -> RobotSetup:
    try:
        return deepcopy(ROBOTS[name])
    except KeyError:
        raise ValueError(f"unknown robot {name!r}; expected one of {sorted(ROBOTS)}") from None
