#!/bin/sh
# run.sh TOP ARGS... (busybox sh, gpio-sim test guest; part of vfio-virtio)
# Runs the project's venv Python with ARGS, in the repo at TOP, chrooted into the host root
# that vv-gpiosim-up mounted at /mnt/host. A clean environment; no bytecode writes (the
# host root is read-only).
top=$1; shift
exec chroot /mnt/host /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 /bin/sh -c 'cd "$0" && exec .venv/bin/python "$@"' "$top" "$@"
