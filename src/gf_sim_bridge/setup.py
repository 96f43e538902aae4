from glob import glob

from setuptools import find_packages, setup

package_name = "gf_sim_bridge"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["resources/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="GrinningFace maintainers",
    maintainer_email="maintainers@grinningface.example.org",
    description="The ManiSkill3 GrinningFace task, its scripted expert, and the node that exposes the simulator as ROS 2 topics.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gf-sim-bridge = gf_sim_bridge.bridge_node:main",
            "gf-layouts = gf_sim_bridge.layouts:main",
        ],
        "gf.bench": [
            "sim = gf_sim_bridge.bench:main",
            "sim-scaling = gf_sim_bridge.scaling_bench:main",
        ],
        "gf.doctor": [
            "vulkan = gf_sim_bridge.checks:check_vulkan",
            "assets = gf_sim_bridge.checks:check_robot_assets",
        ],
    },
)
