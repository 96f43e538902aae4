"""ros2 launch gf_teleop demos.launch.py [policy:=oracle] [trials:=10] [demo_dir:=demos] ...

Demonstrations in simulation: sim bridge + policy + eval node + episode recorder. The graph is
described once in gf_teleop.graphs.DEMOS; `gf-launch demos` starts the same graph without ros2.
"""

from gf_bringup.launch_support import launch_description
from gf_teleop.graphs import DEMOS


def generate_launch_description():
    return launch_description(DEMOS)
