"""ros2 launch gf_teleop teleop_sim.launch.py [trials:=10] [demo_dir:=demos/teleop] [operator:=NAME]

Teleoperated demonstrations in simulation: sim bridge + eval node + recorder; drive the arm with
`gf-teleop` in another terminal. Described once in gf_teleop.graphs.TELEOP_SIM.
"""

from gf_bringup.launch_support import launch_description
from gf_teleop.graphs import TELEOP_SIM


def generate_launch_description():
    return launch_description(TELEOP_SIM)
