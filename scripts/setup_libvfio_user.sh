#!/usr/bin/env bash
# Obtain libvfio-user from Debian's `qemu` source package (it carries the tree under
# subprojects/libvfio-user), verify the extracted tree against the content hash pinned in
# scripts/libvfio-user.sha256, and build it (meson, release) into the cache.
#
# Output: $VV_CACHE/libvfio-user/<hash>/prefix/{include/vfio-user,lib}, plus a `current`
# symlink. Skipped in well under a second when the build for the pinned hash exists.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
source "$here/privapt.sh"

want=$(awk '{print $1}' "$here/libvfio-user.sha256")
base="$VV_CACHE/libvfio-user"
dest="$base/$want"
if [[ -f "$dest/prefix/.complete" ]]; then
    ln -sfn "$dest" "$base/current"
    vv_log "libvfio-user $want: cached"
    exit 0
fi

tree_hash() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | awk '{print $1}'); }

work="$base/work"
rm -rf "$work"; mkdir -p "$work"
pa="$VV_CACHE/apt-trixie-src"
privapt_init "$pa" "trixie sid" deb-src
vv_log "updating the private source index (trixie, sid)"
privapt_get "$pa" update >"$work/apt-update.log" 2>&1 || { cat "$work/apt-update.log"; vv_die "apt-get update (private config) failed"; }

# Every qemu source version the index offers, newest first; take the first whose tree matches.
mapfile -t versions < <(privapt_cache "$pa" showsrc qemu | awk '/^Version:/{print $2}' | sort -urV)
[[ ${#versions[@]} -gt 0 ]] || vv_die "no qemu source package found in trixie/sid indexes"
found=()
for v in "${versions[@]}"; do
    d="$work/dl-$v"; mkdir -p "$d"
    vv_log "trying qemu source $v"
    if ! (cd "$d" && privapt_get "$pa" source --download-only "qemu=$v" >"$d/log" 2>&1); then
        found+=("$v (download failed: $(tail -n1 "$d/log"))"); rm -rf "$d"; continue
    fi
    orig=$(ls "$d"/qemu_*.orig.tar.* 2>/dev/null | head -n1)
    [[ -n "$orig" ]] || { found+=("$v (no orig tarball)"); rm -rf "$d"; continue; }
    (cd "$d" && tar -xf "$orig" --wildcards '*/subprojects/libvfio-user/*') || { found+=("$v (no libvfio-user in tarball)"); rm -rf "$d"; continue; }
    tree=$(ls -d "$d"/*/subprojects/libvfio-user)
    got=$(tree_hash "$tree")
    if [[ "$got" == "$want" ]]; then
        mkdir -p "$dest"; rm -rf "$dest/src"; mv "$tree" "$dest/src"
        echo "$v" >"$dest/debian-version"
        rm -rf "$d"
        break
    fi
    found+=("$v (tree hash $got)"); rm -rf "$d"
done
if [[ ! -d "$dest/src" ]]; then
    printf '  %s\n' "${found[@]}" >&2
    vv_die "no qemu source package carries the libvfio-user tree pinned in scripts/libvfio-user.sha256 ($want).
Checked the versions above. If Debian moved to a newer libvfio-user, review its changes, then put
the new tree hash into scripts/libvfio-user.sha256 (the hash is: sha256 of 'sha256sum' lines of
every file, sorted by path, relative to the tree root)."
fi

vv_log "building libvfio-user (meson release) from qemu $(cat "$dest/debian-version")"
rm -rf "$dest/build" "$dest/prefix"
meson setup "$dest/build" "$dest/src" --buildtype=release --prefix="$dest/prefix" --libdir=lib \
    -Dtran-pipe=false >"$dest/meson.log" 2>&1 || { cat "$dest/meson.log"; vv_die "meson setup failed"; }
ninja -C "$dest/build" install >"$dest/ninja.log" 2>&1 || { tail -n 40 "$dest/ninja.log"; vv_die "libvfio-user build failed"; }
# The sample device is the C baseline of the benchmarks: keep it beside the library.
cp "$dest/build/samples/gpio-pci-idio-16" "$dest/prefix/" 2>/dev/null || true
touch "$dest/prefix/.complete"
ln -sfn "$dest" "$base/current"
rm -rf "$work"
vv_log "libvfio-user built: $dest/prefix"
