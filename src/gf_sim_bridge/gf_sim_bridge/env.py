"""The GrinningFace task in ManiSkill3: pick up the cube, place it on the card the instruction names.

Registered as ``GrinningFace-v1``. ``reset(seed, options={"trial": TrialSpec})`` lays out the
cards, cube and robot exactly as the spec says (without a spec, trial ``seed`` of the Train
protocol is used). ``info`` carries the benchmark's score of the current state
(gf_eval.scoring), so the same rule decides success here, in the ROS graph and in reports.

Rendering dominates the cost on a CPU, so the default ``obs_mode="state_dict"`` never renders
in ``step``; ask for the policy image with ``policy_image()`` when a policy needs one. With
``obs_mode="rgb"`` the env behaves like any ManiSkill task and renders every step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sapien
import torch
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building import actors
from mani_skill.utils.registration import register_env
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs.pose import Pose
from PIL import Image
from scipy.spatial.transform import Rotation

from gf_bringup.constants import DEFAULT_EMOJI_FRACTION, DEFAULT_SPLIT
from gf_eval.camera import CAMERA_EYE, CAMERA_FOV, CAMERA_TARGET
from gf_eval.catalog import card_image_path, load_catalog
from gf_eval.scoring import CardFootprint, FinalState, score_episode
from gf_eval.splits import load_splits
from gf_eval.trials import DEFAULT_GEOMETRY, TrialSpec, make_trial
from gf_sim_bridge import robots  # registers the gf_widowx250s agent
from gf_sim_bridge.robots import CONTROL_MODE, robot_setup

CARD_TEXTURE_PX = 512
CUBE_COLOR = (0.1, 0.1, 0.5, 1.0)
GRASP_REACH = 0.08  # m: beyond this TCP-cube distance the fingers cannot touch the cube


@register_env("GrinningFace-v1", max_episode_steps=200)
class GrinningFaceEnv(BaseEnv):
    """**Task Description:** pick up the cube and place it on the one of three emoji cards that
    the instruction names ("Pick the cube and place it on deer.").

    **Randomizations:** a trial spec (``gf_eval.trials``) fixes everything from its seed: the
    three emojis and which one is the target, the cube's position (+-5 cm around (0.02, 0.70)),
    each card's position (+-2 cm around x = 0.20, y = 0.90 / 0.70 / 0.50) and yaw, and the
    robot's initial joint noise.

    **Success Conditions:** the cube rests on the target card's footprint, released, with the arm
    still (``gf_eval.scoring``); ``info`` also carries execution (on *some* card), the placed card
    and upstream GrinningFace's distance rule.

    **Observations:** ``extra`` holds ``proprio``, the 7-D vector the policy sees, and in state
    modes the cube and card positions; the ``policy_camera`` sensor is the policy's image.
    """

    SUPPORTED_ROBOTS = ["gf_widowx250s", "panda"]
    SUPPORTED_OBS_MODES = ("state_dict", "state", "none", "rgb", "rgbd", "sensor_data")
    SUPPORTED_REWARD_MODES = ("sparse", "none")

    def __init__(
        self,
        *args,
        robot: str = "widowx",
        image_size: int | tuple[int, int] = 224,
        split: str = DEFAULT_SPLIT,
        emoji_fraction: float = DEFAULT_EMOJI_FRACTION,
        robot_init_qpos_noise: float = 0.02,
        **kwargs,
    ):
        self.robot = robot_setup(robot)
        _require_robot_asset(self.robot.uid)
        self.image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.splits = load_splits(split)
        self.emoji_fraction = emoji_fraction
        self.robot_init_qpos_noise = robot_init_qpos_noise
        self.trial: TrialSpec | None = None
        self._state: FinalState | None = None
        self._textures: dict[str, sapien.render.RenderTexture2D] = {}
        kwargs.setdefault("obs_mode", "state_dict")
        kwargs.setdefault("control_mode", CONTROL_MODE)
        kwargs.setdefault("sim_backend", "physx_cpu")
        # ManiSkill asks for a CUDA renderer by default and warns on every start without one.
        kwargs.setdefault("render_backend", "gpu" if torch.cuda.is_available() else "cpu")
        kwargs.setdefault("reward_mode", "sparse")
        # Rebuilding the scene at every reset (~0.25 s) makes a trial's physics independent of
        # the trials before it (PhysX keeps contact caches across teleports), so a resumed or
        # reordered evaluation reproduces every trial exactly.
        kwargs.setdefault("reconfiguration_freq", 1)
        super().__init__(*args, robot_uids=self.robot.uid, **kwargs)

    # --- scene ------------------------------------------------------------------------------

    @property
    def _default_sensor_configs(self):
        pose = sapien_utils.look_at(eye=CAMERA_EYE, target=CAMERA_TARGET)
        height, width = self.image_hw
        return [CameraConfig("policy_camera", pose, width, height, CAMERA_FOV, 0.01, 100)]

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at(eye=CAMERA_EYE, target=CAMERA_TARGET)
        return CameraConfig("render_camera", pose, 512, 512, CAMERA_FOV, 0.01, 100)

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=list(self.robot.base_xyz)))

    def _load_scene(self, options: dict):
        self.table_scene = TableSceneBuilder(self, robot_init_qpos_noise=0)
        self.table_scene.build()
        # Upstream's backdrop: a wooden block beyond the table's far end and a blue wall on its left.
        for name, half, xyz, rgb in (
            ("backdrop", (0.5, 1.3, 2.0), (1.0, -0.05, 2.0 - 0.91964257), (214, 183, 146)),
            ("wall", (1.3, 0.5, 2.0), (0.0, 1.75, 2.0 - 0.91964257), (98, 117, 188)),
        ):
            builder = self.scene.create_actor_builder()
            builder.add_box_visual(half_size=half, material=sapien.render.RenderMaterial(base_color=[c / 256 for c in rgb] + [1]))
            builder.initial_pose = sapien.Pose(p=xyz)
            builder.build_static(name=name)
        g = self.geometry = DEFAULT_GEOMETRY
        self.cube = actors.build_cube(
            self.scene, half_size=g.cube_half_size, color=list(CUBE_COLOR), name="cube",
            initial_pose=sapien.Pose(p=[0, 0, g.cube_half_size]),
        )
        self.cards, self.card_materials = [], []
        for i, y in enumerate(g.card_ys):
            builder = self.scene.create_actor_builder()
            half = [g.card_half_size, g.card_half_size, g.card_half_thickness]
            builder.add_box_collision(half_size=half)
            builder.add_box_visual(half_size=half, material=sapien.render.RenderMaterial(base_color=[1, 1, 1, 1]))
            # The emoji goes on a thin plane just above the top face: a box face would show
            # only part of the texture. SAPIEN's plane lies in y-z with normal +x: turn the normal
            # to +z, then a quarter turn about z so the image's top edge faces +x, away from the
            # camera (the emoji looks upright in the policy view, as to a person at the robot).
            material = sapien.render.RenderMaterial(base_color=[1, 1, 1, 1])
            builder.add_plane_visual(
                pose=sapien.Pose(p=[0, 0, g.card_half_thickness + 2e-4], q=[0.5, 0.5, -0.5, 0.5]),
                scale=[1, g.card_half_size, g.card_half_size], material=material,
            )
            builder.initial_pose = sapien.Pose(p=[g.card_x, y, g.card_half_thickness])
            self.cards.append(builder.build_kinematic(name=f"card_{i}"))
            self.card_materials.append(material)

    def _texture(self, emoji_id: str) -> sapien.render.RenderTexture2D:
        if emoji_id not in self._textures:
            path = card_image_path(load_catalog()[emoji_id], CARD_TEXTURE_PX, self.emoji_fraction)
            # The plane's texture coordinates mirror the image left-right: pre-flip it so the
            # camera sees the printed card as it is.
            rgba = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGBA"))[:, ::-1])
            self._textures[emoji_id] = sapien.render.RenderTexture2D(rgba, "R8G8B8A8Unorm", srgb=True)
        return self._textures[emoji_id]

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        trial = options.get("trial")
        if trial is None:
            seed = int(self._episode_seed[0]) if self._episode_seed is not None else 0
            trial = make_trial("Train", seed, splits=self.splits)
        g = trial.geometry
        sizes = ("card_half_size", "card_half_thickness", "cube_half_size")
        if any(getattr(g, k) != getattr(self.geometry, k) for k in sizes):
            raise ValueError(f"trial {trial.trial_id} uses card/cube sizes this scene was not built with")
        self.trial = trial
        with torch.device(self.device):
            self.table_scene.initialize(env_idx)
            self.cube.set_pose(Pose.create_from_pq(
                torch.tensor([[trial.cube_xy[0], trial.cube_xy[1], g.cube_half_size]]),
                torch.tensor([_yaw_quat(trial.cube_yaw)]),
            ))
            for actor, material, card in zip(self.cards, self.card_materials, trial.cards):
                actor.set_pose(Pose.create_from_pq(
                    torch.tensor([[card.x, card.y, g.card_half_thickness]]), torch.tensor([_yaw_quat(card.yaw)])
                ))
                if self.scene.can_render():
                    material.set_base_color_texture(self._texture(card.emoji_id))
            rng = np.random.default_rng(trial.seed)
            qpos = np.asarray(self.robot.rest_qpos, dtype=np.float32)
            noise = rng.normal(0, self.robot_init_qpos_noise, self.robot.arm_joints)
            qpos[: self.robot.arm_joints] += noise.astype(np.float32)
            self.agent.reset(torch.tensor(qpos[None]))
            self.agent.robot.set_pose(sapien.Pose(p=list(self.robot.base_xyz)))

    # --- state, score and observations ---------------------------------------------------------

    def final_state(self) -> FinalState:
        """The state that scoring reads (see gf_eval.scoring)."""
        g = self.geometry
        cube = self.cube.pose.p[0].cpu().numpy()
        qvel = self.agent.robot.get_qvel()[0, : self.robot.arm_joints].cpu().numpy()
        cards = tuple(
            CardFootprint(float(p[0]), float(p[1]), card.yaw, g.card_half_size, 2 * g.card_half_thickness)
            for p, card in zip((c.pose.p[0].cpu().numpy() for c in self.cards), self.trial.cards)
        )
        # The contact query behind is_grasping is the costliest part of a physics step; a cube
        # farther from the TCP than the fingers reach cannot be held.
        near = np.linalg.norm(cube - self.agent.tcp.pose.p[0].cpu().numpy()) < GRASP_REACH
        return FinalState(
            cube_xyz=tuple(float(v) for v in cube), cube_half_size=g.cube_half_size,
            cube_grasped=bool(near and self.agent.is_grasping(self.cube)[0]),
            max_arm_joint_speed=float(np.abs(qvel).max()), cards=cards,
        )

    def evaluate(self) -> dict[str, Any]:
        if self.trial is None:
            return {"success": torch.zeros(self.num_envs, dtype=torch.bool)}
        # ManiSkill evaluates after every step and reset; the state is kept for privileged_state()
        # so the (costly) contact query behind is_grasping runs once per step.
        self._state = self.final_state()
        score = score_episode(self._state, self.trial.target_index)
        return {
            "success": torch.tensor([score.success]),
            "executed": torch.tensor([score.executed]),
            "placed_card": torch.tensor([score.placed_card]),
            "upstream_success": torch.tensor([score.upstream_success]),
            "cube_released": torch.tensor([score.released]),
            "arm_still": torch.tensor([score.arm_still]),
            "card_distances": torch.tensor([score.card_distances]),
        }

    def _get_obs_extra(self, info: dict) -> dict:
        extra = {"proprio": torch.from_numpy(self.proprio())[None]}
        if self.trial is not None and self.obs_mode in ("state", "state_dict"):
            extra["cube_pos"] = self.cube.pose.p
            extra["card_positions"] = torch.stack([c.pose.p for c in self.cards], dim=1)
        return extra

    def compute_sparse_reward(self, obs: Any, action: torch.Tensor, info: dict):
        return info["success"].float()

    def tcp_pose_world(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (m) and quaternion (w, x, y, z) in the world frame."""
        pose = self.agent.tcp.pose
        return pose.p[0].cpu().numpy().astype(np.float64), pose.q[0].cpu().numpy().astype(np.float64)

    def gripper_opening(self) -> float:
        links = self.agent.robot.links_map
        a, b = (links[name].pose.p[0].cpu().numpy() for name in self.robot.finger_links)
        return float(np.linalg.norm(a - b))

    def proprio(self) -> np.ndarray:
        """The 7-D proprio: TCP xyz in the robot base frame, roll/pitch/yaw, opening / 0.08.

        Roll/pitch/yaw (extrinsic XYZ, base frame) are the rotation that takes the robot's
        gripper-down orientation (``RobotSetup.tcp_down``) to the TCP's: about 0 at rest. Measured
        from the TCP frame itself they sit where Euler angles lock (WidowX: pitch 90 deg) or wrap
        (Panda: roll 180 deg), so roll and yaw took an arbitrary value per episode that told a
        learned policy which demo it was in rather than how the arm was turned. (Upstream fed
        SAPIEN's (w, x, y, z) quaternion to a reader expecting (x, y, z, w).)
        """
        p, q = self.tcp_pose_world()
        turn = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix() @ np.asarray(self.robot.tcp_down).T
        rpy = Rotation.from_matrix(turn).as_euler("xyz")
        base = np.asarray(self.robot.base_xyz)
        out = np.concatenate([p - base, rpy, [self.gripper_opening() / self.robot.gripper_opening_max]])
        return out.astype(np.float32)

    def privileged_state(self) -> dict[str, np.ndarray | bool | float]:
        """Ground truth for the scripted expert and oracle baselines (world frame)."""
        p, q = self.tcp_pose_world()
        state = self._state  # evaluated after the last step / reset
        half_thickness = self.geometry.card_half_thickness
        return {
            "tcp_pos": p, "tcp_quat_wxyz": q,
            "cube_pos": np.array(state.cube_xyz),
            "cube_grasped": state.cube_grasped,
            "gripper_opening": self.gripper_opening(),
            "card_positions": np.array([[c.x, c.y, half_thickness] for c in state.cards]),
            "target_index": self.trial.target_index,
        }

    def joint_state(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        robot = self.agent.robot
        names = [j.name for j in robot.get_active_joints()]
        return names, robot.get_qpos()[0].cpu().numpy(), robot.get_qvel()[0].cpu().numpy()

    def policy_image(self) -> np.ndarray:
        """Render the policy camera now: uint8 (H, W, 3)."""
        self.scene.update_render(update_sensors=True, update_human_render_cameras=False)
        camera = self.scene.sensors["policy_camera"]
        camera.capture()
        rgb = camera.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]
        return rgb[0].cpu().numpy().astype(np.uint8)

    def camera_intrinsics(self) -> np.ndarray:
        """3x3 intrinsic matrix of the policy camera."""
        params = self.scene.sensors["policy_camera"].get_params()
        return params["intrinsic_cv"][0].cpu().numpy().astype(np.float64)

    def camera_extrinsics(self) -> np.ndarray:
        """4x4 world -> camera (OpenCV convention) matrix."""
        params = self.scene.sensors["policy_camera"].get_params()
        extr = params["extrinsic_cv"][0].cpu().numpy().astype(np.float64)
        return np.vstack([extr, [0, 0, 0, 1]])


def _require_robot_asset(uid: str) -> None:
    """Fail with instructions instead of ManiSkill's interactive download prompt."""
    from mani_skill import ASSET_DIR

    from gf_bringup.runtime import WIDOWX_URDF, asset_hint

    if uid == robots.GFWidowX250S.uid and not (ASSET_DIR.parent / WIDOWX_URDF).exists():
        raise FileNotFoundError(asset_hint())


def _yaw_quat(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
