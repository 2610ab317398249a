/* fastpath.h: virtio-pci BAR0 hot registers and the virtio-gpio requestq, served in C inside
 * the libvfio-user region callback (no Python on the path).
 *
 * What C answers (everything else goes to Python through vv_fast_py_bar0):
 *   - BAR0 reads of the common configuration structure, from a register image that Python
 *     renders after every change it makes (vfio_virtio/gpio/fastpath.py: sync());
 *   - the ISR read (read-to-clear, 4.1.4.5); the ISR bits live here, Python reads and sets
 *     them through the same struct;
 *   - the notify write of the requestq: pop, decode (5.17.6), apply to the line table
 *     (gpio_lines.h), write the response, push used, decide on the interrupt (2.7.7.2 /
 *     2.7.10) and trigger it (MSI-X vector or INTx, vfu_irq_trigger: an eventfd write).
 * Gating (PCI PM 1.2, 5.3): while the function does not decode its BARs (D3hot) reads return
 * all ones and writes are dropped, here. While `slow` is set (Python wants to see every
 * access, e.g. to note activity after a No_Soft_Reset wake) everything goes to Python.
 * A request C cannot serve ends the C batch: that chain and the rest of the batch are left
 * in pend_heads for Python, in order (per-line ordering, 5.17.6), and Python is called.
 */
#ifndef VV_FASTPATH_H
#define VV_FASTPATH_H

#include <stdint.h>
#include "virtq.h"
#include "gpio_lines.h"

#define VV_FAST_COMMON_LEN 0x40    /* VIRTIO_PCI_COMMON_CFG_LEN */
#define VV_FAST_SLOT 0x1000        /* one 4 KiB slot per structure in BAR0 */
#define VV_FAST_COMMON_OFF 0x0000
#define VV_FAST_ISR_OFF 0x1000
#define VV_FAST_NOTIFY_OFF 0x3000
#define VV_FAST_NOTIFY_MULT 4
#define VV_FAST_BATCH 64
#define VIRTIO_MSI_NO_VECTOR 0xFFFF
#define VIRTIO_PCI_ISR_QUEUE 0x1
#define PCI_COMMAND 0x04
#define PCI_COMMAND_INTX_DISABLE 0x400
#define PCI_MSIX_FLAGS 2
#define PCI_MSIX_FLAGS_ENABLE 0x8000

struct vv_fast {
    void *ctx;                     /* vfu_ctx_t * (opaque here) */
    uint8_t *cfg;                  /* PCI config space (MSI-X enable, Command) */
    int (*trigger)(void *ctx, uint32_t vector);   /* vfu_irq_trigger; NULL: none */
    /* gating: Python's set_gating() */
    uint8_t decodes_bars;          /* PM: D0 */
    uint8_t running;               /* virtio core running (DRIVER_OK, powered, no SUSPEND...) */
    uint8_t slow;                  /* every access to Python */
    uint8_t isr;                   /* ISR status bits (read-to-clear) */
    uint8_t common[VV_FAST_COMMON_LEN];   /* common cfg image, rendered by Python */
    uint16_t req_vector;           /* requestq MSI-X vector (queue_msix_vector of queue 0) */
    uint16_t msix_vectors;         /* vectors the function has */
    uint32_t msix_cap;             /* config-space offset of the MSI-X capability */
    uint32_t serve_requestq;       /* 0: requestq notifies go to Python */
    struct vv_queue *reqq;         /* queue 0 (owned by Python's Virtqueue) */
    struct vv_gpio *gpio;          /* the line table (owned by Python) */
    struct vv_iov *iovs;           /* scratch, max_iovs entries (Python-owned) */
    uint32_t max_iovs;
    uint32_t npend;                /* heads left for Python (see above) */
    uint32_t pend_heads[VV_FAST_BATCH];
    /* counters */
    uint64_t c_reads, c_kicks, c_chains, c_malformed, c_irqs, py_calls;
};

/* Serve the requestq now, as a notify write would (also used by tests and the fuzzer with
 * trigger == NULL: no interrupt is triggered). Returns 0 when done, 1 when Python must run
 * (pend_heads, or the queue broke: DEVICE_NEEDS_RESET is Python's). */
int vv_fast_requestq(struct vv_fast *f);

/* One BAR0 access (the region callback's body; the libvfio-user glue in
 * cffi_build/build_fast.py wraps it). Returns count when served here, or VV_FAST_PYTHON when
 * the access must go to Python (nothing changed, except a requestq batch already served). */
#define VV_FAST_PYTHON (-2)
long vv_fast_access(struct vv_fast *f, char *buf, unsigned long count, long long off,
                    int is_write);

#endif
