#!/bin/sh
# vv-gpiosim-up (busybox sh, in the gpio-sim test guest; part of vfio-virtio, GPL-2.0-or-later)
# Loads the gpio-sim guest's modules (9p client, configfs, irq_sim, gpio-sim; order in
# /lib/modules/gpiosim/load.list), mounts configfs and the host root shared read-only over 9p
# (mount tag "hostroot") at /mnt/host, and prepares it as a chroot: /proc /sys /dev bound in,
# a tmpfs on /tmp. With an argument REPO (the project's checkout on the host): when the host
# root does not show it (a checkout under /tmp, which the tmpfs hides), the checkout shared
# read-only as mount tag "vvrepo" is mounted at /mnt/host/REPO. Prints "VV-GPIOSIM-UP" when done.
set -e
while read -r ko; do
    [ -n "$ko" ] && insmod "/lib/modules/gpiosim/$ko"
done </lib/modules/gpiosim/load.list
mount -t configfs configfs /sys/kernel/config
mkdir -p /mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /mnt/host
for d in proc sys dev; do mount --rbind "/$d" "/mnt/host/$d"; done
mount -t tmpfs tmpfs /mnt/host/tmp
if [ -n "$1" ] && [ ! -f "/mnt/host$1/guest/gpiosim/run.sh" ]; then
    mkdir -p "/mnt/host$1"
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 vvrepo "/mnt/host$1"
fi
echo VV-GPIOSIM-UP
