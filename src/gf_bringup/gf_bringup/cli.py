"""`gf`: the workspace's umbrella command (gf doctor, gf env, gf shm-clean)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "doctor": "check ROS 2, DDS, Vulkan, fonts, models and assets on this machine",
        "env": "print the environment variables GrinningFace processes run with",
        "shm-clean": "remove the Fast DDS shared-memory segments killed processes left in /dev/shm",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: gf COMMAND [ARGS]\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:8s} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "doctor":
        from gf_bringup.doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv[0] == "shm-clean":
        from gf_bringup.shm import main as shm_main

        return shm_main(argv[1:])
    from gf_bringup.runtime import configure_environment

    env = configure_environment()
    for key in ("GF_NETWORK", "RMW_IMPLEMENTATION", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                "FASTDDS_DEFAULT_PROFILES_FILE", "MS_ASSET_DIR", "VK_ICD_FILENAMES", "AMENT_PREFIX_PATH"):
        if key in env:
            print(f"export {key}={env[key]}")
    return 0
