"""ros2 launch gf_realman_driver robot.launch.py [dry_run:=true] [policy:=vla] [trials:=30] ...

Real-robot Touch evaluation: RM75 driver + camera + policy (stream trigger) + Touch eval node.
The graph is described once in gf_realman_driver.graphs.ROBOT; `gf-launch robot` starts the same
graph without ros2. Under ros2 launch the eval node has no terminal: run `gf-touch-operator` in
one for the operator's keys.
"""

from gf_bringup.launch_support import launch_description
from gf_realman_driver.graphs import ROBOT


def generate_launch_description():
    return launch_description(ROBOT)
