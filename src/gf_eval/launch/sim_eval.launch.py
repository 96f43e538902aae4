"""ros2 launch gf_eval sim_eval.launch.py [policy:=oracle] [trials:=100] ...

Simulated GrinningFace evaluation: sim bridge + policy + eval node. The graph is described once
in gf_bringup.graphs.SIM_EVAL; `gf-launch sim_eval` starts the same graph without ros2.
"""

from gf_bringup.graphs import SIM_EVAL
from gf_bringup.launch_support import launch_description


def generate_launch_description():
    return launch_description(SIM_EVAL)
