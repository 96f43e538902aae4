"""The ManiSkill task: the right cards are rendered where they are, resets are exact, the expert works."""

import dataclasses

import cv2
import gymnasium as gym
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import gf_sim_bridge.env  # noqa: F401 - registers GrinningFace-v1
from gf_eval.camera import card_quads, policy_camera
from gf_eval.catalog import load_catalog, render_card
from gf_eval.trials import make_trial
from gf_sim_bridge.expert import ScriptedExpert, expert_config


@pytest.fixture(scope="module")
def env():
    e = gym.make("GrinningFace-v1", image_size=256, emoji_fraction=0.8)
    yield e
    e.close()


def test_the_three_rendered_cards_show_the_trials_emojis(env):
    task = env.unwrapped
    trial = make_trial("Val", 3)
    env.reset(seed=trial.seed, options={"trial": trial})
    image = task.policy_image()
    catalog = load_catalog()
    camera = policy_camera(256)
    # The analytic camera model of gf_eval must be the simulator's camera.
    assert np.allclose(camera.intrinsics, task.camera_intrinsics(), atol=1e-3)
    assert np.allclose(camera.extrinsics, task.camera_extrinsics(), atol=1e-5)
    quads = [q.astype(np.float32) for q in card_quads(trial, camera)]
    expected = [np.asarray(render_card(catalog[c.emoji_id], 256, 0.8)) for c in trial.cards]

    def similarity(quad, card_img):
        h = cv2.getPerspectiveTransform(np.float32([[0, 0], [255, 0], [255, 255], [0, 255]]), quad)
        warped = cv2.warpPerspective(card_img, h, image.shape[1::-1]).astype(float)
        mask = cv2.warpPerspective(np.ones((256, 256), np.uint8), h, image.shape[1::-1]).astype(bool)
        mask = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        a, b = image[mask].astype(float).ravel(), warped[mask].ravel()
        return float(np.corrcoef(a, b)[0, 1])

    scores = np.array([[similarity(q, e) for e in expected] for q in quads])
    for i in range(3):
        assert scores[i, i] > 0.6, scores
        assert scores[i, i] > max(np.delete(scores[i], i)) + 0.2, scores  # its own emoji, not another
    regions = [image[int(q[:, 1].min()):int(q[:, 1].max()), int(q[:, 0].min()):int(q[:, 0].max())] for q in quads]
    assert all(r.std() > 20 for r in regions)


def test_reset_reproduces_a_trial_exactly_whatever_ran_before(env):
    task = env.unwrapped
    expert = ScriptedExpert()

    def run(index):
        trial = make_trial("Train", index)
        env.reset(seed=trial.seed, options={"trial": trial})
        expert.reset(seed=trial.seed)
        states = []
        for _ in range(40):
            env.step(expert.act(task.privileged_state()))
            states.append(task.privileged_state()["cube_pos"].copy())
        return np.array(states), task.policy_image()

    first, image_first = run(4)
    run(9)
    again, image_again = run(4)
    assert np.array_equal(first, again)
    assert np.array_equal(image_first, image_again)


def test_proprio_is_base_frame_position_turn_from_gripper_down_and_normalised_gripper(env):
    task = env.unwrapped
    for index in range(4):
        trial = make_trial("Train", index)
        env.reset(seed=trial.seed, options={"trial": trial})
        proprio = task.proprio()
        p, q = task.tcp_pose_world()
        assert np.allclose(proprio[:3], p - np.array(task.robot.base_xyz), atol=1e-5)
        # The angles rebuild the TCP's orientation from the gripper-down one ...
        rebuilt = Rotation.from_euler("xyz", proprio[3:6]).as_matrix() @ np.asarray(task.robot.tcp_down)
        assert np.allclose(rebuilt, Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix(), atol=1e-5)
        # ... and at rest, gripper down, they are small: not locked or wrapped at an arbitrary value.
        assert np.abs(proprio[3:6]).max() < 0.2, proprio[3:6]
        assert 0.8 < proprio[6] <= 1.0  # open gripper


