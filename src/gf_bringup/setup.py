from glob import glob

from setuptools import find_packages, setup

package_name = "gf_bringup"

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
    description="Runtime environment (loopback DDS profile, ROS 2 settings), the graph descriptions shared by launch files and the gf-launch starter, gf doctor and gf-bench.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gf = gf_bringup.cli:main",
            "gf-launch = gf_bringup.launcher:main",
            "gf-bench = gf_bringup.bench:main",
            "gf-keys = gf_bringup.signing:main",
        ],
        "gf.bench": [
            "signing = gf_bringup.signing_bench:main",
        ],
        "gf.doctor": [
            "ros2 = gf_bringup.doctor:check_ros_round_trip",
            "dds_security = gf_bringup.doctor:check_dds_security",
            "dds_shared_memory = gf_bringup.shm:check_dds_shared_memory",
        ],
    },
)
