"""ros2 launch gf_realman_driver robot_calibrate.launch.py [dry_run:=true] [output:=calibration/touch_layout.yaml]

RM75 driver + gf-calibrate: jog the end effector onto each card and record the Touch layout.
Described once in gf_realman_driver.graphs.ROBOT_CALIBRATE (`gf-launch robot_calibrate`). The
keyboard needs a terminal: with ros2 launch, start the driver here and `gf-calibrate` in a terminal.
"""

from gf_bringup.launch_support import launch_description
from gf_realman_driver.graphs import ROBOT_CALIBRATE


def generate_launch_description():
    return launch_description(ROBOT_CALIBRATE)
