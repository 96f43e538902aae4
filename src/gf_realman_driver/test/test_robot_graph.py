"""Static checks of the robot graphs, their launch files and parameter files (no processes started)."""

from __future__ import annotations

import ast
import dataclasses
import re
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import yaml

from gf_bringup.graphs import config_fields, load_graphs, params_file_key
from gf_bringup.launcher import node_ros_args
from gf_bringup.runtime import package_file
from gf_realman_driver.driver_node import DriverConfig
from gf_realman_driver.graphs import ROBOT, ROBOT_CALIBRATE

LAUNCH = {"robot": "launch/robot.launch.py", "robot_calibrate": "launch/robot_calibrate.launch.py"}


@pytest.mark.parametrize("name", sorted(LAUNCH))
def test_launch_files_are_built_from_the_graph_description(name):
    tree = ast.parse(package_file("gf_realman_driver", LAUNCH[name]).read_text())
    imported = {alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for alias in n.names}
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert name.upper() in imported and "launch_description" in imported
    assert load_graphs()[name].name == name  # registered through the gf.graphs entry points


def test_gf_bench_arm_and_the_touch_oracle_are_registered():
    assert "arm" in {e.name for e in entry_points(group="gf.bench")}
    assert "touch_oracle" in {e.name for e in entry_points(group="gf.policy_backends")}


def test_dry_run_swaps_in_the_simulated_arm_camera_layout_and_policy():
    values = ROBOT.resolve_args({"dry_run": "true"})
    assert values["camera"] == "test_pattern" and values["policy"] == "touch_oracle"
    assert values["layout"].endswith("config/touch_layout_dry_run.yaml") and Path(values["layout"]).exists()
    assert yaml.safe_load(values["backend_args"]) == {"layout": values["layout"]}
    assert values["output_dir"] == "outputs/touch_eval/touch_oracle_dry_run"
    driver = next(n for n in ROBOT.nodes if n.name == "realman_driver")
    assert ROBOT.node_parameters(driver, values)["dry_run"] is True
    extra = ROBOT.resolve_args({"dry_run": "true", "backend_args": "{aim: [target, between]}"})
    assert yaml.safe_load(extra["backend_args"]) == {"layout": values["layout"], "aim": ["target", "between"]}


def test_a_real_run_takes_the_arm_and_camera_from_the_config_files_unless_overridden():
    values = ROBOT.resolve_args({})
    rm75 = yaml.safe_load(package_file("gf_realman_driver", "config/rm75.yaml").read_text())["/**/realman_driver"]["ros__parameters"]
    assert values["arm_ip"] == rm75["arm_ip"] and values["arm_port"] == str(rm75["arm_port"])
    assert values["camera"] == "opencv" and values["policy"] == "vla" and values["layout"] == "calibration/touch_layout.yaml"
    values = ROBOT.resolve_args({"arm_ip": "10.1.2.3", "arm_port": "9090", "camera_device": "/dev/video2"})
    driver = next(n for n in ROBOT.nodes if n.name == "realman_driver")
    params = ROBOT.node_parameters(driver, values)
    assert params["arm_ip"] == "10.1.2.3" and params["arm_port"] == 9090 and params["trial_gating"] is True
    calibrate_driver = next(n for n in ROBOT_CALIBRATE.nodes if n.name == "realman_driver")
    assert ROBOT_CALIBRATE.node_parameters(calibrate_driver, ROBOT_CALIBRATE.resolve_args({}))["trial_gating"] is False


def test_the_policy_acts_on_the_stream_and_the_eval_node_is_required(tmp_path):
    values = ROBOT.resolve_args({"dry_run": "true"})
    policy = next(n for n in ROBOT.nodes if n.name == "policy")
    assert ROBOT.node_parameters(policy, values)["trigger"] == "stream"
    assert [n.name for n in ROBOT.nodes if n.required] == ["touch_eval"]
    for node in ROBOT.active_nodes(values):
        assert node_ros_args(ROBOT, node, values, tmp_path)[:3] == ["--ros-args", "-r", f"__node:={node.name}"]


@pytest.mark.parametrize("relative, node", [("config/rm75.yaml", "realman_driver"), ("config/camera.yaml", "camera"),
                                            ("config/calibrate.yaml", "calibrate")])
def test_parameter_files_name_only_known_parameters(relative, node):
    graph_node = next(n for g in (ROBOT, ROBOT_CALIBRATE) for n in g.nodes if n.name == node)
    params = yaml.safe_load(package_file("gf_realman_driver", relative).read_text())
    assert list(params) == [params_file_key(node)]
    assert set(params[params_file_key(node)]["ros__parameters"]) <= set(config_fields(graph_node))


def test_the_vendor_address_is_a_config_value_only():
    """The factory IP is written in the config file; the code defaults to no address at all."""
    defaults = {f.name: f.default for f in dataclasses.fields(DriverConfig)}
    assert defaults["arm_ip"] == "" and defaults["dry_run"] is False
    root = Path(__file__).resolve().parents[1]
    for path in list((root / "gf_realman_driver").glob("*node*.py")) + list((root / "gf_realman_driver").glob("graphs.py")):
        assert not re.search(r"192\.168\.", path.read_text()), path
    for path in Path(__file__).parent.glob("*.py"):  # no test names a real address
        assert not re.search(r"\b192\.168\.\d+\.\d+", path.read_text()), path


