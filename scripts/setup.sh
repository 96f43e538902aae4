#!/usr/bin/env bash
# One idempotent set-up of the GrinningFace workspace on a machine without a ROS 2 distribution
# (Debian 12 / Ubuntu, Python 3.10-3.12, no GPU). Every step keeps a stamp in .venv/.gf-setup
# and is skipped when its inputs have not changed, so a second run finishes in seconds.
#
#   scripts/setup.sh            # system packages, .venv, Python deps, gf_interfaces, packages, assets
#   GF_SKIP_APT=1 scripts/setup.sh   # never call apt (fail with a clear message instead)
#   GF_ROS2_TOOLS=DIR scripts/setup.sh   # also colcon, launch, launch_ros, ros2cli from a wheel directory
#
# On a ROS 2 install (Humble/Jazzy/Kilted) use colcon instead: see README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${GF_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
STAMPS=$VENV/.gf-setup
BUILD=$ROOT/.build
PACKAGES=(gf_bringup gf_eval gf_sim_bridge gf_policy gf_teleop gf_realman_driver)
MIN_MESA=24.3

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
fail() { printf '\033[1;31m[setup] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }
hash_of() { { cat "$@" 2>/dev/null || true; } | sha256sum | cut -c1-16; }  # missing files (e.g. no msg/) hash as empty
stamp_ok() { [[ -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# --- 1. system packages -------------------------------------------------------------------
SYSTEM_PKGS=(fonts-noto-color-emoji libvulkan1 mesa-vulkan-drivers cmake g++ make strace git openssl)

missing_system_pkgs() {
  local p out=()
  for p in "${SYSTEM_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  local mesa
  mesa=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  if [[ -n $mesa ]] && dpkg --compare-versions "$mesa" lt "$MIN_MESA"; then out+=("mesa-vulkan-drivers>=$MIN_MESA"); fi
  echo "${out[@]:-}"
}

install_system_pkgs() {
  command -v dpkg-query >/dev/null || { say "not a Debian/Ubuntu system: make sure a Vulkan driver (Mesa >= $MIN_MESA lavapipe or a GPU driver), the Noto Color Emoji font, cmake and a C++ compiler are installed"; return; }
  local missing; missing=$(missing_system_pkgs)
  [[ -z $missing ]] && return
  [[ -n ${GF_SKIP_APT:-} ]] && fail "missing system packages: $missing (GF_SKIP_APT is set, so apt was not called)"
  local SUDO=""
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || fail "missing system packages ($missing) and no sudo: install them as root"
    SUDO=sudo
  fi
  say "installing system packages: $missing"
  local mesa_suite=()
  # Debian 12's lavapipe (Mesa 22.3) lacks features SAPIEN needs; bookworm-backports has 25.x.
  if grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      say "enabling bookworm-backports for Mesa >= $MIN_MESA"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $SUDO tee /etc/apt/sources.list.d/gf-bookworm-backports.sources >/dev/null
    fi
    mesa_suite=(-t bookworm-backports)
  fi
  $SUDO apt-get update -qq || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${SYSTEM_PKGS[@]}" >/dev/null \
    || fail "apt-get install ${SYSTEM_PKGS[*]} failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${mesa_suite[@]}" mesa-vulkan-drivers >/dev/null \
    || fail "could not install mesa-vulkan-drivers >= $MIN_MESA (SAPIEN needs a Vulkan device; on Debian 12 it comes from bookworm-backports)"
  missing=$(missing_system_pkgs)
  [[ -z $missing ]] || fail "still missing after apt: $missing (SAPIEN needs Mesa >= $MIN_MESA lavapipe or a GPU Vulkan driver)"
}

# --- 2. virtualenv and Python dependencies -------------------------------------------------
create_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    "$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version' 2>/dev/null \
      || fail "$PYTHON must be Python 3.10, 3.11 or 3.12 (the ROS 2 Kilted wheels exist for those)"
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  # Debian 12's venv brings pip 23.0.1, which installs the workspace's editable setup.py packages
  # without their console scripts (no gf-launch, gf-demos, ...); 23.2 and later write them.
  "$VENV/bin/python" -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (23, 2))' \
    || "$VENV/bin/python" -m pip --disable-pip-version-check -q install "pip>=23.2" \
    || fail "could not upgrade pip in $VENV (pip >= 23.2 is needed for the workspace's commands)"
  # colcon must not mistake the ROS wheels' share/*/package.xml inside the venv for workspace packages.
  touch "$VENV/COLCON_IGNORE"
}

# pip check, minus one known and harmless line: launch_ros asks for `ament_index_python`, which the
# ROS 2 wheels install under the name ros-ament-index-python.
pip_check() {
  local out
  out=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -E '^launch[-_]ros .* requires ament[-_]index[-_]python' || true)
  [[ -z $out || $out == "No broken requirements found." ]] || fail "pip check failed: $out"
}

