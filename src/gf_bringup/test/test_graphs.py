"""Static checks of the graph descriptions and the launch files built from them."""

import ast
import dataclasses
import string
from importlib.metadata import distribution
from pathlib import Path

import pytest
import yaml

from gf_bringup.graphs import config_fields, load_graphs, load_object, params_file_key
from gf_bringup.launcher import node_ros_args, parse_assignments
from gf_bringup.runtime import package_file, workspace_root

GRAPHS = load_graphs()
NODES = [(g, n) for g in GRAPHS.values() for n in g.nodes]
LAUNCH_FILES = {"sim_eval": ("gf_eval", "launch/sim_eval.launch.py")}


@pytest.mark.parametrize("graph,node", NODES, ids=lambda x: getattr(x, "name", ""))
def test_every_node_executable_class_and_parameter_exists(graph, node):
    scripts = {ep.name: ep.value for ep in distribution(node.package).entry_points if ep.group == "console_scripts"}
    assert node.executable in scripts, f"{node.package} has no console script {node.executable}"
    assert scripts[node.executable].split(":")[0] == node.node_class.split(":")[0]
    assert isinstance(load_object(node.node_class), type)
    config = load_object(node.config_class)
    assert dataclasses.is_dataclass(config)
    fields = config_fields(node)
    assert set(node.parameters) <= set(fields), set(node.parameters) - set(fields)
    arg_names = set(graph.resolve_args({}))  # declared arguments and the derived ones
    for template in node.parameters.values():
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        assert used <= arg_names, used - arg_names
    if node.condition:
        assert node.condition in arg_names
    if node.params_file:
        params = yaml.safe_load(package_file(node.package, node.params_file).read_text())
        assert list(params) == [params_file_key(node.name)]  # reaches the node under any namespace
        assert set(params[params_file_key(node.name)]["ros__parameters"]) <= set(fields)


@pytest.mark.parametrize("graph", GRAPHS.values(), ids=lambda g: g.name)
def test_defaults_resolve_to_typed_parameters(graph, tmp_path):
    values = graph.resolve_args({})
    for node in graph.active_nodes(values):
        params = graph.node_parameters(node, values)
        fields = config_fields(node)
        for name, value in params.items():
            expected = fields[name]
            assert isinstance(value, expected) or (expected is float and isinstance(value, int)), (node.name, name, value)
        args = node_ros_args(graph, node, values, tmp_path)
        assert args[:3] == ["--ros-args", "-r", f"__node:={node.name}"]


def test_sim_eval_arguments_derive_ground_truth_from_the_backend():
    graph = GRAPHS["sim_eval"]
    assert graph.resolve_args({"policy": "oracle"})["ground_truth"] == "true"
    assert graph.resolve_args({"policy": "oracle", "ground_truth": "false"})["ground_truth"] == "false"
    assert graph.resolve_args({"policy": "chance"})["output_dir"] == "outputs/sim_eval/chance"
    with pytest.raises(ValueError, match="unknown argument"):
        graph.resolve_args({"polcy": "oracle"})
    assert parse_assignments(["a:=1", "b:=x:=y"]) == {"a": "1", "b": "x:=y"}


@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_launch_files_are_built_from_the_graph_description(name):
    package, rel = LAUNCH_FILES[name]
    path = package_file(package, rel)
    tree = ast.parse(path.read_text())
    imported = {alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for alias in n.names}
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert GRAPHS[name].name == name and name.upper() in imported and "launch_description" in imported


def test_every_launch_file_in_the_workspace_is_checked():
    root = workspace_root()
    if root is None:
        pytest.skip("not running from the source workspace")
    found = {p.name.removesuffix(".launch.py") for p in Path(root, "src").glob("*/launch/*.launch.py")}
    assert found <= set(LAUNCH_FILES) | {g for g in GRAPHS}, found


def test_launch_arguments_are_coerced_to_the_declared_types_or_refused_in_one_line():
    graph = GRAPHS["sim_eval"]
    values = graph.resolve_args({"policy_timeout": "10", "protocols": "Val"})
    eval_node = next(n for n in graph.nodes if n.name == "eval")
    params = graph.node_parameters(eval_node, values)
    assert params["policy_timeout_s"] == 10.0 and isinstance(params["policy_timeout_s"], float)
    assert params["protocols"] == ["Val"]
    for bad, message in [({"trials": "ten"}, "expected an integer, got 'ten'"),
                         ({"policy_timeout": "soon"}, "expected a number, got 'soon'"),
                         ({"headless": "maybe"}, "headless: expected true or false"),
                         ({"network": "internet"}, "network: expected one of loopback, robot")]:
        with pytest.raises(ValueError, match=message):
            graph.check_args(graph.resolve_args(bad))


@pytest.mark.parametrize("graph", GRAPHS.values(), ids=lambda g: g.name)
def test_every_default_argument_passes_the_type_check(graph):
    graph.check_args(graph.resolve_args({}))
