#!/usr/bin/env bash
# An emulated aarch64 device for the ARM kernel tests: a real aarch64 TVM runtime under qemu-user, served over
# TVM's RPC. Idempotent: every step is skipped when its result is already there.
#
#   scripts/arm_device.sh install   # qemu-user + binfmt, the aarch64 cross compiler, an arm64 sysroot with
#                                   # Python 3.11, and the aarch64 wheels of apache-tvm (nothing touches the host
#                                   # Python)
#   scripts/arm_device.sh serve     # serve it in the foreground on 127.0.0.1:$TVM_LUT_ARM_PORT (default 9190)
#   scripts/arm_device.sh serve --pool 2   # a TVM RPC tracker with 2 emulated devices under one key (it prints
#                                          # the address for --rpc-tracker / --rpc-key)
#
# The ARM tests start and stop the server themselves (`schedules.rpc.emulated_device`) when it is installed.
# Files live in $TVM_LUT_ARM_HOME (default ~/.cache/tvm-lut/arm64).
set -euo pipefail

HOME_DIR="${TVM_LUT_ARM_HOME:-$HOME/.cache/tvm-lut/arm64}"
SYSROOT="$HOME_DIR/sysroot"
SITE="$HOME_DIR/site-packages"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The arm64 packages a Python 3.11 interpreter needs (Debian 12 names).
ARM64_DEBS="libc6 libgcc-s1 libstdc++6 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib zlib1g
libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libncursesw6 libtinfo6 libreadline8 libsqlite3-0 libcrypt1
libnsl2 libtirpc3 libdb5.3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1"
# The aarch64 runtime: the same TVM release as the host (its ffi wheel for aarch64 is the one PyPI has).
WHEELS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.15.post2 numpy ml_dtypes typing_extensions psutil cloudpickle"

install_host_tools() {
  if ! command -v qemu-aarch64-static >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
     || ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq qemu-user-static binfmt-support gcc-aarch64-linux-gnu unzip
  fi
  # The RPC server forks children with the same interpreter: arm64 ELF files must run directly (binfmt).
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] || $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    $SUDO update-binfmts --enable qemu-aarch64
  fi
}

install_sysroot() {
  [ -x "$SYSROOT/usr/bin/python3.11" ] && return
  mkdir -p "$HOME_DIR/debs" "$SYSROOT"
  (cd "$HOME_DIR/debs" && for deb in $ARM64_DEBS; do apt-get download -qq "$deb:arm64"; done)
  for deb in "$HOME_DIR"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
}

install_wheels() {
  [ -d "$SITE/tvm" ] && [ -d "$SITE/tvm_ffi" ] && return
  mkdir -p "$HOME_DIR/wheels" "$SITE"
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 -d "$HOME_DIR/wheels" \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 $WHEELS
  for wheel in "$HOME_DIR"/wheels/*.whl; do unzip -q -o "$wheel" -d "$SITE"; done
}

case "${1:-install}" in
  install)
    install_host_tools
    install_sysroot
    install_wheels
    echo "emulated aarch64 device installed in $HOME_DIR"
    ;;
  serve)
    shift
    exec python3 -m schedules.rpc "$@"
    ;;
  *)
    echo "usage: $0 install|serve [--pool N [--key KEY]]" >&2
    exit 2
    ;;
esac