install_python_deps() {
  local reqs=("$ROOT/requirements/requirements.txt" "$ROOT/requirements/ros-wheels.txt")
  local key; key=$(hash_of "${reqs[@]}" "$ROOT/requirements/constraints.txt")
  stamp_ok python-deps "$key" && return
  say "installing Python dependencies (about 2 minutes on a fresh venv)"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  # torch first, the CPU build: a bare 'torch' requirement elsewhere would pull a CUDA build.
  "${pip[@]}" install "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c 'import torch' 2>/dev/null || fail "torch==2.13.0 (CPU) did not install"
  "${pip[@]}" install -r "${reqs[0]}" -r "${reqs[1]}" -c "$ROOT/requirements/constraints.txt" 2>&1 | grep -v "is ignored" || true
  pip_check
  if "$VENV/bin/python" -m pip show -q torchvision timm opencv-python-headless 2>/dev/null | grep -q Name; then
    fail "torchvision/timm/opencv-python-headless got installed: remove them (see requirements/requirements.txt)"
  fi
  stamp_set python-deps "$key"
}

# The ROS 2 wheels hard-code the include path of the machine they were built on.
fix_wheel_cmake() {
  local pyinc npinc
  pyinc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  local files; files=$(grep -rl '/opt/python/cp3' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
  [[ -z $files ]] && return
  say "rewriting the wheels' hard-coded Python include paths"
  # shellcheck disable=SC2086
  sed -i -E "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$pyinc#g; s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$npinc#g" $files
}

# --- 3. gf_interfaces with rosidl into the venv prefix ------------------------------------
# build_rosidl NAME SRC: an interface package built with rosidl and installed into the venv prefix,
# where the wheels' bootstrapper puts its libraries on the library path (nothing to source).
build_rosidl() {
  local name=$1 src=$2
  local key; key=$(hash_of "$src"/CMakeLists.txt "$src"/package.xml "$src"/msg/* "$src"/srv/* "$STAMPS/python-deps")
  stamp_ok "$name" "$key" && return
  say "building $name (rosidl, about 30 s)"
  rm -rf "${BUILD:?}/$name"; mkdir -p "$BUILD/$name"; touch "$BUILD/COLCON_IGNORE"
  (
    cd "$BUILD/$name"
    export PATH=$VENV/bin:$PATH
    cmake "$src" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
      -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >cmake.log 2>&1 || { tail -30 cmake.log; exit 1; }
    make -j"$(nproc)" >make.log 2>&1 || { tail -30 make.log; exit 1; }
    make install >install.log 2>&1 || { tail -30 install.log; exit 1; }
  ) || fail "building $name failed (logs in $BUILD/$name)"
  "$VENV/bin/python" -c "import $name.srv" 2>/dev/null || "$VENV/bin/python" -c "import $name.msg" \
    || fail "$name built but does not import"
  stamp_set "$name" "$key"
}

# --- 4. the workspace packages, editable ----------------------------------------------------
install_packages() {
  local files=() p
  for p in "${PACKAGES[@]}"; do files+=("$ROOT/src/$p/setup.py" "$ROOT/src/$p/package.xml"); done
  files+=("$ROOT/training/pyproject.toml")
  local key; key=$(hash_of "${files[@]}" "$STAMPS/python-deps")
  stamp_ok packages "$key" && return
  say "installing workspace packages (editable)"
  local args=()
  for p in "${PACKAGES[@]}"; do args+=(-e "$ROOT/src/$p"); done
  args+=(-e "$ROOT/training")
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-build-isolation "${args[@]}" 2>&1 \
    | grep -v "is ignored" || true
  "$VENV/bin/python" -c 'import gf_bringup, gf_eval, gf_sim_bridge, gf_policy, gf_teleop, gf_realman_driver, gf_training' \
    || fail "workspace packages did not install"
  [[ -x $VENV/bin/gf-launch && -x $VENV/bin/gf-realman-driver ]] \
    || fail "workspace packages installed without their commands (no $VENV/bin/gf-launch)"
  stamp_set packages "$key"
}

# --- 6. ROS 2 launch / CLI tooling and colcon (optional) -------------------------------------
# launch, launch_ros, ros2launch and ros2cli have no PyPI wheels. From a directory of their wheels
# (GF_ROS2_TOOLS=DIR, or ../shared/ros2-tools next to the checkout) they are installed with colcon,
# so that `colcon build` and `ros2 launch` work on this machine as on a ROS 2 install.
# The directory holds *.whl and src/composition_interfaces (launch_ros imports it; no wheel exists).
install_ros2_tools() {
  local dir=${GF_ROS2_TOOLS:-}
  if [[ -z $dir && -d $ROOT/../shared/ros2-tools ]]; then dir=$ROOT/../shared/ros2-tools; fi
  [[ -z $dir ]] && return
  [[ -d $dir ]] || fail "GF_ROS2_TOOLS=$dir is not a directory"
  dir=$(cd "$dir" && pwd)
  local wheels=("$dir"/*.whl)
  [[ -e ${wheels[0]} ]] || fail "$dir holds no wheels (*.whl) of launch / launch_ros / ros2cli"
  [[ -f $dir/src/composition_interfaces/package.xml ]] || fail "$dir has no src/composition_interfaces"
  local key; key=$( (ls "$dir"; cat "$ROOT/requirements/ros2-tools.txt" "$STAMPS/python-deps") | sha256sum | cut -c1-16)
  if ! stamp_ok ros2-tools "$key"; then
    say "installing ROS 2 launch/CLI tooling and colcon from $dir"
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install --no-deps "${wheels[@]}" 2>&1 | grep -v "is ignored" || true
    "${pip[@]}" install -r "$ROOT/requirements/ros2-tools.txt" -c "$ROOT/requirements/constraints.txt" 2>&1 | grep -v "is ignored" || true
    pip_check
    stamp_set ros2-tools "$key"
  fi
  build_rosidl composition_interfaces "$dir/src/composition_interfaces"
  "$VENV/bin/python" -c 'import launch_ros.actions' || fail "launch_ros does not import after installing the tooling"
}

# `source .venv/bin/activate` then stands in for sourcing /opt/ros/<distro>/setup.bash: colcon finds
# ament_cmake and ros2 finds the packages installed into the venv.
add_activate_hook() {
  local activate=$VENV/bin/activate marker="# >>> gf: ROS 2 prefixes >>>"
  grep -qF "$marker" "$activate" && return
  cat >>"$activate" <<'HOOK'
# >>> gf: ROS 2 prefixes >>>
case ":${AMENT_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *) export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VIRTUAL_ENV" ;; esac
case ":${CMAKE_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *) export CMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH:}$VIRTUAL_ENV" ;; esac
# <<< gf: ROS 2 prefixes <<<
HOOK
}

# --- 5. ManiSkill robot assets ---------------------------------------------------------------
# The WidowX 250 S is downloaded by ManiSkill; offline, an existing asset directory is linked.
resolve_assets() {
  local link=$ROOT/.gf/maniskill
  local want=data/robots/widowx/wx250s.urdf
  if [[ -n ${MS_ASSET_DIR:-} ]]; then
    [[ -f $MS_ASSET_DIR/$want ]] || fail "MS_ASSET_DIR=$MS_ASSET_DIR has no $want (the WidowX 250 S asset)"
    # Remembered: a new shell without MS_ASSET_DIR still finds it (gf_bringup.runtime.configure_assets).
    mkdir -p "$ROOT/.gf"; ln -sfn "$(cd "$MS_ASSET_DIR" && pwd)" "$link"
    return
  fi
  [[ -f $link/$want ]] && return
  [[ -f $HOME/.maniskill/$want ]] && return
  local candidate
  for candidate in ${GF_ASSET_MIRROR:-} "$ROOT/../shared/maniskill"; do
    if [[ -f $candidate/$want ]]; then
      mkdir -p "$ROOT/.gf"; ln -sfn "$(cd "$candidate" && pwd)" "$link"
      say "using the offline ManiSkill asset directory $candidate"
      return
    fi
  done
  say "downloading the WidowX 250 S asset with ManiSkill"
  if timeout 120 "$VENV/bin/python" -m mani_skill.utils.download_asset widowx250s -y >/dev/null 2>&1 \
      && [[ -f $HOME/.maniskill/$want ]]; then return; fi
  say "WARNING: the WidowX 250 S asset is not available (no network?). Provide it by one of:"
  say "  export MS_ASSET_DIR=/path/to/dir   # a dir holding $want"
  say "  GF_ASSET_MIRROR=/path/to/dir scripts/setup.sh"
  say "  the Panda robot ships with ManiSkill and works offline: robot:=panda"
}

install_system_pkgs
create_venv
add_activate_hook
install_python_deps
fix_wheel_cmake
build_rosidl gf_interfaces "$ROOT/src/gf_interfaces"
install_packages
resolve_assets
install_ros2_tools
say "ready: $VENV (run '.venv/bin/gf doctor' to check ROS 2, Vulkan, fonts and models)"
