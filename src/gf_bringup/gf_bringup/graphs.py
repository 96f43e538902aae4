"""The ROS graphs of the workspace, described once.

Both the launch files (``ros2 launch gf_eval sim_eval.launch.py`` on a ROS 2 install, via
gf_bringup.launch_support) and the ``gf-launch`` starter (machines without ``ros2``) are built from
these descriptions, so the two cannot drift apart.

Parameter values are templates over the launch arguments (``"{policy}"``); after substitution
each value is parsed as YAML, so ``"true"`` becomes a bool and ``"[ID, Val]"`` a list, exactly
as ``-p name:=value`` would be. ``derive`` computes arguments from others (e.g. the ground-truth
topic is on exactly when the policy backend asks for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from gf_bringup.constants import DEFAULT_SPLIT, EPISODE_STEPS


@dataclass(frozen=True)
class Arg:
    name: str
    default: str
    description: str


@dataclass(frozen=True)
class NodeSpec:
    package: str
    executable: str  # console script (also installed in lib/<package> by colcon)
    name: str  # node name (must equal the name the node class gives itself)
    node_class: str  # "module:Class", for composition in one process
    config_class: str  # "module:Dataclass" whose fields are the node's parameters
    params_file: str = ""  # package-relative YAML (ROS params file), "" for none
    parameters: dict[str, str] = field(default_factory=dict)  # name -> template over the args
    required: bool = False  # the graph ends when this node exits
    condition: str = ""  # launch argument that must be true for the node to start
    enclave: str = ""  # SROS2 enclave (gf_bringup.enclaves role) under network:=robot-secure, "" for none


NAMESPACE = Arg("namespace", "", "ROS namespace of every node ('' = none): two graphs in one ROS domain under two namespaces never meet")


@dataclass(frozen=True)
class Graph:
    name: str
    description: str
    args: tuple[Arg, ...]
    nodes: tuple[NodeSpec, ...]
    derive: Callable[[dict[str, str]], dict[str, str]] | None = None
    companion: str = ""  # console script a person runs beside the graph (e.g. gf-teleop), "" for none

    def __post_init__(self) -> None:
        if all(a.name != NAMESPACE.name for a in self.args):  # every graph can run under a namespace
            object.__setattr__(self, "args", (*self.args, NAMESPACE))

    def arg(self, name: str) -> Arg:
        for a in self.args:
            if a.name == name:
                return a
        raise KeyError(f"graph {self.name} has no argument {name!r}")

    def resolve_args(self, overrides: dict[str, str]) -> dict[str, str]:
        unknown = set(overrides) - {a.name for a in self.args}
        if unknown:
            raise ValueError(f"unknown argument(s) for {self.name}: {sorted(unknown)}; known: {[a.name for a in self.args]}")
        values = {a.name: str(overrides.get(a.name, a.default)) for a in self.args}
        if self.derive is not None:
            values.update(self.derive(values))
        return values

    def node_parameters(self, node: NodeSpec, values: dict[str, str]) -> dict[str, object]:
        """Typed parameters of ``node`` for the resolved argument ``values``.

        String fields of the node's config keep the substituted text as is; the others are
        parsed as YAML, as ``-p name:=value`` would parse them.
        """
        import typing

        hints = typing.get_type_hints(load_object(node.config_class))
        out = {}
        for name, template in node.parameters.items():
            out[name] = _coerce(template.format(**values), hints[name], f"{node.name}.{name} (from {template!r})")
        return out

    def check_args(self, values: dict[str, str]) -> None:
        """Raise ValueError (one line) for any argument a node's parameter cannot take."""
        from gf_bringup.runtime import NETWORK_MODES, SECURE_NETWORK

        for a in self.args:
            if a.default in ("true", "false") and not isinstance(parse_arg(values[a.name]), bool):
                raise ValueError(f"{a.name}: expected true or false, got {values[a.name]!r}")
        network = values.get("network", "loopback")
        if network not in NETWORK_MODES:
            raise ValueError(f"network: expected one of {', '.join(NETWORK_MODES)}, got {values['network']!r}")
        if network == SECURE_NETWORK:
            unenclaved = [n.name for n in self.active_nodes(values) if not n.enclave]
            if unenclaved:
                raise ValueError(f"network:={SECURE_NETWORK}: the {self.name} graph's node(s) {', '.join(unenclaved)} "
                                 "have no enclave (only the robot graphs run secured)")
            if not values.get("keystore"):
                raise ValueError(f"network:={SECURE_NETWORK} needs keystore:=DIR (made with `gf-keys keystore DIR --domain N`)")
        for node in self.active_nodes(values):
            self.node_parameters(node, values)

    def active_nodes(self, values: dict[str, str]) -> list[NodeSpec]:
        return [n for n in self.nodes if not n.condition or parse_arg(values[n.condition]) is True]


def params_file_key(node_name: str) -> str:
    """A node's section in a ROS parameters file, for any namespace: a plain ``name:`` key would
    not reach the node once its graph runs under a namespace."""
    return f"/**/{node_name}"


POLICY_BACKENDS = "gf.policy_backends"  # entry-point group of policy backends (gf_policy.backend)


def plugin(group: str, name: str):
    """The object registered as ``name`` under the entry-point ``group``: the graphs know backends
    only by name, so this package does not depend on the packages that provide them."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=group)}
    if name not in found:
        raise ValueError(f"unknown {group} entry {name!r}; installed: {sorted(found)}")
    return found[name].load()


def load_object(path: str):
    """Import "module:attribute"."""
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def config_fields(node: NodeSpec) -> dict[str, type]:
    """Parameter name -> Python type of a node's config dataclass."""
    import typing

    hints = typing.get_type_hints(load_object(node.config_class))
    return {name: typing.get_origin(t) or t for name, t in hints.items()}


