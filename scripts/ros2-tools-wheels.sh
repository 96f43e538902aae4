#!/usr/bin/env bash
# Build a directory of the ROS 2 launch / CLI tooling from its pinned public sources, for
# `GF_ROS2_TOOLS=DIR scripts/setup.sh` on a machine without a ROS 2 distribution. Needs git and
# access to github.com (the machine that runs set-up afterwards does not).
#
#   scripts/ros2-tools-wheels.sh OUT_DIR
#
# OUT_DIR gets one wheel per Python package (pip wheel --no-deps) and src/composition_interfaces
# (interface source: launch_ros imports it and it has no wheel; set-up builds it with rosidl).
set -euo pipefail
out=${1:?usage: scripts/ros2-tools-wheels.sh OUT_DIR}
PYTHON=${PYTHON:-python3}
# repository  commit/tag  package directories (ament_python packages built as wheels)
SOURCES=(
  "ros2/launch 02595baf launch launch_xml launch_yaml"
  "ros2/launch_ros f9ab937 launch_ros ros2launch"
  "ros2/ros2cli e20d2c66 ros2cli ros2pkg ros2run ros2node ros2topic ros2param"
  "osrf/osrf_pycommon 2.1.6 ."
  "ros2/rosidl_runtime_py 0.14.1 ."
)
INTERFACES="ros2/rcl_interfaces f6b3741 composition_interfaces"

mkdir -p "$out/src"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch REPO REV -> checkout directory
  local repo=$1 rev=$2 dir=$work/${1//\//_}
  git clone -q "https://github.com/$repo.git" "$dir"
  git -C "$dir" checkout -q "$rev"
  echo "$dir"
}

for line in "${SOURCES[@]}"; do
  read -r repo rev packages <<<"$line"
  dir=$(fetch "$repo" "$rev")
  for p in $packages; do
    "$PYTHON" -m pip wheel -q --no-deps -w "$out" "$dir/$p"
  done
done
read -r repo rev package <<<"$INTERFACES"
dir=$(fetch "$repo" "$rev")
rm -rf "${out:?}/src/$package"
cp -r "$dir/$package" "$out/src/$package"
echo "wheels and interface source in $out: run GF_ROS2_TOOLS=$out scripts/setup.sh"
