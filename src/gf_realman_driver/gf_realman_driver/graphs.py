"""The real-robot graphs, described once (gf_bringup.graphs) for launch files and ``gf-launch``.

* ``robot``: RM75 driver + camera + policy (``trigger: stream``) + the Touch evaluation node.
  ``dry_run:=true`` swaps in the ``SimulatedArm`` and a test-pattern camera, uses the dry-run
  layout shipped in ``config/`` and, unless ``policy`` is given, the scripted ``touch_oracle``.
  On the real arm the driver also reads the layout (``card_layout``): its calibrated card plane
  sets the table floor unless ``floor_z`` is set (the dry-run layout is no calibration: not there).
* ``robot_calibrate``: driver (no trial gating) + ``gf-calibrate`` (keyboard jogging, records the
  Touch layout).

Arguments left empty take their value from the packaged parameter files (``config/rm75.yaml``,
``config/camera.yaml``), so ``gf-launch robot arm_ip:=10.0.0.5`` overrides one value without
copying the file. ``network:=robot`` selects normal DDS discovery on the robot network (camera,
driver and policy on different computers); the default keeps everything on this machine.
``network:=robot-secure keystore:=DIR`` adds SROS2: each node runs in its role's enclave
(gf_bringup.enclaves), where the DDS has DDS-Security.

Signed commands (gf_bringup.signing): ``key_file:=FILE`` makes the policy (or the calibration
jogger) sign every chunk and the driver accept that key; ``require_signed`` (``auto``: required on
the robot network) decides whether the driver refuses unsigned chunks. On the robot network
without a key file the driver refuses to start unless ``require_signed:=false`` is given.
"""

from __future__ import annotations

from functools import lru_cache

import yaml

from gf_bringup import names
from gf_bringup.constants import DEFAULT_SPLIT
from gf_bringup.graphs import Arg, Graph, NodeSpec, params_file_key, parse_arg

PACKAGE = "gf_realman_driver"
DRY_RUN_LAYOUT = "config/touch_layout_dry_run.yaml"
DEFAULT_LAYOUT = "calibration/touch_layout.yaml"


@lru_cache(maxsize=4)
def packaged_parameters(relative: str, node: str) -> dict:
    """The ros__parameters of ``node`` in one of this package's parameter files."""
    from gf_bringup.runtime import package_file

    data = yaml.safe_load(package_file(PACKAGE, relative).read_text(encoding="utf-8"))
    return dict(data[params_file_key(node)]["ros__parameters"])


def _arm_defaults(values: dict[str, str]) -> dict[str, str]:
    rm75 = packaged_parameters("config/rm75.yaml", "realman_driver")
    derived = {}
    if values["arm_ip"] == "":
        derived["arm_ip"] = str(rm75.get("arm_ip", ""))
    if values["arm_port"] == "":
        derived["arm_port"] = str(rm75.get("arm_port", 8080))
    return derived


def dry_run_layout() -> str:
    """The packaged Touch layout of dry runs (the SimulatedArm's three cards)."""
    from gf_bringup.runtime import package_file

    return str(package_file(PACKAGE, DRY_RUN_LAYOUT))


def _derive_robot(values: dict[str, str]) -> dict[str, str]:
    dry = parse_arg(values["dry_run"]) is True
    derived = _arm_defaults(values)
    camera = packaged_parameters("config/camera.yaml", "camera")
    if values["camera"] == "":
        derived["camera"] = "test_pattern" if dry else str(camera.get("source", "opencv"))
    if values["camera_device"] == "":
        derived["camera_device"] = str(camera.get("device", "0"))
    policy = values["policy"] or ("touch_oracle" if dry else "vla")
    derived["policy"] = policy
    layout = values["layout"] or (dry_run_layout() if dry else DEFAULT_LAYOUT)
    derived["layout"] = layout
    derived["card_layout"] = "" if dry else layout
    if policy == "touch_oracle":
        # The scripted policy needs the same layout as the evaluation unless told otherwise.
        kwargs = yaml.safe_load(values["backend_args"]) if values["backend_args"].strip() else {}
        if isinstance(kwargs, dict) and "layout" not in kwargs:
            derived["backend_args"] = yaml.safe_dump({"layout": layout, **kwargs}, default_flow_style=True, width=1000).strip()
    if values["output_dir"] == "":
        derived["output_dir"] = f"outputs/touch_eval/{policy}" + ("_dry_run" if dry else "")
    return derived


DRIVER = NodeSpec(
    package=PACKAGE, executable="gf-realman-driver", name="realman_driver",
    node_class="gf_realman_driver.driver_node:DriverNode", config_class="gf_realman_driver.driver_node:DriverConfig",
    params_file="config/rm75.yaml", enclave=names.ENCLAVE_DRIVER,
    parameters={"dry_run": "{dry_run}", "arm_ip": "{arm_ip}", "arm_port": "{arm_port}", "trial_gating": "true",
                "key_file": "{key_file}", "require_signed": "{require_signed}", "card_layout": "{card_layout}"},
)

SIGNING_ARGS = (
    Arg("keystore", "", "SROS2 keystore (gf-keys keystore DIR --domain N) for network:=robot-secure"),
    Arg("key_file", "", "signing key file (gf-keys create): the policy signs action chunks with it, the driver accepts it"),
    Arg("require_signed", "auto", "driver accepts only signed chunks: auto (on the robot network), true, or false "
                                  "(explicit opt-out on the robot network)"),
)

