"""cffi builder (API mode, out-of-line) for the split-ring fast path: vfio_virtio._virtq.

C sources live in cffi_build/csrc/ (vv_dma.h, virtq.h, virtq.c). The extension bakes
BUILD_ID, the hash of those sources and of this file, which vfio_virtio/dma.py compares on
import with the sources on disk. Run as a script to build in place into vfio_virtio/;
setup.py builds it through `cffi_modules` (paths here are relative to the repo root when
the build runs from there, as pip does, else absolute).
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
CSRC = os.path.join(HERE, "csrc")
sys.path.insert(0, os.path.join(TOP, "vfio_virtio"))
from _buildid import build_id  # noqa: E402  (shared with the runtime stale check)

sys.path.pop(0)

# Order matters: vfio_virtio/dma.py hashes the same list (VIRTQ_SOURCES there).
SOURCE_NAMES = ["build_virtq.py", "csrc/vv_dma.h", "csrc/virtq.h", "csrc/virtq.c"]
SOURCES = [os.path.join(HERE, n) for n in SOURCE_NAMES]
BUILD_ID = build_id(SOURCES)


def _rel(path: str) -> str:
    """Path for setuptools: relative to the cwd when inside it (setuptools prefers relative
    sources); absolute when run as a script (cffi's compile() changes into its tmpdir)."""
    if __name__ == "__main__":
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


CDEF = r"""
#define VV_DMA_MAX_REGIONS 64
#define VV_PROT_READ 1
#define VV_PROT_WRITE 2
struct vv_dma_region { uint64_t iova; uint64_t len; uint64_t vaddr; uint32_t prot; };
struct vv_dma_table { uint32_t n; uint32_t generation;
                      struct vv_dma_region r[64]; };
void *vv_dma_translate(const struct vv_dma_table *t, uint64_t iova, uint64_t len,
                       uint32_t prot);

#define VRING_DESC_F_NEXT ...
#define VRING_DESC_F_WRITE ...
#define VRING_DESC_F_INDIRECT ...
#define VRING_AVAIL_F_NO_INTERRUPT ...
#define VRING_USED_F_NO_NOTIFY ...
#define VQ_MAX_SIZE ...
#define VQ_ERR_DESC_INDEX ...
#define VQ_ERR_CHAIN_LEN ...
#define VQ_ERR_NESTED_INDIRECT ...
#define VQ_ERR_INDIRECT_LEN ...
#define VQ_ERR_INDIRECT_NEXT ...
#define VQ_ERR_INDIRECT_FEATURE ...
#define VQ_ERR_INDIRECT_UNMAPPED ...
#define VQ_ERR_UNMAPPED ...
#define VQ_ERR_LEN_OVERFLOW ...
#define VQ_ERR_ORDER ...
#define VQ_ERR_ZERO_LEN ...
#define VQ_BROKEN_CONFIG ...
#define VQ_BROKEN_RING_UNMAPPED ...
#define VQ_BROKEN_AVAIL_IDX ...
#define VQ_BROKEN_HEAD ...

struct vv_iov { uint64_t addr; uint64_t iova; uint32_t len; uint32_t writable; };
struct vv_chain { uint32_t head; int32_t error; uint32_t iov_start; uint32_t iov_count;
                  uint32_t readable_len; uint32_t writable_len; };
struct vv_queue {
    const struct vv_dma_table *dma;
    uint64_t desc_addr; uint64_t driver_addr; uint64_t device_addr;
    uint32_t size;
    uint16_t last_avail_idx; uint16_t used_idx; uint16_t signalled_used;
    uint8_t signalled_used_valid; uint8_t event_idx; uint8_t indirect; uint8_t enabled;
    int32_t broken;
};
int vv_queue_check(const struct vv_queue *q);
int vv_pop_batch(struct vv_queue *q, struct vv_chain *chains, uint32_t max_chains,
                 struct vv_iov *iovs, uint32_t max_iovs);
int vv_chain_at(struct vv_queue *q, uint32_t head, struct vv_chain *chain,
                struct vv_iov *iovs, uint32_t max_iovs);
int vv_push_batch(struct vv_queue *q, const uint32_t *ids, const uint32_t *lens, uint32_t n);
int vv_needs_notify(struct vv_queue *q);

extern const char VV_VIRTQ_BUILD_ID[];
"""

SOURCE = r"""
#include "vv_dma.h"
#include "virtq.h"

const char VV_VIRTQ_BUILD_ID[] = "%(build_id)s";

/* the cdef above restates these layouts: fail the build if they drift */
_Static_assert(sizeof(struct vv_dma_table) == 8 + 64 * 32, "vv_dma_table layout");
_Static_assert(VV_DMA_MAX_REGIONS == 64, "VV_DMA_MAX_REGIONS");
""" % {"build_id": BUILD_ID}

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "vfio_virtio._virtq",
    SOURCE,
    sources=[_rel(os.path.join(CSRC, "virtq.c"))],
    include_dirs=[_rel(CSRC)],
    # VV_CFLAGS: extra flags for sanitizer builds (e.g. "-fsanitize=address,undefined")
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    + os.environ.get("VV_CFLAGS", "").split(),
    extra_link_args=os.environ.get("VV_CFLAGS", "").split(),
)

if __name__ == "__main__":
    # usage: build_virtq.py [DEST_DIR]   (default: the vfio_virtio package, in place)
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "vfio_virtio")
    tmp = os.path.join(TOP, "build", "cffi_virtq")
    os.makedirs(tmp, exist_ok=True)
    ffibuilder.compile(tmpdir=tmp, verbose=False)
    built = glob.glob(os.path.join(tmp, "vfio_virtio", "_virtq*.so"))
    if not built:
        raise SystemExit(f"build_virtq: no extension produced under {tmp}")
    for so in built:
        os.makedirs(dest, exist_ok=True)
        shutil.copy(so, dest)
        print(f"built {os.path.join(dest, os.path.basename(so))} ({BUILD_ID})")
