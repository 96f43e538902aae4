"""gf doctor checks owned by gf_sim_bridge: Vulkan rendering, ManiSkill, robot assets."""

from __future__ import annotations

import os
from pathlib import Path

from gf_bringup.doctor import DoctorError, run_python

MESA_HINT = "SAPIEN needs a Vulkan device: a GPU driver or Mesa >= 24.3 lavapipe (Debian 12: mesa-vulkan-drivers from bookworm-backports; scripts/setup.sh installs it)"

_RENDER = """
import numpy as np, gymnasium as gym
import gf_sim_bridge.env
env = gym.make("GrinningFace-v1", robot="{robot}", image_size=64)
env.reset(seed=0)
img = env.unwrapped.policy_image()
print(img.shape[0], img.shape[1], float(img.std()))
"""


def check_vulkan() -> str:
    """VK_ICD_FILENAMES sane and SAPIEN renders a GrinningFace scene (non-blank image)."""
    for var in ("VK_ICD_FILENAMES", "VK_DRIVER_FILES"):
        for path in filter(None, os.environ.get(var, "").split(os.pathsep)):
            if not Path(path).is_file():
                raise DoctorError(f"{var} points to {path}, which does not exist; unset it or point it at an ICD json. {MESA_HINT}")
    from gf_bringup.runtime import WIDOWX_URDF

    asset = Path(os.environ.get("MS_ASSET_DIR", str(Path.home() / ".maniskill"))) / WIDOWX_URDF
    robot = "widowx" if asset.exists() else "panda"
    try:
        out = run_python(_RENDER.format(robot=robot), timeout=180)
    except DoctorError as exc:
        raise DoctorError(f"rendering a ManiSkill scene failed ({exc}). {MESA_HINT}") from exc
    h, w, std = out.split()[-3:]
    if float(std) < 5:
        raise DoctorError(f"the rendered image is blank (std {float(std):.1f}). {MESA_HINT}")
    import sapien

    return f"SAPIEN {sapien.__version__} rendered a {h}x{w} GrinningFace frame ({robot}, pixel std {float(std):.0f})"


def check_robot_assets() -> str:
    """The WidowX 250 S asset is where ManiSkill looks for it (MS_ASSET_DIR)."""
    from mani_skill import ASSET_DIR

    from gf_bringup.runtime import WIDOWX_URDF, asset_hint

    path = ASSET_DIR.parent / WIDOWX_URDF
    if not path.exists():
        raise DoctorError(asset_hint())
    return f"WidowX 250 S at {path}"
