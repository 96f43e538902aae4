#!/usr/bin/env bash
# One idempotent set-up of the GrinningFace workspace on a machine without a ROS 2 distribution
# (Debian 12 / Ubuntu, Python 3.10-3.12, no GPU). Every step keeps a stamp in .venv/.gf-setup
# and is skipped when its inputs have not changed, so a second run finishes in seconds.
#
#   scripts/setup.sh            # system packages, .venv, Python deps, gf_interfaces, packages, assets
#   GF_SKIP_APT=1 scripts/setup.sh   # never call apt (fail with a clear message instead)
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
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [[ -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# --- 1. system packages -------------------------------------------------------------------
SYSTEM_PKGS=(fonts-noto-color-emoji libvulkan1 mesa-vulkan-drivers cmake g++ make strace git)

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
  # colcon must not mistake the ROS wheels' share/*/package.xml inside the venv for workspace packages.
  touch "$VENV/COLCON_IGNORE"
}

install_python_deps() {
  local key; key=$(hash_of "$ROOT/requirements/requirements.txt" "$ROOT/requirements/constraints.txt")
  stamp_ok python-deps "$key" && return
  say "installing Python dependencies (about 2 minutes on a fresh venv)"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  # torch first, the CPU build: a bare 'torch' requirement elsewhere would pull a CUDA build.
  "${pip[@]}" install "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c 'import torch' 2>/dev/null || fail "torch==2.13.0 (CPU) did not install"
  "${pip[@]}" install -r "$ROOT/requirements/requirements.txt" -c "$ROOT/requirements/constraints.txt" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip check >/dev/null || fail "pip check failed: $("$VENV/bin/python" -m pip check)"
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
build_interfaces() {
  local src=$ROOT/src/gf_interfaces
  local key; key=$(hash_of "$src"/CMakeLists.txt "$src"/package.xml "$src"/msg/* "$src"/srv/* "$STAMPS/python-deps")
  stamp_ok gf_interfaces "$key" && return
  say "building gf_interfaces (rosidl, about 30 s)"
  rm -rf "$BUILD/gf_interfaces"; mkdir -p "$BUILD/gf_interfaces"; touch "$BUILD/COLCON_IGNORE"
  (
    cd "$BUILD/gf_interfaces"
    export PATH=$VENV/bin:$PATH
    cmake "$src" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
      -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >cmake.log 2>&1 || { tail -30 cmake.log; exit 1; }
    make -j"$(nproc)" >make.log 2>&1 || { tail -30 make.log; exit 1; }
    make install >install.log 2>&1 || { tail -30 install.log; exit 1; }
  ) || fail "building gf_interfaces failed (logs in $BUILD/gf_interfaces)"
  "$VENV/bin/python" -c 'from gf_interfaces.msg import ActionChunk' || fail "gf_interfaces built but does not import"
  stamp_set gf_interfaces "$key"
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
  stamp_set packages "$key"
}

# --- 5. ManiSkill robot assets ---------------------------------------------------------------
# The WidowX 250 S is downloaded by ManiSkill; offline, an existing asset directory is linked.
resolve_assets() {
  local link=$ROOT/.gf/maniskill
  local want=data/robots/widowx/wx250s.urdf
  if [[ -n ${MS_ASSET_DIR:-} ]]; then
    [[ -f $MS_ASSET_DIR/$want ]] && return
    fail "MS_ASSET_DIR=$MS_ASSET_DIR has no $want (the WidowX 250 S asset)"
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
install_python_deps
fix_wheel_cmake
build_interfaces
install_packages
resolve_assets
say "ready: $VENV (run '.venv/bin/gf doctor' to check ROS 2, Vulkan, fonts and models)"
