#!/usr/bin/env bash
# Obtain libvfio-user from Debian's `qemu` source package (it carries the tree under
# subprojects/libvfio-user), verify the extracted tree against the content hash pinned in
# scripts/libvfio-user.sha256, apply our patches (scripts/patches/libvfio-user/, see
# docs/SECURITY.md) to a copy of the verified tree, and build it (meson, release).
#
# Output: $VV_CACHE/libvfio-user/<hash>[-p<patches hash>]/prefix/{include/vfio-user,lib}, plus a `current`
# symlink. Skipped in well under a second when the build for the pinned hash exists.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
source "$here/privapt.sh"

want=$(awk '{print $1}' "$here/libvfio-user.sha256")
base="$VV_CACHE/libvfio-user"
# Our own fixes (scripts/patches/libvfio-user/*.patch, applied in name order to the verified
# tree): the cache key is the tree hash plus the patches' hash, so a changed patch rebuilds.
# cffi_build/build_vfu.py computes the same key (vfu_cache_key) to find the prefix.
pdir="$here/patches/libvfio-user"
mapfile -t patches < <(ls "$pdir"/*.patch 2>/dev/null | LC_ALL=C sort)
key=$want
if [[ ${#patches[@]} -gt 0 ]]; then
    key="$want-p$(cat "${patches[@]}" | sha256sum | cut -c1-12)"
fi
pristine="$base/$want"              # the verified, unpatched tree (src/) lives here
dest="$base/$key"
if [[ -f "$dest/prefix/.complete" ]]; then
    ln -sfn "$dest" "$base/current"
    vv_log "libvfio-user $key: cached"
    exit 0
fi

tree_hash() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | awk '{print $1}'); }

# Download Debian's qemu source packages until one carries the pinned tree; leave it, verified,
# in $pristine/src.
fetch_pristine() {
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
            mkdir -p "$pristine"; rm -rf "$pristine/src"; mv "$tree" "$pristine/src"
            echo "$v" >"$pristine/debian-version"
            rm -rf "$d"
            break
        fi
        found+=("$v (tree hash $got)"); rm -rf "$d"
    done
    if [[ ! -d "$pristine/src" ]]; then
        printf '  %s\n' "${found[@]}" >&2
        vv_die "no qemu source package carries the libvfio-user tree pinned in scripts/libvfio-user.sha256 ($want).
Checked the versions above. If Debian moved to a newer libvfio-user, review its changes, then put
the new tree hash into scripts/libvfio-user.sha256 (the hash is: sha256 of 'sha256sum' lines of
every file, sorted by path, relative to the tree root)."
    fi
    rm -rf "$work"
}

if [[ -d "$pristine/src" && "$(tree_hash "$pristine/src")" == "$want" ]]; then
    vv_log "libvfio-user tree $want: cached (verified)"
else
    fetch_pristine
fi

if [[ "$key" != "$want" ]]; then
    # Patch a copy; the copy is hashed again first, so only the verified tree is patched.
    mkdir -p "$dest"; rm -rf "$dest/src"
    cp -a "$pristine/src" "$dest/src"
    cp "$pristine/debian-version" "$dest/debian-version" 2>/dev/null || true
    [[ "$(tree_hash "$dest/src")" == "$want" ]] || vv_die "copied libvfio-user tree does not match $want"
    for p in "${patches[@]}"; do
        vv_log "applying $(basename "$p")"
        patch -d "$dest/src" -p1 --forward --batch --quiet <"$p" >"$dest/patch.log" 2>&1 \
            || { cat "$dest/patch.log"; vv_die "patch $(basename "$p") does not apply to libvfio-user $want"; }
    done
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
vv_log "libvfio-user built: $dest/prefix"
