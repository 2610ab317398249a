"""cffi builder (API mode, out-of-line) for the C request path: vfio_virtio._fast.

Sources in cffi_build/csrc/: fastpath.[ch] (BAR0 hot registers, requestq end to end),
gpio_lines.[ch] (the line table and 5.17 request rules), virtq.[ch] (the split ring, the same
code as vfio_virtio._virtq: the queue struct is shared between the two by address). The
libvfio-user glue is below: the BAR0 region callback, the context registry, the interrupt
trigger, and the Python fallback (extern "Python" vv_fast_py_bar0). Linked against the cached
libvfio-user like build_vfu.py. BUILD_ID: the stale check in vfio_virtio/gpio/fastpath.py.
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
from _buildid import build_id  # noqa: E402
sys.path.pop(0)
sys.path.insert(0, HERE)
from build_vfu import libvfio_user_prefix  # noqa: E402
sys.path.pop(0)

# Order matters: vfio_virtio/gpio/fastpath.py hashes the same list (FAST_SOURCES there).
SOURCE_NAMES = ["build_fast.py", "csrc/vv_dma.h", "csrc/virtq.h", "csrc/virtq.c",
                "csrc/gpio_lines.h", "csrc/gpio_lines.c", "csrc/fastpath.h", "csrc/fastpath.c"]
SOURCES = [os.path.join(HERE, n) for n in SOURCE_NAMES]
BUILD_ID = build_id(SOURCES)
PREFIX = libvfio_user_prefix()


def _rel(path: str) -> str:
    if __name__ == "__main__":
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


CDEF = r"""
struct vv_iov { uint64_t addr; uint64_t iova; uint32_t len; uint32_t writable; };
struct vv_queue;
struct vv_gpio_line { uint8_t direction; uint8_t value; uint8_t irq_type; uint8_t latched;
                      uint8_t input; uint8_t edge; uint8_t changed; uint8_t pad; };
struct vv_gpio_chipline { int32_t fd; uint32_t bit; };
struct vv_gpio { uint32_t ngpio; uint32_t names_size; uint32_t nchanged; int32_t notify_fd;
                 uint64_t requests; uint64_t errors; struct vv_gpio_line *lines;
                 uint32_t *changed_list; uint32_t mode; uint32_t pad;
                 struct vv_gpio_chipline *chip; };
#define VV_GPIO_MODE_SIM ...
#define VV_GPIO_MODE_CHIP ...
#define VV_GPIO_MODE_PYTHON ...
#define VV_GPIO_PYTHON ...
#define VV_FAST_PYTHON ...
#define VV_FAST_BATCH ...
#define VV_FAST_COMMON_LEN ...
int vv_gpio_handle(struct vv_gpio *g, const uint8_t *req, uint32_t req_len,
                   uint32_t resp_cap, uint8_t *resp);
void vv_gpio_mark_changed(struct vv_gpio *g, uint32_t line);

struct vv_fast {
    void *ctx; uint8_t *cfg; int (*trigger)(void *ctx, uint32_t vector);
    uint8_t decodes_bars; uint8_t running; uint8_t slow; uint8_t isr;
    uint8_t common[64];
    uint16_t req_vector; uint16_t msix_vectors; uint32_t msix_cap; uint32_t serve_requestq;
    struct vv_queue *reqq; struct vv_gpio *gpio; struct vv_iov *iovs; uint32_t max_iovs;
    uint32_t npend; uint32_t pend_heads[64];
    uint64_t c_reads, c_kicks, c_chains, c_malformed, c_irqs, py_calls;
};
int vv_fast_requestq(struct vv_fast *f);
long vv_fast_access(struct vv_fast *f, char *buf, unsigned long count, long long off,
                    int is_write);

/* glue */
int vv_fast_install(struct vv_fast *f, void *ctx, uint32_t bar0_size);
void vv_fast_uninstall(struct vv_fast *f);
int vv_fast_serve(struct vv_fast *f, int vfu_fd, const int *fds, int nfds, int timeout_ms,
                  int stall_ms, volatile int *stop);
