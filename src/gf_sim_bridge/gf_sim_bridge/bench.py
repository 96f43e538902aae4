"""gf-bench sim: simulator speed of the GrinningFace task next to ManiSkill's PickCube-v1, same run.

Figures: control steps per second with physics only (no rendering), with the policy camera
rendered every step, and scripted-expert episodes per minute. The reference is ManiSkill's own
PickCube-v1 (Panda, CPU physics) measured the same way in the same process.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np


def _steps_per_second(env, steps: int, render, warmup: int = 15) -> float:
    """Control steps per second (with ``render()`` after each) once the first frames are done:
    lavapipe compiles its shaders during the first ~10 renders of a process (seconds each)."""
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    for _ in range(warmup):
        env.step(action)
        if render is not None:
            render()
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
        if render is not None:
            render()
    return steps / (time.perf_counter() - start)


def measure_grinningface(steps: int, image_size: int, episodes: int, robot: str) -> dict[str, float]:
    import gf_sim_bridge.env  # noqa: F401
    from gf_eval.trials import make_trial
    from gf_sim_bridge.expert import ScriptedExpert

    env = gym.make("GrinningFace-v1", robot=robot, image_size=image_size, obs_mode="none")
    task = env.unwrapped
    trial = make_trial("Train", 0)
    env.reset(seed=trial.seed, options={"trial": trial})
    physics = _steps_per_second(env, steps, None)  # before any rendering: lavapipe's shader JIT uses both cores
    first = time.perf_counter()
    task.policy_image()
    first_render = time.perf_counter() - first
    rendered = _steps_per_second(env, max(40, steps // 5), task.policy_image)
    expert, successes, total_steps = ScriptedExpert(), 0, 0
    start = time.perf_counter()
    for i in range(episodes):
        trial = make_trial("Train", 1000 + i)
        env.reset(seed=trial.seed, options={"trial": trial})
        expert.reset(seed=trial.seed)
        for _ in range(200):
            _, _, _, _, info = env.step(expert.act(task.privileged_state()))
            total_steps += 1
            if bool(info["success"][0]):
                successes += 1
                break
    per_minute = episodes / (time.perf_counter() - start) * 60
    env.close()
    return {"physics": physics, "rendered": rendered, "episodes_per_min": per_minute, "first_render": first_render,
            "expert_success": successes / max(1, episodes), "steps_per_episode": total_steps / max(1, episodes)}


def measure_pickcube(steps: int, image_size: int) -> dict[str, float]:
    import mani_skill.envs  # noqa: F401

    env = gym.make("PickCube-v1", obs_mode="state", sim_backend="physx_cpu")
    env.reset(seed=0)
    physics = _steps_per_second(env, steps, None)
    env.close()
    env = gym.make("PickCube-v1", obs_mode="rgb", sim_backend="physx_cpu",
                   sensor_configs=dict(width=image_size, height=image_size))
    env.reset(seed=0)
    rendered = _steps_per_second(env, max(40, steps // 5), None)  # obs_mode rgb renders in step()
    env.close()
    return {"physics": physics, "rendered": rendered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-bench sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="physics-only control steps to time")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--episodes", type=int, default=10, help="expert episodes to time")
    parser.add_argument("--robot", default="widowx")
    args = parser.parse_args(argv)
    print(f"measuring GrinningFace-v1 ({args.robot}) and PickCube-v1 on this machine ...", flush=True)
    gf = measure_grinningface(args.steps, args.image_size, args.episodes, args.robot)
    ref = measure_pickcube(args.steps, args.image_size)
    print(f"\n{'':34s}{'GrinningFace-v1':>18s}{'PickCube-v1 (ref)':>20s}{'ratio':>8s}")
    print(f"{'control steps/s, physics only':34s}{gf['physics']:18.0f}{ref['physics']:20.0f}{gf['physics'] / ref['physics']:8.2f}")
    print(f"{'control steps/s, camera ' + str(args.image_size) + 'px':34s}{gf['rendered']:18.1f}{ref['rendered']:20.1f}"
          f"{gf['rendered'] / ref['rendered']:8.2f}")
    print(f"{'expert episodes/min (no camera)':34s}{gf['episodes_per_min']:18.1f}{'-':>20s}")
    print(f"\nexpert: {100 * gf['expert_success']:.0f}% success over {args.episodes} episodes, "
          f"{gf['steps_per_episode']:.0f} steps per episode; targets: >= 300 physics steps/s, >= 15 rendered steps/s")
    print(f"first rendered frame of a process (lavapipe compiles its shaders): {gf['first_render']:.1f} s; "
          "frame rates are measured after 15 warm-up frames")
    return 0
