#!/usr/bin/env bash
# .venv with the project installed editable; pip builds the cffi extensions against the cached
# libvfio-user. Redone only when the build inputs change (their hash is the stamp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
source "$here/common.sh"
cd "$top"
py=${PYTHON:-python3}
inputs=$(cat pyproject.toml setup.py cffi_build/*.py cffi_build/csrc/* scripts/libvfio-user.sha256 scripts/patches/libvfio-user/*.patch 2>/dev/null | sha256sum | cut -c1-16)
stamp=.venv/.vv-stamp
if [[ -x .venv/bin/python && -f $stamp && "$(cat $stamp)" == "$inputs" ]]; then
    vv_log "venv: up to date"
    exit 0
fi
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel cffi >/dev/null
rm -f vfio_virtio/_vfu*.so vfio_virtio/_virtq*.so vfio_virtio/_fast*.so   # no stale in-place builds shadowing pip's
vv_log "installing the project (builds the cffi extensions)"
.venv/bin/pip install -q -e ".[test,bench,gpiod]" || vv_die "pip install -e . failed"
echo "$inputs" >"$stamp"
