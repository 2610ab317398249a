"""cffi builder (API mode, out-of-line) for the libvfio-user binding: vfio_virtio._vfu.

Compiled against libvfio-user's header from the cached build (scripts/setup_libvfio_user.sh);
linked with an rpath so no LD_LIBRARY_PATH is needed at run time. Small C trampolines turn
per-region callbacks into one Python entry point with the region index, and turn Python's
negative-errno returns into the -1/errno convention libvfio-user expects.
"""
from __future__ import annotations

import hashlib
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "vfio_virtio"))
from _buildid import build_id  # noqa: E402  (shared with the runtime stale check)

sys.path.pop(0)


PATCH_DIR = os.path.join(TOP, "scripts", "patches", "libvfio-user")


def libvfio_user_patches() -> list[str]:
    """Our patches to libvfio-user, in the order scripts/setup_libvfio_user.sh applies them."""
    if not os.path.isdir(PATCH_DIR):
        return []
    return [os.path.join(PATCH_DIR, n) for n in sorted(os.listdir(PATCH_DIR))
            if n.endswith(".patch")]


def vfu_cache_key() -> str:
    """The cache directory name setup_libvfio_user.sh builds: tree hash[-p<patches hash>]."""
    with open(os.path.join(TOP, "scripts", "libvfio-user.sha256")) as f:
        key = f.read().split()[0]
    patches = libvfio_user_patches()
    if patches:
        h = hashlib.sha256()
        for p in patches:
            with open(p, "rb") as f:
                h.update(f.read())
        key += "-p" + h.hexdigest()[:12]
    return key


def libvfio_user_prefix() -> str:
    """Where the cached libvfio-user build for this tree + patches lives (resolved, so the
    rpath names it; not the shared ``current`` link, which another checkout may move)."""
    env = os.environ.get("VFU_PREFIX")
    if env:
        return os.path.realpath(env)
    cache = os.environ.get("VV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vfio-virtio")
    prefix = os.path.realpath(os.path.join(cache, "libvfio-user", vfu_cache_key(), "prefix"))
    if not os.path.exists(os.path.join(prefix, ".complete")):
        raise SystemExit(f"libvfio-user not built under {prefix}: run `make setup` first")
    return prefix


# The same list vfio_virtio/vfu/context.py checks on import.
SOURCES = ([os.path.join(HERE, "build_vfu.py"), os.path.join(TOP, "scripts", "libvfio-user.sha256")]
           + libvfio_user_patches())
PREFIX = libvfio_user_prefix()
BUILD_ID = build_id(SOURCES)

CDEF = r"""
typedef struct vfu_ctx vfu_ctx_t;
typedef long... loff_t;
struct iovec { void *iov_base; size_t iov_len; };

typedef enum { VFU_TRANS_SOCK, ... } vfu_trans_t;
typedef enum { VFU_DEV_TYPE_PCI, ... } vfu_dev_type_t;
typedef enum { VFU_RESET_DEVICE, VFU_RESET_LOST_CONN, VFU_RESET_PCI_FLR, ... } vfu_reset_type_t;
typedef enum { VFU_PCI_TYPE_CONVENTIONAL, VFU_PCI_TYPE_PCI_X_1, VFU_PCI_TYPE_PCI_X_2,
               VFU_PCI_TYPE_EXPRESS, ... } vfu_pci_type_t;
enum vfu_dev_irq_type { VFU_DEV_INTX_IRQ, VFU_DEV_MSI_IRQ, VFU_DEV_MSIX_IRQ, VFU_DEV_ERR_IRQ,
                        VFU_DEV_REQ_IRQ, ... };

#define LIBVFIO_USER_FLAG_ATTACH_NB ...
#define VFU_REGION_FLAG_READ ...
#define VFU_REGION_FLAG_WRITE ...
#define VFU_REGION_FLAG_RW ...
#define VFU_REGION_FLAG_MEM ...
#define VFU_REGION_FLAG_ALWAYS_CB ...
#define VFU_CAP_FLAG_EXTENDED ...
#define VFU_CAP_FLAG_CALLBACK ...
#define VFU_CAP_FLAG_READONLY ...
#define VFU_PCI_DEV_BAR0_REGION_IDX ...
#define VFU_PCI_DEV_CFG_REGION_IDX ...
#define VFU_PCI_DEV_NUM_REGIONS ...
#define PCI_HEADER_TYPE_NORMAL ...
#define LOG_ERR ...
#define LOG_WARNING ...
#define LOG_INFO ...
#define LOG_DEBUG ...

typedef struct vfu_dma_info {
    struct iovec iova;
    void *vaddr;
    struct iovec mapping;
    size_t page_size;
    uint32_t prot;
} vfu_dma_info_t;

vfu_ctx_t *vfu_create_ctx(vfu_trans_t trans, const char *path, int flags, void *pvt,
                          vfu_dev_type_t dev_type);
int vfu_realize_ctx(vfu_ctx_t *vfu_ctx);
int vfu_attach_ctx(vfu_ctx_t *vfu_ctx);
int vfu_get_poll_fd(vfu_ctx_t *vfu_ctx);
int vfu_run_ctx(vfu_ctx_t *vfu_ctx);
void vfu_destroy_ctx(vfu_ctx_t *vfu_ctx);
void *vfu_get_private(vfu_ctx_t *vfu_ctx);
int vfu_pci_init(vfu_ctx_t *vfu_ctx, vfu_pci_type_t pci_type, int hdr_type, int revision);
void vfu_pci_set_id(vfu_ctx_t *vfu_ctx, uint16_t vid, uint16_t did, uint16_t ssvid,
                    uint16_t ssid);
void vfu_pci_set_class(vfu_ctx_t *vfu_ctx, uint8_t base, uint8_t sub, uint8_t pi);
ssize_t vfu_pci_add_capability(vfu_ctx_t *vfu_ctx, size_t pos, int flags, void *data);
size_t vfu_pci_find_capability(vfu_ctx_t *vfu_ctx, bool extended, int cap_id);
int vfu_setup_device_nr_irqs(vfu_ctx_t *vfu_ctx, enum vfu_dev_irq_type type, uint32_t count);
int vfu_irq_trigger(vfu_ctx_t *vfu_ctx, uint32_t subindex);

/* Trampolines (ours, below): wire the callbacks that call into Python. */
int vv_setup_region(vfu_ctx_t *ctx, int idx, size_t size, int flags);
int vv_setup_log(vfu_ctx_t *ctx, int level);
int vv_setup_reset(vfu_ctx_t *ctx);
int vv_setup_dma(vfu_ctx_t *ctx);
uint8_t *vv_config_space(vfu_ctx_t *ctx);
extern const char VV_VFU_BUILD_ID[];

extern "Python" ssize_t vv_py_region(vfu_ctx_t *, int, char *, size_t, loff_t, bool);
extern "Python" void vv_py_log(vfu_ctx_t *, int, const char *);
extern "Python" int vv_py_reset(vfu_ctx_t *, int);
extern "Python" void vv_py_dma(vfu_ctx_t *, int, vfu_dma_info_t *);
"""

