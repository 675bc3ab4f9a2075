#!/usr/bin/env bash
# Install what the test suite needs (when missing), then run all of it.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have nbdinfo   || need_pkgs+=(libnbd-bin)
have nbdkit    || need_pkgs+=(nbdkit)
have fio       || need_pkgs+=(fio)
have qemu-io   || need_pkgs+=(qemu-utils)
have mkfs.ext4 || need_pkgs+=(e2fsprogs)
have ip        || need_pkgs+=(iproute2)
have fusermount3 || need_pkgs+=(fuse3)
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || need_pkgs+=(python3-libnbd)
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${need_pkgs[*]} (run as root, or install them: apt-get install -y ${need_pkgs[*]})" >&2
  else
    echo "installing: ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  fi
fi
# The FUSE tests need the fuse device.
[[ -e /dev/fuse ]] || { [[ $(id -u) -eq 0 ]] && modprobe fuse 2>/dev/null || true; }

export RUST_BACKTRACE=1
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
