from glob import glob

from setuptools import find_packages, setup

package_name = "gf_eval"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["data/*.json", "data/splits/*.json"]},
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
    description="The GrinningFace benchmark: emoji catalogue, splits, protocols, trial specs, scoring, reports, and the evaluation node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gf-eval = gf_eval.eval_node:main",
            "gf-report = gf_eval.report:main",
            "gf-emoji = gf_eval.emoji_cli:main",
            "gf-cards = gf_eval.cards:main",
            "gf-touch-eval = gf_eval.touch_node:main",
            "gf-touch-operator = gf_eval.touch_node:operator_main",
            "gf-eval-shards = gf_eval.shards:main",
        ],
        "gf.bench": [
            "shards = gf_eval.shards:bench_main",
        ],
        "gf.doctor": [
            "fonts = gf_eval.checks:check_emoji_font",
        ],
    },
)
