#!/usr/bin/env bash
# The HIL test guest: a Debian bookworm-security 6.12 kernel, an out-of-tree gpio-virtio.ko
# (no Debian amd64 kernel enables CONFIG_GPIO_VIRTIO), and a busybox initramfs with the gpiod
# 1.6 tools and guest/init (the control-port command runner).
#
# Nothing is installed into the system and /etc/apt is never touched: private apt configs
# (scripts/privapt.sh) download the .debs, apt checks each against the signed index, and they
# are unpacked with dpkg-deb into a work dir. From linux-source-6.12 only
# drivers/gpio/gpio-virtio.c is extracted (streamed), and it is built against the matching
# linux-headers/linux-kbuild unpacked privately, together with our own guest module
# guest/vv_mmio_bridge (the PCI -> virtio-mmio platform device bridge of --transport mmio,
# docs/MMIO.md), which needs the kernel's virtio_mmio.ko (VIRTIO_MMIO=m) beside it.
#
# Output ($VV_CACHE/guest/current -> <key>):
#   vmlinuz  initramfs.cpio.gz  config  gpio-virtio.ko  vv_mmio_bridge.ko  release  manifest.txt
#   initramfs-gpiosim.cpio.gz (the same plus 9p, configfs, irq_sim, gpio-sim and
#   /bin/vv-gpiosim-up, for tests/hil/test_gpiod_sim.py; the modules are not in load.list)
# <key> hashes the SHA256 (from apt's index) of every input .deb, the host libc6 version (its
# libs are copied for gpiod), and this script + guest/init. The kernel part (vmlinuz, modules)
# is cached separately under kernel/<kkey> (kernel packages + the module lists below + the
# bridge module's sources) so an init change only rebuilds the initramfs.
# Fast path: `current` complete, same scripts, private index younger than
# VV_GUEST_INDEX_MAX_AGE_DAYS (default 7): nothing is resolved. VV_GUEST_REFRESH=1 forces it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
source "$here/common.sh"
source "$here/privapt.sh"

base="$VV_CACHE/guest"
stamp="$base/.index-updated"
max_age_days=${VV_GUEST_INDEX_MAX_AGE_DAYS:-7}
# Kernel modules the initramfs carries besides gpio-virtio.ko (their deps are added by modinfo).
want_modules=(gpio-pci-idio-16 virtio_mmio)
# Modules of the gpio-sim guest only (tests/hil/test_gpiod_sim.py), NOT in load.list: the 9p
# client (the host root shared read-only) and configfs, from the image; irq_sim and gpio-sim
# are built out of tree below (Debian's 6.12 has GPIO_SIM and IRQ_SIM off).
gpiosim_modules=(9p 9pnet_virtio configfs)
# Module directories extracted from the image package (deps must live here too).
module_dirs=(kernel/drivers/gpio kernel/drivers/base/regmap kernel/drivers/virtio
             kernel/fs/netfs kernel/net/9p kernel/fs/9p kernel/fs/configfs)
# Our own guest module, built out of tree next to gpio-virtio.ko (and loaded after it).
bridge_src="$top/guest/vv_mmio_bridge"
bridge_files=("$bridge_src/vv_mmio_bridge.c" "$bridge_src/Kbuild")
# The gpio-sim guest's bring-up script (copied into its extra initramfs as /bin/vv-gpiosim-up).
gpiosim_up="$top/guest/gpiosim/up.sh"
# Bump when the irq_sim/gpio-sim build recipe below changes (it is part of the kernel key).
gpiosim_recipe=1
mkdir -p "$base"

scripts_hash=$(cat "$here/setup_guest.sh" "$top/guest/init" "${bridge_files[@]}" "$gpiosim_up" | sha256sum | cut -c1-16)
kernel_recipe=$( { printf '%s\n' "${want_modules[@]}" "${module_dirs[@]}" "${gpiosim_modules[@]}" "gpiosim-$gpiosim_recipe"; cat "${bridge_files[@]}"; } \
                 | sha256sum | cut -c1-16)