extern const char VV_FAST_BUILD_ID[];
extern "Python" long vv_fast_py_bar0(struct vv_fast *, char *, unsigned long, long long, int);
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include "libvfio-user.h"
#include "fastpath.h"

const char VV_FAST_BUILD_ID[] = "%(build_id)s";

_Static_assert(sizeof(struct vv_gpio_line) == 8, "vv_gpio_line layout");
_Static_assert(VV_FAST_COMMON_LEN == 64 && VV_FAST_BATCH == 64, "cdef sizes");

static long vv_fast_py_bar0(struct vv_fast *, char *, unsigned long, long long, int);

/* One entry per context (the region callback gets only the context). */
#define VV_FAST_MAX 16
static struct vv_fast *vv_fast_table[VV_FAST_MAX];

static int vv_fast_trigger(void *ctx, uint32_t vector)
{
    return vfu_irq_trigger((vfu_ctx_t *)ctx, vector);
}

static ssize_t vv_fast_bar0_cb(vfu_ctx_t *ctx, char *buf, size_t count, loff_t off, bool w)
{
    struct vv_fast *f = NULL;
    long r;

    for (int i = 0; i < VV_FAST_MAX; i++)
        if (vv_fast_table[i] != NULL && vv_fast_table[i]->ctx == ctx) {
            f = vv_fast_table[i];
            break;
        }
    if (f == NULL) {
        errno = EINVAL;
        return -1;
    }
    r = vv_fast_access(f, buf, count, (long long)off, w);
    if (r == VV_FAST_PYTHON) {
        f->py_calls++;
        r = vv_fast_py_bar0(f, buf, count, (long long)off, w);
    }
    if (r < 0) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

/* Returns 0, or -1 with errno (ENOSPC: table full; or vfu_setup_region's). */
int vv_fast_install(struct vv_fast *f, void *ctx, uint32_t bar0_size)
{
    int slot = -1;

    for (int i = 0; i < VV_FAST_MAX; i++)
        if (vv_fast_table[i] == NULL || vv_fast_table[i]->ctx == ctx) {
            slot = i;
            break;
        }
    if (slot < 0) {
        errno = ENOSPC;
        return -1;
    }
    f->ctx = ctx;
    f->cfg = (uint8_t *)vfu_pci_get_config_space((vfu_ctx_t *)ctx);
    f->trigger = vv_fast_trigger;
    if (vfu_setup_region((vfu_ctx_t *)ctx, VFU_PCI_DEV_BAR0_REGION_IDX, bar0_size,
                         vv_fast_bar0_cb, VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM,
                         NULL, 0, -1, 0) < 0)
        return -1;
    vv_fast_table[slot] = f;
    return 0;
}

static long long vv_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The whole-message gate of vfio_virtio/vfu/framing.py, in C: 1 when the message at the head
 * of connection fd is wholly queued (or EOF, or a header the library refuses at once: it
 * closes the connection for those), 0 when only part of it is there (Python's gate then
 * waits for the rest without blocking the loop). Nothing is consumed: MSG_PEEK takes no
 * SCM_RIGHTS fds. Same rule as framing.needed_from(). */
#define VV_HDR_SIZE 16u                      /* sizeof(struct vfio_user_header) */
#define VV_MAX_MSG (VV_HDR_SIZE + 16u + (1u << 20))
static int vv_whole_message(int fd)
{
    unsigned char h[VV_HDR_SIZE];
    uint32_t size, flags;
    int queued = 0;
    ssize_t n = recv(fd, h, sizeof h, MSG_PEEK | MSG_DONTWAIT);

    if (n == 0)
        return 1;                          /* EOF: the library sees it */
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : 1;
    if ((size_t)n < sizeof h)
        return 0;
    memcpy(&size, h + 4, 4);
    memcpy(&flags, h + 8, 4);
    if ((flags & 0xF) != 0 || size < VV_HDR_SIZE || size > VV_MAX_MSG)
        return 1;
    if (ioctl(fd, FIONREAD, &queued) < 0)
        return 0;
    return (uint32_t)queued >= size;
}

/* Serve vfio-user messages here until Python is needed: wait (poll) on the client
 * connection vfu_fd and on fds (every other fd the server's loop watches), run
 * vfu_run_ctx whenever only the connection is readable. Returns 0 when another fd is
 * readable, a message is only partly queued (vv_whole_message), timeout_ms (-1: none; the
 * loop's next timer) passed, *stop was set (a Python
 * callback scheduled work) or the connection changed; 1 when one vfu_run_ctx took at least
 * stall_ms (a stalled client: Python decides); -1 with errno when vfu_run_ctx failed
 * (Python's own call will see the same condition and handle it). */
int vv_fast_serve(struct vv_fast *f, int vfu_fd, const int *fds, int nfds, int timeout_ms,
                  int stall_ms, volatile int *stop)
{
    struct pollfd p[64];
    long long deadline = timeout_ms < 0 ? -1 : vv_now_ms() + timeout_ms;
    int n = 1;

    p[0].fd = vfu_fd;
    p[0].events = POLLIN;
    for (int i = 0; i < nfds && n < 64; i++) {
        p[n].fd = fds[i];
        p[n++].events = POLLIN;
    }
    if (nfds >= 64)
        return 0;                          /* too many to watch here: Python's loop waits */
    while (!*stop) {
        int left = -1, r;
        if (deadline >= 0) {
            long long now = vv_now_ms();
            if (now >= deadline)
                return 0;
            left = (int)(deadline - now);
        }
        r = poll(p, (nfds_t)n, left);
        if (r <= 0)
            return 0;                      /* timeout, or EINTR: a signal is Python's */
        for (int i = 1; i < n; i++)
            if (p[i].revents)
                return 0;
        if (p[0].revents) {
            long long t0;
            if (!(p[0].revents & (POLLHUP | POLLERR)) && !vv_whole_message(vfu_fd))
                return 0;                  /* part of a message: Python's gate waits */
            t0 = vv_now_ms();
            int rc = vfu_run_ctx((vfu_ctx_t *)f->ctx), err = errno;
            if (vv_now_ms() - t0 >= stall_ms)
                return 1;
            if (rc < 0 && err != EAGAIN && err != EBUSY) {
                errno = err;
                return -1;
            }
            if (vfu_get_poll_fd((vfu_ctx_t *)f->ctx) != vfu_fd)
                return 0;
            if (p[0].revents & (POLLHUP | POLLERR))
                return 0;
        }
    }
    return 0;
}

void vv_fast_uninstall(struct vv_fast *f)
{
    for (int i = 0; i < VV_FAST_MAX; i++)
        if (vv_fast_table[i] == f)
            vv_fast_table[i] = NULL;
}
""" % {"build_id": BUILD_ID}

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "vfio_virtio._fast",
    SOURCE,
    sources=[_rel(os.path.join(CSRC, n)) for n in ("virtq.c", "gpio_lines.c", "fastpath.c")],
    include_dirs=[_rel(CSRC), os.path.join(PREFIX, "include", "vfio-user")],
    library_dirs=[os.path.join(PREFIX, "lib")],
    libraries=["vfio-user"],
    # VV_CFLAGS: extra flags for sanitizer builds (scripts/test_asan.sh)
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    + os.environ.get("VV_CFLAGS", "").split(),
    extra_link_args=[f"-Wl,-rpath,{os.path.join(PREFIX, 'lib')}"]
    + os.environ.get("VV_CFLAGS", "").split(),
)

if __name__ == "__main__":
    # usage: build_fast.py [DEST_DIR]   (default: the vfio_virtio package, in place)
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "vfio_virtio")
    tmp = os.path.join(TOP, "build", "cffi_fast")
    os.makedirs(tmp, exist_ok=True)
    ffibuilder.compile(tmpdir=tmp, verbose=False)
    built = glob.glob(os.path.join(tmp, "vfio_virtio", "_fast*.so"))
    if not built:
        raise SystemExit(f"build_fast: no extension produced under {tmp}")
    for so in built:
        os.makedirs(dest, exist_ok=True)
        shutil.copy(so, dest)
        print(f"built {os.path.join(dest, os.path.basename(so))} ({BUILD_ID})")