def test_driver_parameters_become_the_safety_core_and_bad_ones_are_refused():
    from gf_realman_driver.driver_node import build_planner

    planner = build_planner(DriverConfig(workspace_max=[0.34, 0.15, 0.25], floor_z=0.05, frame_rotation=[0, -1, 0, 1, 0, 0, 0, 0, 1]))
    assert planner.limits.workspace_max == (0.34, 0.15, 0.25) and planner.limits.floor_z == 0.05
    assert planner.substeps == 5 and planner.mapping.matrix[0, 1] == -1
    with pytest.raises(ValueError, match="too long for movep_canfd"):
        build_planner(DriverConfig(stream_period_s=0.025, control_period_s=0.05))
    assert build_planner(DriverConfig(dry_run=True, stream_period_s=0.025, control_period_s=0.05)).substeps == 2
    with pytest.raises(ValueError, match="proper 3x3 rotation"):
        build_planner(DriverConfig(frame_rotation=[2, 0, 0, 0, 1, 0, 0, 0, 1]))
    with pytest.raises(ValueError, match="floor_z"):
        build_planner(DriverConfig(floor_z=0.9))


def test_the_configured_workspace_must_be_reachable_or_the_driver_does_not_start():
    from gf_realman_driver.driver_node import build_planner

    rm75 = yaml.safe_load(package_file("gf_realman_driver", "config/rm75.yaml").read_text())["/**/realman_driver"]["ros__parameters"]
    build_planner(DriverConfig())  # the defaults
    build_planner(DriverConfig(**{k: rm75[k] for k in ("workspace_min", "workspace_max", "tcp_offset")}))  # the shipped file
    with pytest.raises(ValueError, match=r"cannot reach .* corner\(s\) .*tcp_offset \(0.0, 0.0, 0.15\)"):
        build_planner(DriverConfig(tcp_offset=[0.0, 0.0, 0.15]))  # a 15 cm gripper and the same box: too high
    # The joint checks solve for the flange: a tool frame of unknown pose on it cannot be checked ...
    with pytest.raises(ValueError, match="tool_frame 'gf_tip' needs its tool_frame_pose"):
        build_planner(DriverConfig(tool_frame="gf_tip"))
    # ... a known one can: the fingertip frame 15 cm out with the box lowered accordingly.
    tip = build_planner(DriverConfig(tool_frame="gf_tip", tool_frame_pose=[0.0, 0.0, 0.15, 0.0, 0.0, 0.0],
                                     workspace_min=[0.20, -0.15, 0.0], workspace_max=[0.34, 0.15, 0.12], floor_z=0.02))
    assert tip.joint_checks.tool_frame_pose[2] == 0.15


def write_layout(path: Path, heights) -> Path:
    from gf_realman_driver.calibration import CalibrationRoutine

    routine = CalibrationRoutine()
    for y, z in zip((0.16, 0.0, -0.16), heights):
        routine.record((0.35, y, z))
    routine.save(path)
    return path


def test_the_floor_comes_from_the_card_calibration_unless_floor_z_is_set(tmp_path):
    from gf_realman_driver.calibration import CARD_FLOOR_MARGIN
    from gf_realman_driver.driver_node import build_planner
    from gf_realman_driver.safety import SafetyLimits, SafetyViolation

    heights = (0.081, 0.079, 0.080)
    layout = write_layout(tmp_path / "touch_layout.yaml", heights)
    planner = build_planner(DriverConfig(card_layout=str(layout)))
    assert planner.limits.floor_z == pytest.approx(max(heights) + CARD_FLOOR_MARGIN)
    # The fingertip may come down to just above the cards, not onto them.
    above = np.array([0.35, 0.0, planner.limits.floor_z + 0.025])
    down = np.zeros((1, 7))
    down[0, 2] = -(above[2] - planner.limits.floor_z) / 0.1  # exactly to the floor: allowed
    planner.plan(down, above, [np.pi, 0.0, 0.0], 0.0)
    down[0, 2] -= 0.02  # 2 mm further: onto the cards
    with pytest.raises(SafetyViolation) as info:
        planner.plan(down, above, [np.pi, 0.0, 0.0], 1.0)
    assert info.value.reason == "floor"
    # The operator's floor_z wins; without a calibration the default applies.
    assert build_planner(DriverConfig(card_layout=str(layout), floor_z=0.03)).limits.floor_z == 0.03
    assert build_planner(DriverConfig()).limits.floor_z == SafetyLimits().floor_z
    with pytest.raises(ValueError, match="no Touch layout"):
        build_planner(DriverConfig(card_layout=str(tmp_path / "missing.yaml")))


def test_a_real_run_gives_the_driver_the_calibration_and_a_dry_run_does_not():
    driver = next(n for n in ROBOT.nodes if n.name == "realman_driver")
    real = ROBOT.resolve_args({"layout": "calibration/bench.yaml"})
    assert ROBOT.node_parameters(driver, real)["card_layout"] == "calibration/bench.yaml"
    dry = ROBOT.resolve_args({"dry_run": "true"})  # the packaged dry-run layout is no calibration of a table
    assert ROBOT.node_parameters(driver, dry)["card_layout"] == ""
    calibrate_driver = next(n for n in ROBOT_CALIBRATE.nodes if n.name == "realman_driver")
    assert "card_layout" not in calibrate_driver.parameters  # re-calibrating must reach the cards