if [[ "${VV_GUEST_REFRESH:-0}" != 1 && -f "$base/current/.complete" && -f "$stamp" \
      && "$(cat "$base/current/scripts-hash" 2>/dev/null)" == "$scripts_hash" \
      && -z "$(find "$stamp" -mtime +"$max_age_days" 2>/dev/null)" ]]; then
    vv_log "guest $(cat "$base/current/release"): cached ($(readlink "$base/current"))"
    exit 0
fi

missing=()
for tool in make x86_64-linux-gnu-gcc-12 modinfo cpio gzip xz dpkg-deb ldd tar sha256sum; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ ${#missing[@]} -eq 0 ]] || vv_die "missing host tools: ${missing[*]} (bookworm packages: make gcc-12 cpio gzip xz-utils dpkg libc-bin tar kmod)"

sec="$VV_CACHE/apt-bookworm-security"
bw="$VV_CACHE/apt-bookworm"
PRIVAPT_MIRROR=http://deb.debian.org/debian-security privapt_init "$sec" bookworm-security deb
privapt_init "$bw" bookworm deb
vv_log "updating the private bookworm and bookworm-security indexes"
privapt_get "$sec" update >"$base/apt-update.log" 2>&1 || { cat "$base/apt-update.log"; vv_die "apt-get update (bookworm-security) failed"; }
privapt_get "$bw" update >>"$base/apt-update.log" 2>&1 || { cat "$base/apt-update.log"; vv_die "apt-get update (bookworm) failed"; }
touch "$stamp"

# "pkg=version" -> SHA256 of its .deb from the signed index (empty if absent).
deb_sha() { privapt_cache "$1" show "$2" 2>/dev/null | awk '/^SHA256:/{print $2; exit}'; }

# Newest linux-source-6.12 whose image, headers and kbuild exist with the same version.
kver="" ; abi=""
while read -r v; do
    a="${v%%-*}+deb12"
    ok=1
    for p in linux-image-$a-amd64 linux-headers-$a-amd64 linux-headers-$a-common linux-kbuild-$a linux-source-6.12; do
        [[ -n "$(deb_sha "$sec" "$p=$v")" ]] || { ok=0; break; }
    done
    if [[ $ok == 1 ]]; then kver=$v; abi=$a; break; fi
    vv_log "skipping kernel $v (incomplete set of packages)"
done < <(privapt_cache "$sec" madison linux-source-6.12 | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -urV)
[[ -n "$kver" ]] || vv_die "no linux-source-6.12 version in bookworm-security with matching image/headers/kbuild"
kpkgs=("linux-image-$abi-amd64=$kver" "linux-headers-$abi-amd64=$kver" "linux-headers-$abi-common=$kver"
       "linux-kbuild-$abi=$kver" "linux-source-6.12=$kver")
upkgs=()
for p in busybox-static gpiod libgpiod2; do
    v=$(privapt_cache "$bw" show --no-all-versions "$p" 2>/dev/null | awk '/^Version:/{print $2; exit}')
    [[ -n "$v" ]] || vv_die "package $p not found in bookworm"
    upkgs+=("$p=$v")
done
libc=$(dpkg-query -W -f='${Version}' libc6 2>/dev/null) || vv_die "host libc6 not found"

manifest=$( { for p in "${kpkgs[@]}"; do echo "$p $(deb_sha "$sec" "$p")"; done
              for p in "${upkgs[@]}"; do echo "$p $(deb_sha "$bw" "$p")"; done
              echo "kernel-recipe=$kernel_recipe"
              echo "host-libc6=$libc"; echo "scripts=$scripts_hash"; } )
kkey=$(printf '%s\n' "$manifest" | grep -E '^(linux-|kernel-recipe=)' | sha256sum | cut -c1-16)
key=$(printf '%s\n' "$manifest" | sha256sum | cut -c1-16)
dest="$base/$key"
if [[ -f "$dest/.complete" ]]; then
    ln -sfn "$key" "$base/current"
    vv_log "guest $(cat "$dest/release"): cached ($key)"
    exit 0
fi

work="$base/work"
rm -rf "$work"; mkdir -p "$work/debs"

# ---- kernel part: vmlinuz, config, modules, gpio-virtio.ko -------------------------------
kdir="$base/kernel/$kkey"
if [[ ! -f "$kdir/.complete" ]]; then
    t0=$SECONDS
    vv_log "downloading kernel $kver packages (~280 MB; apt verifies each against the signed index)"
    (cd "$work/debs" && privapt_get "$sec" download "${kpkgs[@]}") >"$work/kdownload.log" 2>&1 \
        || { tail -n 20 "$work/kdownload.log"; vv_die "kernel package download failed"; }
    rm -rf "$kdir"; mkdir -p "$kdir/modules"
    img=$(ls "$work/debs"/linux-image-"$abi"-amd64_*.deb)
    pats=('./boot/vmlinuz-*' './boot/config-*')
    for m in "${module_dirs[@]}"; do pats+=("./lib/modules/*/$m/*"); done
    dpkg-deb --fsys-tarfile "$img" | tar -x -C "$work" --wildcards "${pats[@]}"
    release=$(basename "$(ls "$work"/boot/vmlinuz-*)"); release=${release#vmlinuz-}
    cp "$work/boot/vmlinuz-$release" "$kdir/vmlinuz"
    cp "$work/boot/config-$release" "$kdir/config"
    echo "$release" >"$kdir/release"

    # Modules wanted + their dependencies, dependencies first, into $mod_out with its list.
    mtree="$work/lib/modules/$release"
    order=()
    find_ko() { find "$mtree" -name "$1.ko*" -o -name "${1//_/-}.ko*" -o -name "${1//-/_}.ko*" | head -n1; }
    add_mod() {
        local name=$1 ko dep
        for dep in "${order[@]}"; do [[ "$dep" == "$name" ]] && return 0; done
        ko=$(find_ko "$name")
        if [[ -z "$ko" ]]; then
            vv_die "module $name not found under ${module_dirs[*]} of $release (built in? then drop it)"
        fi
        for dep in $(modinfo -F depends "$ko" | tr ',' ' '); do add_mod "$dep"; done
        order+=("$name")
        cp "$ko" "$mod_out/"
        echo "$(basename "$ko")" >>"$mod_out/load.list"
    }
    mod_out="$kdir/modules"; : >"$mod_out/load.list"
    for m in "${want_modules[@]}"; do add_mod "$m"; done
    # The gpio-sim guest's modules: a separate list the default initramfs never loads.
    mkdir -p "$kdir/gpiosim"; mod_out="$kdir/gpiosim"; : >"$mod_out/load.list"; order=()
    for m in "${gpiosim_modules[@]}"; do add_mod "$m"; done

    vv_log "extracting drivers/gpio/gpio-virtio.c from linux-source-6.12 $kver (streamed)"
    src=$(ls "$work/debs"/linux-source-6.12_*.deb)
    mkdir -p "$work/src" "$work/mod"
    dpkg-deb --fsys-tarfile "$src" | tar -xO ./usr/src/linux-source-6.12.tar.xz | xz -dc -T0 \
        | tar -x -C "$work/src" --wildcards '*/drivers/gpio/gpio-virtio.c' \
              '*/drivers/gpio/gpio-sim.c' '*/kernel/irq/irq_sim.c'
    gv=$(find "$work/src" -name gpio-virtio.c | head -n1)
    [[ -n "$gv" ]] || vv_die "gpio-virtio.c not found in linux-source-6.12 $kver"
    cp "$gv" "$bridge_src/vv_mmio_bridge.c" "$work/mod/"
    echo 'obj-m := gpio-virtio.o vv_mmio_bridge.o' >"$work/mod/Kbuild"
    # irq_sim + gpio-sim for the gpio-sim guest. irq_sim.c is built-in code upstream; as a
    # module it needs two edits, each checked so an upstream change fails loudly here:
    # irq_to_desc() is not exported (generic_handle_irq() is, and runs the same handler),
    # and a module needs MODULE_LICENSE.
    mkdir -p "$work/simmod"
    for f in gpio-sim.c irq_sim.c; do
        src_f=$(find "$work/src" -name "$f" | head -n1)
        [[ -n "$src_f" ]] || vv_die "$f not found in linux-source-6.12 $kver"
        cp "$src_f" "$work/simmod/"
    done
    irqs="$work/simmod/irq_sim.c"
    [[ $(grep -c 'handle_simple_irq(irq_to_desc(irqnum))' "$irqs") == 1 ]] \
        || vv_die "irq_sim.c of $kver changed: 'handle_simple_irq(irq_to_desc(irqnum))' is not there exactly once; revisit the gpio-sim module build"
    ! grep -q 'MODULE_LICENSE' "$irqs" || vv_die "irq_sim.c of $kver already has MODULE_LICENSE; revisit the gpio-sim module build"
    sed -i 's/handle_simple_irq(irq_to_desc(irqnum))/generic_handle_irq(irqnum)/' "$irqs"
    printf '\n#include <linux/module.h>\nMODULE_LICENSE("GPL");\n' >>"$irqs"
    grep -q 'generic_handle_irq(irqnum)' "$irqs" || vv_die "patching irq_sim.c failed"
    echo 'obj-m := irq_sim.o gpio-sim.o' >"$work/simmod/Kbuild"

    hroot="$work/hroot"; mkdir -p "$hroot"
    for p in linux-headers-"$abi"-amd64 linux-headers-"$abi"-common linux-kbuild-"$abi"; do
        dpkg-deb -x "$(ls "$work/debs/${p}"_*.deb)" "$hroot"
    done
    hdir="$hroot/usr/src/linux-headers-$abi-amd64"
    # The headers Makefile includes the common tree by absolute path: point it at our copy.
    sed -i "s|^include /usr/src/|include $hroot/usr/src/|" "$hdir/Makefile"
    grep -q "^include $hroot/" "$hdir/Makefile" || vv_die "unexpected headers Makefile: $(cat "$hdir/Makefile")"
    vv_log "building gpio-virtio.ko and vv_mmio_bridge.ko against $release"
    make -C "$hdir" M="$work/mod" modules CONFIG_DEBUG_INFO_BTF_MODULES= >"$work/kbuild.log" 2>&1 \
        || { tail -n 30 "$work/kbuild.log"; vv_die "building gpio-virtio.ko/vv_mmio_bridge.ko failed (needs bookworm make gcc-12)"; }
    for ko in gpio-virtio.ko vv_mmio_bridge.ko; do
        [[ "$(modinfo -F vermagic "$work/mod/$ko" | awk '{print $1}')" == "$release" ]] \
            || vv_die "$ko vermagic does not match $release"
        cp "$work/mod/$ko" "$kdir/modules/"
        echo "$ko" >>"$kdir/modules/load.list"
    done
    vv_log "building irq_sim.ko and gpio-sim.ko against $release"
    make -C "$hdir" M="$work/simmod" modules CONFIG_DEBUG_INFO_BTF_MODULES= >"$work/simbuild.log" 2>&1 \
        || { tail -n 30 "$work/simbuild.log"; vv_die "building irq_sim.ko/gpio-sim.ko failed"; }
    for ko in irq_sim.ko gpio-sim.ko; do
        [[ "$(modinfo -F vermagic "$work/simmod/$ko" | awk '{print $1}')" == "$release" ]] \
            || vv_die "$ko vermagic does not match $release"
        cp "$work/simmod/$ko" "$kdir/gpiosim/"
        echo "$ko" >>"$kdir/gpiosim/load.list"
    done
    printf '%s\n' "${kpkgs[@]}" >"$kdir/packages.txt"
    touch "$kdir/.complete"
    rm -rf "$work/debs"/*.deb "$hroot" "$work/src" "$work/lib" "$work/boot"
    vv_log "kernel part done in $((SECONDS - t0)) s"
fi
release=$(cat "$kdir/release")

# ---- initramfs: busybox, gpiod tools + libs, modules, init ---------------------------------
vv_log "building the initramfs"
(cd "$work/debs" && privapt_get "$bw" download "${upkgs[@]}") >"$work/udownload.log" 2>&1 \
    || { tail -n 20 "$work/udownload.log"; vv_die "userland package download failed"; }
uroot="$work/uroot"; mkdir -p "$uroot"
for f in "$work/debs"/*.deb; do dpkg-deb -x "$f" "$uroot"; done
st="$work/initramfs"
mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,lib64,lib/x86_64-linux-gnu,lib/modules}
cp "$uroot/bin/busybox" "$st/bin/busybox"
for applet in $("$st/bin/busybox" --list-full); do
    [[ -e "$st/$applet" ]] || ln -s /bin/busybox "$st/$applet"
done
libdir="$uroot/usr/lib/x86_64-linux-gnu"
for tool in gpiodetect gpioinfo gpioget gpioset gpiomon gpiofind; do
    cp "$uroot/usr/bin/$tool" "$st/usr/bin/"
    # The libraries the loader would pick (libgpiod from the deb, libc from the host), and
    # the loader itself at its PT_INTERP path.
    while read -r lib; do
        case "$lib" in
            */ld-linux-x86-64.so.2) cp -L "$lib" "$st/lib64/ld-linux-x86-64.so.2" ;;
            /*) cp -L "$lib" "$st/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
        esac
    done < <(LD_LIBRARY_PATH="$libdir" ldd "$uroot/usr/bin/$tool" | awk '/=> \//{print $3; next} /^\t\//{print $1}')
done
[[ -f "$st/lib64/ld-linux-x86-64.so.2" && -f "$st/lib/x86_64-linux-gnu/libgpiod.so.2" ]] \
    || vv_die "ldd did not find the loader or libgpiod.so.2 for the gpiod tools"
cp "$kdir/modules/"*.ko* "$kdir/modules/load.list" "$st/lib/modules/"
cp "$top/guest/init" "$st/init"; chmod 755 "$st/init"
echo "$release" >"$st/etc/vv-release"

rm -rf "$dest"; mkdir -p "$dest"
(cd "$st" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$dest/initramfs.cpio.gz"
cp "$kdir/vmlinuz" "$kdir/config" "$kdir/release" "$kdir/modules/gpio-virtio.ko" \
   "$kdir/modules/vv_mmio_bridge.ko" "$dest/"
cp "$kdir/modules/load.list" "$dest/modules.txt"
# The gpio-sim guest: a second cpio appended to the same initramfs (the kernel unpacks
# concatenated archives in order), adding /lib/modules/gpiosim/ and /bin/vv-gpiosim-up.
# guest/init never looks there: only the gpio-sim test loads them.
gs="$work/gpiosim-root"; mkdir -p "$gs/lib/modules/gpiosim" "$gs/bin"
cp "$kdir/gpiosim/"* "$gs/lib/modules/gpiosim/"
cp "$gpiosim_up" "$gs/bin/vv-gpiosim-up"; chmod 755 "$gs/bin/vv-gpiosim-up"
(cd "$gs" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$dest/gpiosim.cpio.gz"
cat "$dest/initramfs.cpio.gz" "$dest/gpiosim.cpio.gz" >"$dest/initramfs-gpiosim.cpio.gz"
cp "$kdir/gpiosim/load.list" "$dest/gpiosim-modules.txt"
printf '%s\n' "$manifest" >"$dest/manifest.txt"
echo "$scripts_hash" >"$dest/scripts-hash"
touch "$dest/.complete"
ln -sfn "$key" "$base/current"
# Drop stale guest builds and kernels (keep current).
for old in "$base"/*/; do
    old=${old%/}; n=$(basename "$old")
    [[ -L "$old" || "$n" == "$key" || "$n" == kernel || "$n" == work || ! -f "$old/.complete" ]] && continue
    rm -rf "$old"
done
for old in "$base"/kernel/*/; do
    old=${old%/}; [[ "$(basename "$old")" == "$kkey" ]] || rm -rf "$old"
done
rm -rf "$work"
vv_log "guest ready: $dest ($release, initramfs $(du -k "$dest/initramfs.cpio.gz" | cut -f1) KiB)"