def test_sizes_other_than_the_built_scene_are_refused(env):
    trial = make_trial("Train", 0)
    bigger = dataclasses.replace(trial, geometry=dataclasses.replace(trial.geometry, cube_half_size=0.03))
    with pytest.raises(ValueError, match="sizes this scene was not built with"):
        env.reset(seed=0, options={"trial": bigger})


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["Train", "Val"])
def test_scripted_expert_succeeds(protocol):
    env = gym.make("GrinningFace-v1", obs_mode="none")
    task, expert, outcomes = env.unwrapped, ScriptedExpert(), []
    for i in range(12):
        trial = make_trial(protocol, i)
        env.reset(seed=trial.seed, options={"trial": trial})
        expert.reset(seed=trial.seed)
        for _ in range(200):
            _, _, _, _, info = env.step(expert.act(task.privileged_state()))
            if bool(info["success"][0]):
                break
        outcomes.append(bool(info["success"][0]))
    env.close()
    assert sum(outcomes) >= 11, outcomes


@pytest.mark.slow
def test_upstream_paced_expert_takes_upstreams_126_steps_or_more_and_succeeds():
    env = gym.make("GrinningFace-v1", obs_mode="none")
    task, expert, lengths = env.unwrapped, ScriptedExpert(expert_config("upstream")), []
    for i in range(4):
        trial = make_trial("Train", i)
        env.reset(seed=trial.seed, options={"trial": trial})
        expert.reset(seed=trial.seed)
        for step in range(1, 201):
            _, _, _, _, info = env.step(expert.act(task.privileged_state()))
            if bool(info["success"][0]):
                lengths.append(step)
                break
    env.close()
    assert len(lengths) == 4 and min(lengths) >= 126, lengths


def test_expert_profiles_are_named_and_an_unknown_one_is_refused():
    assert expert_config("upstream", action_noise=0.1).action_noise == 0.1
    assert expert_config("fast").min_steps == {}
    with pytest.raises(ValueError, match="unknown expert profile 'slow'"):
        expert_config("slow")


def test_wrong_card_expert_places_on_another_card(env):
    task = env.unwrapped
    trial = make_trial("Val", 7)
    env.reset(seed=trial.seed, options={"trial": trial})
    expert = ScriptedExpert(wrong_card=True)
    expert.reset(seed=1)
    for _ in range(120):
        _, _, _, _, info = env.step(expert.act(task.privileged_state()))
    assert bool(info["executed"][0]) and not bool(info["success"][0])
    assert int(info["placed_card"][0]) == expert.chosen_card(trial.target_index) != trial.target_index


def test_gf_layouts_writes_a_contact_sheet_with_the_target_outlined(tmp_path):
    from PIL import Image

    from gf_sim_bridge.layouts import main

    out = tmp_path / "layouts.png"
    assert main(["--protocol", "Val", "--count", "2", "--image-size", "128", "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(int)
    green = (sheet[..., 1] > 200) & (sheet[..., 0] < 60) & (sheet[..., 2] < 60)
    assert green.sum() > 100  # the outlines of the two target cards


def test_an_episode_on_the_wrong_card_ends_as_wrong_card_not_as_timeout():
    """A wrong choice must not read as a slow policy: after the step budget the session names it."""
    from gf_eval.action_space import EE_DELTA_POSE, ValidChunk
    from gf_sim_bridge.session import SimConfig, SimSession

    session = SimSession(SimConfig(max_steps=120))
    trial = make_trial("Val", 7)
    session.reset(trial)
    expert = ScriptedExpert(wrong_card=True)
    expert.reset(seed=1)
    while not session.status.done:
        action = expert.act(session.task.privileged_state())
        session.execute(ValidChunk(trial.trial_id, session.status.step, action[None, :], EE_DELTA_POSE))
    session.close()
    assert session.status.reason == "wrong_card" and session.status.step == 120
    assert session.status.placed_card == expert.chosen_card(trial.target_index) != trial.target_index


def test_what_step_returns_holds_what_the_policy_sees(env):
    """ManiSkill's observation path: ``extra.proprio`` is the policy's proprio, the cube and card
    positions come with state observations."""
    task = env.unwrapped
    trial = make_trial("Val", 3)
    env.reset(seed=trial.seed, options={"trial": trial})
    obs, *_ = env.step(np.zeros(7, np.float32))
    np.testing.assert_allclose(obs["extra"]["proprio"][0].numpy(), task.proprio(), atol=1e-6)
    assert obs["extra"]["card_positions"].shape == (1, 3, 3)
    np.testing.assert_allclose(obs["extra"]["cube_pos"][0].numpy(), task.privileged_state()["cube_pos"], atol=1e-6)
