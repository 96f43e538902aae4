from glob import glob

from setuptools import find_packages, setup

package_name = "gf_policy"

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
    description="The policy node and its backends (oracle, chance, replay, pi0-style VLA, remote inference).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gf-policy = gf_policy.policy_node:main",
            "gf-policy-server = gf_policy.server:main",
        ],
        "gf.bench": [
            "serve = gf_policy.bench:serve_main",
            "eval = gf_policy.eval_bench:main",
        ],
        "gf.doctor": [
            "models = gf_policy.checks:check_model_stack",
        ],
        "gf.policy_backends": [
            "oracle = gf_policy.backends.scripted:OracleBackend",
            "chance = gf_policy.backends.scripted:ChanceBackend",
            "vla = gf_policy.backends.vla:VLABackend",
            "remote = gf_policy.backends.remote:RemoteBackend",
            "openpi = gf_policy.backends.openpi:OpenPIBackend",
        ],
    },
)
