#!/usr/bin/env bash
# Bookworm system packages the project needs, installed with plain apt-get (never new sources).
# Skipped in well under a second when every package is already installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
pkgs=(meson ninja-build pkg-config gcc linux-libc-dev libjson-c-dev libcmocka-dev dpkg-dev xz-utils zstd
      cpio kmod busybox-static python3-venv clang-14 libclang-rt-14-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    vv_log "system packages: all present"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || vv_die "need root to apt-get install: ${missing[*]}"
vv_log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
