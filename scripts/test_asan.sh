#!/usr/bin/env bash
# Run the non-guest test suite (-m "not hil") against an AddressSanitizer + UBSan build of
# the C ring fast path (vfio_virtio._virtq) and the C request path (vfio_virtio._fast), in
# every Python process the tests start
# (pytest itself and each server process, which inherit the environment).
#
# The sanitized extension is built from a private copy of the builder and its C sources into
# a temp dir (the in-tree extension and build/ are not touched). A sitecustomize.py on
# PYTHONPATH loads it as vfio_virtio._virtq before anything else can import the in-tree one;
# the script checks that the imported module is the sanitized one and prints its path.
# libasan is LD_PRELOADed (it must come first in a non-instrumented python); leak detection
# is off (CPython keeps memory until exit on purpose). Any ASan/UBSan report aborts the
# process: the test using it fails.
# Extra arguments go to pytest (e.g. scripts/test_asan.sh tests/unit -x).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=${PY:-$top/.venv/bin/python}
pytest=${PYTEST:-$top/.venv/bin/pytest}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vv-asan.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# 1. private copy of the builder (build_virtq.py imports vfio_virtio/_buildid.py from its top)
mkdir -p "$tmp/src/cffi_build/csrc" "$tmp/src/vfio_virtio" "$tmp/site"
cp cffi_build/build_virtq.py "$tmp/src/cffi_build/"
cp cffi_build/csrc/vv_dma.h cffi_build/csrc/virtq.h cffi_build/csrc/virtq.c "$tmp/src/cffi_build/csrc/"
cp vfio_virtio/_buildid.py "$tmp/src/vfio_virtio/"
VV_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g" \
    "$py" "$tmp/src/cffi_build/build_virtq.py" "$tmp/site/asan" >/dev/null
cp cffi_build/build_fast.py cffi_build/build_vfu.py "$tmp/src/cffi_build/"
# the same (patched) libvfio-user the in-tree extensions link: the private copy has no
# scripts/patches/ to compute that build's key from
VFU_PREFIX=$(cd cffi_build && "$py" -c 'from build_vfu import PREFIX; print(PREFIX)')
export VFU_PREFIX
mkdir -p "$tmp/src/scripts" && cp scripts/libvfio-user.sha256 "$tmp/src/scripts/"   # build_vfu
cp cffi_build/csrc/gpio_lines.h cffi_build/csrc/gpio_lines.c cffi_build/csrc/fastpath.h \
   cffi_build/csrc/fastpath.c "$tmp/src/cffi_build/csrc/"
VV_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g" \
    "$py" "$tmp/src/cffi_build/build_fast.py" "$tmp/site/asan" >/dev/null
so=$(ls "$tmp"/site/asan/_virtq*.so | head -1)
fso=$(ls "$tmp"/site/asan/_fast*.so | head -1)
[[ -f $so && -f $fso ]] || { echo "test_asan: no sanitized extension built" >&2; exit 1; }
for f in "$so" "$fso"; do
    readelf -d "$f" | grep -q 'NEEDED.*libasan' || { echo "test_asan: $f is not linked with libasan" >&2; exit 1; }
done

# 2. sitecustomize: make the sanitized build *the* vfio_virtio._virtq in every process
cat >"$tmp/site/sitecustomize.py" <<EOF
"""test_asan.sh: load the sanitized vfio_virtio._virtq before anything imports it."""
import importlib.util as _u
import sys as _s

_spec = _u.spec_from_file_location("vfio_virtio._virtq", "$so")
_mod = _u.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_s.modules["vfio_virtio._virtq"] = _mod
_spec = _u.spec_from_file_location("vfio_virtio._fast", "$fso")
_mod = _u.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_s.modules["vfio_virtio._fast"] = _mod
EOF

libasan=$(gcc -print-file-name=libasan.so)
[[ -e $libasan ]] || { echo "test_asan: libasan not found (gcc -print-file-name)" >&2; exit 1; }
# libstdc++ too: C++ extensions (matplotlib's ft2font) throw exceptions, and ASan's
# __cxa_throw interceptor needs the real one present when ASan starts.
libstdcxx=$(gcc -print-file-name=libstdc++.so)
export LD_PRELOAD="$libasan${libstdcxx:+ $libstdcxx}"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:print_summary=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH=$tmp/site${PYTHONPATH:+:$PYTHONPATH}

# 3. prove which module is imported (the stale-build check in vfio_virtio.dma runs too)
got=$("$py" -c 'import vfio_virtio.dma, vfio_virtio._virtq as m; print(m.__file__)')
if [[ $got != "$so" ]]; then
    echo "test_asan: imported $got, expected the sanitized $so" >&2
    exit 1
fi
echo "test_asan: sanitized vfio_virtio._virtq = $got"
gotf=$("$py" -c 'import vfio_virtio.gpio.lines_c, vfio_virtio._fast as m; print(m.__file__)')
if [[ $gotf != "$fso" ]]; then
    echo "test_asan: imported $gotf, expected the sanitized $fso" >&2
    exit 1
fi
echo "test_asan: sanitized vfio_virtio._fast = $gotf"
echo "test_asan: LD_PRELOAD=$LD_PRELOAD ASAN_OPTIONS=$ASAN_OPTIONS"

# 4. the suite (server processes inherit PYTHONPATH/LD_PRELOAD and load the same module)
set +e
"$pytest" -q -m "not hil" -p no:cacheprovider "$@"
rc=$?
set -e
echo "test_asan: pytest exit $rc"
exit $rc
