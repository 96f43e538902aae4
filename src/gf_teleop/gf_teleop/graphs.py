"""The graphs of gf_teleop, built from the simulated evaluation graph (gf_bringup.graphs.SIM_EVAL).

* ``demos``: sim bridge + policy (the scripted expert by default) + eval node running the
  ``Demo`` protocol + the episode recorder in auto mode. ``gf-demos generate`` runs one per
  worker, each on its own ROS domain and trial-index range.
* ``teleop_sim``: the same without the policy node: a person drives the simulated arm with
  ``gf-teleop`` (in another terminal, same ROS_DOMAIN_ID) and every trial is recorded.

Both are registered under the ``gf.graphs`` entry-point group, so ``gf-launch demos ...`` and
the launch files in gf_teleop/launch start them.
"""

from __future__ import annotations

from dataclasses import replace

from gf_bringup.graphs import SIM_EVAL, Arg, Graph, NodeSpec, parse_arg

from . import episodes as ep

RECORDER = NodeSpec(
    package="gf_teleop", executable="gf-recorder", name="recorder",
    node_class="gf_teleop.recorder_node:RecorderNode", config_class="gf_teleop.recorder_node:RecorderNodeConfig",
    params_file="config/recorder.yaml",
    parameters={"output_dir": "{demo_dir}", "operator": "{operator}", "mode": "auto", "source": "sim",
                "topics": "{record_topics}"},
)


OUTPUT_DIR = Arg("output_dir", "", "results directory of the eval node ('' = <demo_dir>/eval); an existing one is resumed")
RECORD_GROUND_TRUTH = Arg("record_ground_truth", "false",
                          "also record /gf/sim_state, the simulator's ground truth (replaying the oracle, privileged targets)")


def _args(defaults: dict[str, str], drop: tuple[str, ...] = ()) -> tuple[Arg, ...]:
    args = (OUTPUT_DIR if a.name == OUTPUT_DIR.name else a for a in SIM_EVAL.args if a.name not in drop)
    return tuple(replace(a, default=defaults.get(a.name, a.default)) for a in args)


def _derive(values: dict[str, str]) -> dict[str, str]:
    derived = SIM_EVAL.derive(values) if SIM_EVAL.derive else {}
    if values["output_dir"] == "":
        # Eval results (scores, report) next to the demos they belong to.
        derived["output_dir"] = f"{values['demo_dir'].rstrip('/')}/eval"
    topics = list(ep.DEFAULT_TOPICS)
    if parse_arg(values["record_ground_truth"]) is True:
        derived["ground_truth"] = "true"  # the bridge must publish what the recorder is to record
        topics.append(ep.SIM_STATE)
    derived["record_topics"] = "[" + ", ".join(topics) + "]"
    return derived


DEMOS = Graph(
    name="demos",
    description="Demonstrations in simulation: sim bridge + policy + eval node (Demo protocol) + episode recorder",
    args=(
        *_args({"protocols": "[Demo]", "trials": "10"}),
        Arg("demo_dir", "demos", "demo directory of the recorder (bags + manifest.jsonl)"),
        Arg("operator", "scripted-expert", "recorded as the operator of every episode"),
        RECORD_GROUND_TRUTH,
    ),
    nodes=(*SIM_EVAL.nodes, RECORDER),
    derive=_derive,
)

TELEOP_SIM = Graph(
    name="teleop_sim",
    description="Teleoperated demonstrations in simulation: sim bridge + eval node + recorder; drive with gf-teleop",
    args=(
        *_args({"policy": "teleop", "protocols": "[Demo]", "trials": "10", "ground_truth": "false",
                "policy_timeout": "300.0", "max_steps": "600"}, drop=("backend_args",)),
        Arg("demo_dir", "demos/teleop", "demo directory of the recorder (bags + manifest.jsonl)"),
        Arg("operator", "operator", "recorded as the operator of every episode"),
        RECORD_GROUND_TRUTH,
    ),
    nodes=tuple(n for n in (*SIM_EVAL.nodes, RECORDER) if n.package != "gf_policy"),
    derive=_derive,
    companion="gf-teleop",
)
