from glob import glob

from setuptools import find_packages, setup

package_name = "gf_realman_driver"

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
    description="Realman RM75 arm driver, camera node, robot launch, calibration and the real-robot Touch evaluation.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gf-realman-driver = gf_realman_driver.driver_node:main",
            "gf-camera = gf_realman_driver.camera_node:main",
            "gf-calibrate = gf_realman_driver.calibrate_node:main",
        ],
        "gf.graphs": [
            "robot = gf_realman_driver.graphs:ROBOT",
            "robot_calibrate = gf_realman_driver.graphs:ROBOT_CALIBRATE",
        ],
        "gf.bench": [
            "arm = gf_realman_driver.bench:main",
        ],
        "gf.policy_backends": [
            "touch_oracle = gf_realman_driver.touch_expert:TouchOracleBackend",
        ],
    },
)
