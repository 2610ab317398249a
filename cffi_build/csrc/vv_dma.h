/* vv_dma.h: the IOVA -> host-address table shared by Python (vfio_virtio/dma.py, which fills
 * it from the vfio-user DMA register/unregister callbacks) and the C ring fast path.
 *
 * The table is plain data owned by Python; C only reads it. Every change bumps `generation`,
 * so cached translations (ring addresses, chains handed to Python) can tell they are stale.
 */
#ifndef VV_DMA_H
#define VV_DMA_H

#include <stdint.h>

#define VV_DMA_MAX_REGIONS 64
#define VV_PROT_READ  1
#define VV_PROT_WRITE 2

struct vv_dma_region {
    uint64_t iova;
    uint64_t len;
    uint64_t vaddr;
    uint32_t prot;
};

struct vv_dma_table {
    uint32_t n;
    uint32_t generation;
    struct vv_dma_region r[VV_DMA_MAX_REGIONS];
};

/* Host pointer for guest range [iova, iova+len) if it lies wholly inside ONE region whose
 * prot includes every bit of `prot`; NULL otherwise. len 0 is invalid (NULL). No overflow:
 * the end is never computed as iova+len. t->n above VV_DMA_MAX_REGIONS is clamped. */
void *vv_dma_translate(const struct vv_dma_table *t, uint64_t iova, uint64_t len,
                       uint32_t prot);

#endif
