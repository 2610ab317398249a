# Shared helpers for setup scripts (sourced).
VV_CACHE=${VV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-virtio}
mkdir -p "$VV_CACHE"
vv_log() { printf '[setup] %s\n' "$*" >&2; }
vv_die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
