/* virtq.h: split virtqueue fast path, device side (virtio 1.3 section 2.7).
 *
 * Guest addresses are translated through a struct vv_dma_table; nothing here calls Python.
 * Every number read from guest memory is checked: a malformed chain whose head is valid is
 * returned with an error code (the device completes it and carries on, 2.7.5.3.2 lets the
 * device treat it as an error); a ring that cannot be used at all marks the queue broken
 * (the transport then sets DEVICE_NEEDS_RESET, 2.1.2).
 *
 * The numeric codes are mirrored in vfio_virtio/virtio/ring_spec.py.
 */
#ifndef VV_VIRTQ_H
#define VV_VIRTQ_H

#include <stdint.h>
#include "vv_dma.h"

/* Descriptor and ring flags, virtio 1.3 2.7.5, 2.7.6, 2.7.8. */
#define VRING_DESC_F_NEXT          1
#define VRING_DESC_F_WRITE         2
#define VRING_DESC_F_INDIRECT      4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY     1

#define VQ_MAX_SIZE 32768          /* 2.7: Queue Size is a power of 2, at most 32768 */

/* Chain error codes (struct vv_chain.error). */
#define VQ_ERR_DESC_INDEX        1  /* next index >= table size (2.7.5) */
#define VQ_ERR_CHAIN_LEN         2  /* loop, or chain longer than queue size (2.7.5.3.1) */
#define VQ_ERR_NESTED_INDIRECT   3  /* INDIRECT inside an indirect table (2.7.5.3.1) */
#define VQ_ERR_INDIRECT_LEN      4  /* table len 0, not a multiple of 16, or > size entries */
#define VQ_ERR_INDIRECT_NEXT     5  /* INDIRECT together with NEXT (2.7.5.3.1) */
#define VQ_ERR_INDIRECT_FEATURE  6  /* INDIRECT without VIRTIO_F_INDIRECT_DESC */
#define VQ_ERR_INDIRECT_UNMAPPED 7  /* indirect table not in readable guest memory */
#define VQ_ERR_UNMAPPED          8  /* buffer not mapped with the needed permission */
#define VQ_ERR_LEN_OVERFLOW      9  /* total chain length above 2^32 - 1 */
#define VQ_ERR_ORDER            10  /* device-readable after device-writable (2.7.4.2) */
#define VQ_ERR_ZERO_LEN         11  /* zero-length buffer descriptor */

/* Queue broken reasons (struct vv_queue.broken). */
#define VQ_BROKEN_CONFIG         1  /* size not a power of 2 / too big, or ring misaligned */
#define VQ_BROKEN_RING_UNMAPPED  2  /* a ring is not mapped with the needed permission */
#define VQ_BROKEN_AVAIL_IDX      3  /* avail idx moved more than size past last_avail_idx */
#define VQ_BROKEN_HEAD           4  /* head index from the avail ring >= size */

/* One buffer of a chain: host address, guest address, length, device-writable flag. */
struct vv_iov {
    uint64_t addr;
    uint64_t iova;
    uint32_t len;
    uint32_t writable;
};

/* One popped chain; its buffers are iovs[iov_start .. iov_start + iov_count). */
struct vv_chain {
    uint32_t head;
    int32_t error;
    uint32_t iov_start;
    uint32_t iov_count;
    uint32_t readable_len;
    uint32_t writable_len;
};

/* Device-side state of one split queue. Python fills the config fields; the rest is
 * the ring's own state (what get_state/set_state carry across processes). */
struct vv_queue {
    const struct vv_dma_table *dma;
    uint64_t desc_addr;         /* IOVA of the descriptor table */
    uint64_t driver_addr;       /* IOVA of the available ring */
    uint64_t device_addr;       /* IOVA of the used ring */
    uint32_t size;
    uint16_t last_avail_idx;
    uint16_t used_idx;
    uint16_t signalled_used;
    uint8_t signalled_used_valid;
    uint8_t event_idx;          /* VIRTIO_F_EVENT_IDX negotiated */
    uint8_t indirect;           /* VIRTIO_F_INDIRECT_DESC negotiated */
    uint8_t enabled;
    int32_t broken;             /* 0 or VQ_BROKEN_* */
};

/* Check size and ring alignment (2.7: desc 16, avail 2, used 4; size a power of 2 in
 * 1..32768). Returns 0, or VQ_BROKEN_CONFIG. Does not touch the queue. */
int vv_queue_check(const struct vv_queue *q);

/* Pop up to max_chains available chains (2.7.13.2 / 2.7.5). Chains go to chains[], their
 * buffers to iovs[]. Returns the number of chains popped (>= 0), or -EINVAL if
 * max_iovs < q->size (every chain must fit). A malformed chain is returned with error != 0
 * and no buffers. A chain that does not fit in the iovs left ends the batch unconsumed.
 * If the queue is (or becomes) broken, q->broken is set and the chains popped before that
 * are still returned. With event idx, avail_event is set to the new last_avail_idx and the
 * avail idx re-read after a full fence, so a chain added meanwhile is not missed (2.7.10). */
int vv_pop_batch(struct vv_queue *q, struct vv_chain *chains, uint32_t max_chains,
                 struct vv_iov *iovs, uint32_t max_iovs);

/* Re-walk the chain starting at descriptor `head` without touching any index.
 * Returns 0 (chain->error tells whether it is well formed), -EINVAL (head >= size, bad
 * config, max_iovs < size) or -EFAULT (descriptor table not mapped). */
int vv_chain_at(struct vv_queue *q, uint32_t head, struct vv_chain *chain,
                struct vv_iov *iovs, uint32_t max_iovs);

/* Put n used elements (ids[i], lens[i]) in the used ring, then publish used idx with a
 * release store (2.7.8, 2.7.13.3). Returns 0; -EINVAL if an id >= size (nothing written);
 * -EIO if the queue is disabled or broken (nothing written); -EFAULT if the used ring is
 * not mapped writable (queue marked broken). */
int vv_push_batch(struct vv_queue *q, const uint32_t *ids, const uint32_t *lens, uint32_t n);

/* Whether the driver must be interrupted for the used entries pushed since the last call
 * (2.7.7.2; 2.7.10 vring_need_event with event idx, else VRING_AVAIL_F_NO_INTERRUPT).
 * Returns 1 or 0; 0 as well when nothing was pushed since the last decision, or when the
 * queue is disabled or broken. */
int vv_needs_notify(struct vv_queue *q);

#endif