ROBOT = Graph(
    name="robot",
    description="Real-robot Touch evaluation: RM75 driver + camera + policy (stream) + Touch eval node (dry_run:=true: simulated arm)",
    args=(
        Arg("dry_run", "false", "true: SimulatedArm, test-pattern camera, dry-run layout, touch_oracle policy (no hardware, no network)"),
        Arg("policy", "", "policy backend ('' = vla, or touch_oracle in a dry run)"),
        Arg("backend_args", "", "YAML mapping of backend keyword arguments, e.g. '{checkpoint: /path/to/ckpt}'"),
        Arg("checkpoint", "", "checkpoint recorded with the results"),
        Arg("trials", "30", "number of Touch trials"),
        Arg("first_index", "0", "index of the first trial"),
        Arg("seed", "0", "base seed (Touch trial i shows the emojis and target of Val trial i)"),
        Arg("split", DEFAULT_SPLIT, "emoji split (shipped name or path to a split file)"),
        Arg("layout", "", f"Touch layout YAML from gf-calibrate ('' = {DEFAULT_LAYOUT}, or the packaged dry-run layout)"),
        Arg("output_dir", "", "results directory ('' = outputs/touch_eval/<policy>); an existing one is resumed"),
        Arg("arm_ip", "", "controller address ('' = the one in config/rm75.yaml)"),
        Arg("arm_port", "", "controller port ('' = the one in config/rm75.yaml)"),
        Arg("camera", "", "camera source: opencv, realsense, test_pattern ('' = config/camera.yaml's, test_pattern in a dry run)"),
        Arg("camera_device", "", "opencv camera: index, /dev/videoN, video file or URL ('' = config/camera.yaml's)"),
        Arg("stream_rate", "10.0", "maximum policy decisions per second: at most 20 / (steps executed per chunk), since the driver queues chunks"),
        Arg("max_trial_s", "60.0", "a trial without a gripper close ends after this many seconds"),
        Arg("auto_confirm", "false", "true: no operator (confirm set-ups, accept automatic scores): dry runs only"),
        Arg("console", "auto", "operator keys on the eval node's terminal: auto, stdin, disabled (gf-touch-operator works in any case)"),
        Arg("network", "loopback", "DDS network: loopback (nothing leaves the machine), robot (multi-computer set-ups) "
                                   "or robot-secure (robot with SROS2 enclaves: needs keystore:=DIR and a DDS with security)"),
        *SIGNING_ARGS,
    ),
    nodes=(
        DRIVER,
        NodeSpec(
            package=PACKAGE, executable="gf-camera", name="camera",
            node_class="gf_realman_driver.camera_node:CameraNode", config_class="gf_realman_driver.camera_node:CameraConfig",
            params_file="config/camera.yaml", enclave=names.ENCLAVE_CAMERA, parameters={"source": "{camera}", "device": "{camera_device}"},
        ),
        NodeSpec(
            package="gf_policy", executable="gf-policy", name="policy",
            node_class="gf_policy.policy_node:PolicyNode", config_class="gf_policy.policy_node:PolicyNodeConfig",
            params_file="config/policy.yaml", enclave=names.ENCLAVE_POLICY,
            parameters={"backend": "{policy}", "backend_args": "{backend_args}", "trigger": "stream", "stream_rate_hz": "{stream_rate}",
                        "key_file": "{key_file}"},
        ),
        NodeSpec(
            package="gf_eval", executable="gf-touch-eval", name="touch_eval",
            node_class="gf_eval.touch_node:TouchEvalNode", config_class="gf_eval.touch_node:TouchEvalConfig",
            required=True, enclave=names.ENCLAVE_EVALUATOR,
            parameters={
                "policy": "{policy}", "checkpoint": "{checkpoint}", "trials": "{trials}", "first_index": "{first_index}",
                "seed": "{seed}", "split": "{split}", "layout_file": "{layout}", "output_dir": "{output_dir}",
                "max_trial_s": "{max_trial_s}", "auto_confirm": "{auto_confirm}", "console": "{console}",
                "driver": names.DRIVER,
            },
        ),
    ),
    derive=_derive_robot,
)


ROBOT_CALIBRATE = Graph(
    name="robot_calibrate",
    description="Calibrate the Touch layout: RM75 driver + keyboard jogging (gf-calibrate) recording the three card centres",
    args=(
        Arg("dry_run", "false", "true: calibrate against the SimulatedArm (to try the routine)"),
        Arg("arm_ip", "", "controller address ('' = the one in config/rm75.yaml)"),
        Arg("arm_port", "", "controller port ('' = the one in config/rm75.yaml)"),
        Arg("output", DEFAULT_LAYOUT, "where to write the layout YAML"),
        Arg("card_size", "0.14", "printed card edge (m)"),
        Arg("touch_height", "0.04", "a close counts as a touch up to this far above the recorded card height (m)"),
        Arg("network", "loopback", "DDS network: loopback, robot or robot-secure (SROS2 enclaves, keystore:=DIR)"),
        *SIGNING_ARGS,
    ),
    nodes=(
        NodeSpec(
            package=DRIVER.package, executable=DRIVER.executable, name=DRIVER.name, node_class=DRIVER.node_class,
            config_class=DRIVER.config_class, params_file=DRIVER.params_file, enclave=DRIVER.enclave,
            parameters={"dry_run": "{dry_run}", "arm_ip": "{arm_ip}", "arm_port": "{arm_port}", "trial_gating": "false",
                        "key_file": "{key_file}", "require_signed": "{require_signed}"},
        ),
        NodeSpec(
            package=PACKAGE, executable="gf-calibrate", name="calibrate",
            node_class="gf_realman_driver.calibrate_node:CalibrateNode",
            config_class="gf_realman_driver.calibrate_node:CalibrateConfig",
            params_file="config/calibrate.yaml", required=True, enclave=names.ENCLAVE_CALIBRATE,
            parameters={"output": "{output}", "card_size": "{card_size}", "touch_height": "{touch_height}",
                        "key_file": "{key_file}"},
        ),
    ),
    derive=_arm_defaults,
)
