"""The ManiSkill3 GrinningFace task, its scripted expert, and the node that exposes the simulator as ROS 2 topics."""

from gf_bringup.runtime import configure_assets

# ManiSkill reads MS_ASSET_DIR when it is first imported, so the package sets it up front.
configure_assets()
