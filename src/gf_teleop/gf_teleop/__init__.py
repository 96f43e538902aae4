"""Teleoperation, episode recording to rosbag2 (MCAP), demonstration generation and bag replay."""
