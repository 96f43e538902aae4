"""Realman RM75 arm driver, camera node, robot launch, calibration and the real-robot Touch evaluation."""
