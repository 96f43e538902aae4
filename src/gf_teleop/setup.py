from glob import glob

from setuptools import find_packages, setup

package_name = "gf_teleop"

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
    description="Teleoperation, episode recording to rosbag2 (MCAP), demonstration generation and bag replay.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gf-recorder = gf_teleop.recorder_node:main",
            "gf-teleop = gf_teleop.teleop_node:main",
            "gf-demos = gf_teleop.demos:main",
            "gf-replay = gf_teleop.replay:main",
        ],
        "gf.policy_backends": [
            "replay = gf_teleop.replay_backend:ReplayBackend",
        ],
        "gf.graphs": [
            "demos = gf_teleop.graphs:DEMOS",
            "teleop_sim = gf_teleop.graphs:TELEOP_SIM",
        ],
        "gf.bench": [
            "record = gf_teleop.bench:main",
        ],
    },
)
