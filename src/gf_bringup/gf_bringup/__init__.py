"""Runtime environment (loopback DDS profile, ROS 2 settings), the graph descriptions shared by launch files and the gf-launch starter, gf doctor and gf-bench."""