SOURCE = r"""
#include <errno.h>
#include <stdbool.h>
#include <syslog.h>
#include "libvfio-user.h"

const char VV_VFU_BUILD_ID[] = "%(build_id)s";

static ssize_t vv_py_region(vfu_ctx_t *, int, char *, size_t, loff_t, bool);
static void vv_py_log(vfu_ctx_t *, int, const char *);
static int vv_py_reset(vfu_ctx_t *, int);
static void vv_py_dma(vfu_ctx_t *, int, vfu_dma_info_t *);

/* Python returns the byte count, or -errno; libvfio-user wants -1 with errno set. */
#define VV_REGION_TRAMPOLINE(n)                                                         \
    static ssize_t vv_region_cb_##n(vfu_ctx_t *c, char *b, size_t cnt, loff_t off,     \
                                    bool w) {                                           \
        ssize_t r = vv_py_region(c, n, b, cnt, off, w);                                 \
        if (r < 0) { errno = (int)-r; return -1; }                                      \
        return r;                                                                       \
    }
VV_REGION_TRAMPOLINE(0) VV_REGION_TRAMPOLINE(1) VV_REGION_TRAMPOLINE(2)
VV_REGION_TRAMPOLINE(3) VV_REGION_TRAMPOLINE(4) VV_REGION_TRAMPOLINE(5)
VV_REGION_TRAMPOLINE(6) VV_REGION_TRAMPOLINE(7)

static vfu_region_access_cb_t *const vv_region_cbs[] = {
    vv_region_cb_0, vv_region_cb_1, vv_region_cb_2, vv_region_cb_3,
    vv_region_cb_4, vv_region_cb_5, vv_region_cb_6, vv_region_cb_7,
};

/* Returns 0, or -1 with errno (EINVAL for an index without a trampoline). */
int vv_setup_region(vfu_ctx_t *ctx, int idx, size_t size, int flags) {
    if (idx < 0 || idx >= (int)(sizeof(vv_region_cbs) / sizeof(vv_region_cbs[0]))) {
        errno = EINVAL;
        return -1;
    }
    return vfu_setup_region(ctx, idx, size, vv_region_cbs[idx], flags, NULL, 0, -1, 0);
}

static void vv_log_cb(vfu_ctx_t *c, int level, const char *msg) { vv_py_log(c, level, msg); }
int vv_setup_log(vfu_ctx_t *ctx, int level) { return vfu_setup_log(ctx, vv_log_cb, level); }

static int vv_reset_cb(vfu_ctx_t *c, vfu_reset_type_t type) {
    int r = vv_py_reset(c, (int)type);
    if (r < 0) { errno = -r; return -1; }
    return 0;
}
int vv_setup_reset(vfu_ctx_t *ctx) { return vfu_setup_device_reset_cb(ctx, vv_reset_cb); }

static void vv_dma_reg(vfu_ctx_t *c, vfu_dma_info_t *info) { vv_py_dma(c, 1, info); }
static void vv_dma_unreg(vfu_ctx_t *c, vfu_dma_info_t *info) { vv_py_dma(c, 0, info); }
int vv_setup_dma(vfu_ctx_t *ctx) { return vfu_setup_device_dma(ctx, vv_dma_reg, vv_dma_unreg); }

/* The config space buffer as bytes (NULL before vfu_pci_init). */
uint8_t *vv_config_space(vfu_ctx_t *ctx) { return (uint8_t *)vfu_pci_get_config_space(ctx); }
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "vfio_virtio._vfu",
    SOURCE % {"build_id": BUILD_ID},
    include_dirs=[os.path.join(PREFIX, "include", "vfio-user")],
    library_dirs=[os.path.join(PREFIX, "lib")],
    libraries=["vfio-user"],
    extra_link_args=[f"-Wl,-rpath,{os.path.join(PREFIX, 'lib')}"],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(TOP, "build", "cffi"), target=None, verbose=False)
    # compile() writes next to tmpdir's package layout; move the module into the package.
    import glob
    import shutil
    for so in glob.glob(os.path.join(TOP, "build", "cffi", "vfio_virtio", "_vfu*.so")):
        shutil.copy(so, os.path.join(TOP, "vfio_virtio"))
