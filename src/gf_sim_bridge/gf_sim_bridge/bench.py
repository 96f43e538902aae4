"""gf-bench sim: simulator speed of the GrinningFace task next to ManiSkill's PickCube-v1, same run.

Figures: control steps per second with physics only (no rendering), with the policy camera
rendered every step, and scripted-expert episodes per minute. The reference is ManiSkill's own
PickCube-v1 (Panda, CPU physics) measured the same way in the same process, in rounds that
alternate with GrinningFace's so that both see the same machine (this host's speed wanders).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import gymnasium as gym
import numpy as np

ROUNDS = 5  # this host's speed wanders by +-25 % within minutes: alternate short rounds, report medians


class _Stepper:
    """Steps one env with zero actions (and a render after each step, if given), timing rounds."""

    def __init__(self, env, render=None):
        self.env, self.render = env, render
        self.action = np.zeros(env.action_space.shape, dtype=np.float32)
        self.rates: list[float] = []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.env.step(self.action)
            if self.render is not None:
                self.render()

    def timed_round(self, steps: int) -> None:
        start = time.perf_counter()
        self.run(steps)
        self.rates.append(steps / (time.perf_counter() - start))


def _alternate(subject: _Stepper, reference: _Stepper, steps: int, warmup: int = 15) -> None:
    """Warm both up (lavapipe compiles its shaders during a process's first ~10 renders, seconds
    each), then time ``ROUNDS`` rounds of each in turn so both see the same machine."""
    subject.run(warmup)
    reference.run(warmup)
    per_round = max(1, steps // ROUNDS)
    for _ in range(ROUNDS):
        subject.timed_round(per_round)
        reference.timed_round(per_round)


def measure(steps: int, image_size: int, episodes: int, robot: str) -> dict[str, dict]:
    """GrinningFace-v1 and PickCube-v1 (ManiSkill's reference task, CPU physics), same process."""
    import mani_skill.envs  # noqa: F401

    import gf_sim_bridge.env  # noqa: F401
    from gf_eval.trials import make_trial
    from gf_sim_bridge.expert import ScriptedExpert

    env = gym.make("GrinningFace-v1", robot=robot, image_size=image_size, obs_mode="none")
    task = env.unwrapped
    trial = make_trial("Train", 0)
    env.reset(seed=trial.seed, options={"trial": trial})
    ref_env = gym.make("PickCube-v1", obs_mode="state", sim_backend="physx_cpu")
    ref_env.reset(seed=0)
    gf_physics, ref_physics = _Stepper(env), _Stepper(ref_env)
    _alternate(gf_physics, ref_physics, steps)  # before any rendering: the shader JIT uses both cores
    ref_env.close()

    first = time.perf_counter()
    task.policy_image()
    first_render = time.perf_counter() - first
    ref_env = gym.make("PickCube-v1", obs_mode="rgb", sim_backend="physx_cpu",
                       sensor_configs=dict(width=image_size, height=image_size))
    ref_env.reset(seed=0)
    gf_rendered, ref_rendered = _Stepper(env, task.policy_image), _Stepper(ref_env)  # obs_mode rgb renders in step()
    _alternate(gf_rendered, ref_rendered, max(40, steps // 5))
    ref_env.close()

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
    return {
        "gf": {"physics": gf_physics.rates, "rendered": gf_rendered.rates, "episodes_per_min": per_minute,
               "first_render": first_render, "expert_success": successes / max(1, episodes),
               "steps_per_episode": total_steps / max(1, episodes)},
        "ref": {"physics": ref_physics.rates, "rendered": ref_rendered.rates},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-bench sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="physics-only control steps to time")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--episodes", type=int, default=10, help="expert episodes to time")
    parser.add_argument("--robot", default="widowx")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of the table")
    args = parser.parse_args(argv)
    print(f"measuring GrinningFace-v1 ({args.robot}) and PickCube-v1 on this machine ...", flush=True,
          file=sys.stderr if args.json else sys.stdout)
    figures = measure(args.steps, args.image_size, args.episodes, args.robot)
    gf, ref = figures["gf"], figures["ref"]
    physics, rendered = float(np.median(gf["physics"])), float(np.median(gf["rendered"]))
    ref_physics, ref_rendered = float(np.median(ref["physics"])), float(np.median(ref["rendered"]))
    if args.json:
        print(json.dumps({
            "robot": args.robot, "image_size": args.image_size, "rounds": ROUNDS,
            "grinningface": {"physics_steps_per_s": physics, "rendered_steps_per_s": rendered,
                             "expert_episodes_per_min": gf["episodes_per_min"], "expert_success": gf["expert_success"],
                             "steps_per_episode": gf["steps_per_episode"], "first_render_s": gf["first_render"]},
            "reference_pickcube": {"physics_steps_per_s": ref_physics, "rendered_steps_per_s": ref_rendered},
            "targets": {"physics_steps_per_s": {"target": 300, "met": physics >= 300},
                        "rendered_steps_per_s": {"target": 15, "met": rendered >= 15}},
        }))
        return 0
    print(f"\n{'':34s}{'GrinningFace-v1':>18s}{'PickCube-v1 (ref)':>20s}{'ratio':>8s}   (median of {ROUNDS} alternating rounds; GF range)")
    print(f"{'control steps/s, physics only':34s}{physics:18.0f}{ref_physics:20.0f}{physics / ref_physics:8.2f}"
          f"   {min(gf['physics']):.0f}-{max(gf['physics']):.0f}")
    print(f"{'control steps/s, camera ' + str(args.image_size) + 'px':34s}{rendered:18.1f}{ref_rendered:20.1f}"
          f"{rendered / ref_rendered:8.2f}   {min(gf['rendered']):.1f}-{max(gf['rendered']):.1f}")
    print(f"{'expert episodes/min (no camera)':34s}{gf['episodes_per_min']:18.1f}{'-':>20s}")
    print(f"\nexpert: {100 * gf['expert_success']:.0f}% success over {args.episodes} episodes, "
          f"{gf['steps_per_episode']:.0f} steps per episode")
    met = {True: "met", False: "MISSED"}
    print(f"targets: >= 300 physics steps/s ({met[physics >= 300]}), >= 15 rendered steps/s ({met[rendered >= 15]})")
    print(f"first rendered frame of a process (lavapipe compiles its shaders): {gf['first_render']:.1f} s; "
          "frame rates are measured after 15 warm-up frames")
    return 0