def _coerce(text: str, hint, where: str) -> object:
    """``text`` as a parameter of type ``hint`` (``float``, ``list[float]``, ...), or ValueError naming
    the parameter: a wrong type would otherwise stop the node with a traceback. An int is taken
    where a float is declared, and a single value where a list is."""
    import typing

    if hint is str:
        return text
    value = parse_arg(text)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (str,)
        items = value if isinstance(value, list) else [value]
        return [_coerce_value(v, item, where, text) for v in items]
    return _coerce_value(value, hint, where, text)


def _coerce_value(value: object, kind: type, where: str, text: str) -> object:
    if kind is str:
        return str(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, kind.__name__)
    raise ValueError(f"{where}: expected {expected}, got {text!r}")


def parse_arg(text: str) -> object:
    """Parse a substituted value the way ``-p name:=value`` does (YAML), keeping '' as ''."""
    if text == "":
        return ""
    value = yaml.safe_load(text)
    return text if value is None else value


def _derive_sim_eval(values: dict[str, str]) -> dict[str, str]:

    derived = {}
    if values["ground_truth"] == "auto":
        derived["ground_truth"] = "true" if plugin(POLICY_BACKENDS, values["policy"]).needs_privileged else "false"
    derived["viewer"] = "false" if parse_arg(values["headless"]) is True else "true"
    if values["output_dir"] == "":
        derived["output_dir"] = f"outputs/sim_eval/{values['policy']}"
    return derived


SIM_EVAL = Graph(
    name="sim_eval",
    description="Simulated GrinningFace evaluation: sim bridge + policy + eval node (the main job)",
    args=(
        Arg("policy", "oracle", "policy backend: oracle, chance, replay, vla, remote, or any gf.policy_backends entry point"),
        Arg("backend_args", "", "YAML mapping of backend keyword arguments, e.g. '{checkpoint: /path/to/ckpt}'"),
        Arg("checkpoint", "", "checkpoint recorded with the results (pass it to the backend via backend_args)"),
        Arg("protocols", "[ID, Train, Val]", "protocols to run"),
        Arg("trials", "100", "trials per protocol"),
        Arg("first_index", "0", "index of the first trial of each protocol (split a run across workers)"),
        Arg("seed", "0", "base seed of the trial specs"),
        Arg("split", DEFAULT_SPLIT, "emoji split (shipped name or path to a split file)"),
        Arg("demo_manifest", "", "demo manifest defining the ID protocol ('' = the canonical demo set)"),
        Arg("output_dir", "", "results directory ('' = outputs/sim_eval/<policy>); an existing one is resumed"),
        Arg("image_size", "224", "policy camera resolution in pixels"),
        Arg("robot", "widowx", "robot: widowx or panda"),
        Arg("ground_truth", "auto", "publish /gf/sim_state: auto (when the backend needs it), true, false"),
        Arg("max_steps", str(EPISODE_STEPS), "episode length in control steps at 20 Hz (the benchmark's is 200)"),
        Arg("policy_timeout", "60.0", "wall-clock seconds without progress before a trial ends as policy_timeout"),
        Arg("headless", "true", "false opens the SAPIEN viewer window of the simulated scene (needs a display)"),
        Arg("network", "loopback", "DDS network: loopback (nothing leaves the machine) or robot"),
    ),
    nodes=(
        NodeSpec(
            package="gf_sim_bridge", executable="gf-sim-bridge", name="sim_bridge",
            node_class="gf_sim_bridge.bridge_node:SimBridgeNode", config_class="gf_sim_bridge.bridge_node:BridgeConfig",
            params_file="config/sim_bridge.yaml",
            parameters={"robot": "{robot}", "image_size": "{image_size}", "split": "{split}", "ground_truth": "{ground_truth}",
                        "viewer": "{viewer}", "max_steps": "{max_steps}"},
        ),
        NodeSpec(
            package="gf_policy", executable="gf-policy", name="policy",
            node_class="gf_policy.policy_node:PolicyNode", config_class="gf_policy.policy_node:PolicyNodeConfig",
            params_file="config/policy.yaml",
            parameters={"backend": "{policy}", "backend_args": "{backend_args}"},
        ),
        NodeSpec(
            package="gf_eval", executable="gf-eval", name="eval",
            node_class="gf_eval.eval_node:EvalNode", config_class="gf_eval.eval_node:EvalNodeConfig",
            params_file="config/eval.yaml", required=True,
            parameters={
                "policy": "{policy}", "checkpoint": "{checkpoint}", "protocols": "{protocols}", "trials": "{trials}", "first_index": "{first_index}",
                "seed": "{seed}", "split": "{split}", "demo_manifest": "{demo_manifest}", "output_dir": "{output_dir}",
                "robot": "{robot}", "policy_timeout_s": "{policy_timeout}",
            },
        ),
    ),
    derive=_derive_sim_eval,
)

GRAPHS: dict[str, Graph] = {SIM_EVAL.name: SIM_EVAL}


def register(graph: Graph) -> None:
    """Add a graph (packages with their own graphs, e.g. the robot bring-up, call this)."""
    GRAPHS[graph.name] = graph


def load_graphs() -> dict[str, Graph]:
    """Built-in graphs plus those registered under the ``gf.graphs`` entry-point group."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="gf.graphs"):
        graph = ep.load()
        GRAPHS.setdefault(graph.name, graph)
    return GRAPHS
