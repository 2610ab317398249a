/* virtq.c: split virtqueue fast path, device side (virtio 1.3 section 2.7).
 * See virtq.h for the contract of each function. The pure-Python twin is
 * vfio_virtio/virtio/ring_py.py: any change here must be made there too (the
 * differential test compares the two). */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include "virtq.h"

/* Guest memory may change under us at any time: copy once, then use only the copy. */
#define COMPILER_BARRIER() __asm__ __volatile__("" ::: "memory")

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

void *vv_dma_translate(const struct vv_dma_table *t, uint64_t iova, uint64_t len,
                       uint32_t prot)
{
    uint32_t n = t->n < VV_DMA_MAX_REGIONS ? t->n : VV_DMA_MAX_REGIONS;

    if (len == 0)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        const struct vv_dma_region *r = &t->r[i];
        if (iova < r->iova)
            continue;
        uint64_t off = iova - r->iova;
        if (off >= r->len || len > r->len - off)
            continue;
        if ((r->prot & prot) != prot)
            return NULL;
        return (void *)(uintptr_t)(r->vaddr + off);
    }
    return NULL;
}

int vv_queue_check(const struct vv_queue *q)
{
    uint32_t s = q->size;

    if (s == 0 || s > VQ_MAX_SIZE || (s & (s - 1)) != 0)
        return VQ_BROKEN_CONFIG;
    if ((q->desc_addr & 15) || (q->driver_addr & 1) || (q->device_addr & 3))
        return VQ_BROKEN_CONFIG;
    return 0;
}

/* Bytes of the avail / used ring, with the event idx trailer when negotiated (2.7.6, 2.7.8). */
static uint64_t avail_bytes(const struct vv_queue *q)
{
    return 4 + 2 * (uint64_t)q->size + (q->event_idx ? 2 : 0);
}

static uint64_t used_bytes(const struct vv_queue *q)
{
    return 4 + 8 * (uint64_t)q->size + (q->event_idx ? 2 : 0);
}

/* Host addresses of the three rings, translated afresh on every call (a handful of
 * region compares; no cache to go stale when the DMA table or the config changes). */
struct rings {
    const void *desc;
    const void *avail;
    void *used;
};

/* Check the config and translate the rings. Returns 0, or a VQ_BROKEN_* code. */
static int map_rings(const struct vv_queue *q, struct rings *r)
{
    int rc = vv_queue_check(q);

    if (rc)
        return rc;
    r->desc = vv_dma_translate(q->dma, q->desc_addr, 16 * (uint64_t)q->size, VV_PROT_READ);
    r->avail = vv_dma_translate(q->dma, q->driver_addr, avail_bytes(q), VV_PROT_READ);
    r->used = vv_dma_translate(q->dma, q->device_addr, used_bytes(q), VV_PROT_WRITE);
    if (!r->desc || !r->avail || !r->used)
        return VQ_BROKEN_RING_UNMAPPED;
    return 0;
}

static inline uint16_t load_u16(const void *p, int order)
{
    return le16toh(__atomic_load_n((const uint16_t *)p, order));
}

static inline void read_desc(const void *table, uint32_t i, struct desc *d)
{
    memcpy(d, (const char *)table + 16 * (uint64_t)i, sizeof(*d));
    COMPILER_BARRIER();
    d->addr = le64toh(d->addr);
    d->len = le32toh(d->len);
    d->flags = le16toh(d->flags);
    d->next = le16toh(d->next);
}

/* A chain walk in progress: the descriptor table it reads (the ring's, or the one indirect
 * table a chain may have), where it is, how many more descriptors it may read (its TTL), and
 * what it has gathered. */
struct walk {
    const void *table;
    uint32_t tsize, idx, ttl;
    uint32_t niov, rlen, wlen;
    uint64_t total;
    int in_indirect, seen_write;
};

/* Switch the walk to the indirect table `d` points to (2.7.5.3.1: needs the feature, one table
 * per chain, never together with NEXT). Returns 0 or a VQ_ERR_* code. */
static int enter_indirect(const struct vv_queue *q, const struct desc *d, struct walk *w)
{
    if (!q->indirect)
        return VQ_ERR_INDIRECT_FEATURE;
    if (w->in_indirect)
        return VQ_ERR_NESTED_INDIRECT;
    if (d->flags & VRING_DESC_F_NEXT)
        return VQ_ERR_INDIRECT_NEXT;
    if (d->len == 0 || (d->len & 15) || d->len / 16 > q->size)
        return VQ_ERR_INDIRECT_LEN;
    w->table = vv_dma_translate(q->dma, d->addr, d->len, VV_PROT_READ);
    if (!w->table)
        return VQ_ERR_INDIRECT_UNMAPPED;
    w->in_indirect = 1;
    w->tsize = d->len / 16;
    w->ttl = w->tsize;
    w->idx = 0;
    return 0;
}

/* Append the buffer `d` describes to the walk's iovs, translated with the permission it needs
 * (2.7.4.2: device-writable buffers come after device-readable ones). Returns 0, a VQ_ERR_*
 * code, or -ENOSPC when all `cap` iovs are taken. */
static int add_buffer(const struct vv_queue *q, const struct desc *d, struct walk *w,
                      struct vv_iov *iovs, uint32_t cap)
{
    int writable = (d->flags & VRING_DESC_F_WRITE) != 0;
    void *host;

    if (d->len == 0)
        return VQ_ERR_ZERO_LEN;
    if (!writable && w->seen_write)
        return VQ_ERR_ORDER;
    host = vv_dma_translate(q->dma, d->addr, d->len, writable ? VV_PROT_WRITE : VV_PROT_READ);
    if (!host)
        return VQ_ERR_UNMAPPED;
    w->total += d->len;
    if (w->total > UINT32_MAX)
        return VQ_ERR_LEN_OVERFLOW;
    if (w->niov >= q->size)
        return VQ_ERR_CHAIN_LEN;
    if (w->niov >= cap)
        return -ENOSPC;
    iovs[w->niov].addr = (uint64_t)(uintptr_t)host;
    iovs[w->niov].iova = d->addr;
    iovs[w->niov].len = d->len;
    iovs[w->niov].writable = (uint32_t)writable;
    w->niov++;
    if (writable) {
        w->seen_write = 1;
        w->wlen += d->len;
    } else {
        w->rlen += d->len;
    }
    return 0;
}

/* Walk the chain at `head` (2.7.5, 2.7.5.3). Returns 0 with c->error set, or -ENOSPC when
 * its buffers do not fit in `cap` iovs (nothing consumed). */
static int walk(const struct vv_queue *q, const void *desc, uint32_t head,
                struct vv_chain *c, struct vv_iov *iovs, uint32_t cap)
{
    struct walk w = { .table = desc, .tsize = q->size, .idx = head, .ttl = q->size };
    struct desc d;
    int err;

    c->head = head;
    for (;;) {
        if (w.ttl == 0) {
            err = VQ_ERR_CHAIN_LEN;
            break;
        }
        w.ttl--;
        read_desc(w.table, w.idx, &d);
        if (d.flags & VRING_DESC_F_INDIRECT) {
            err = enter_indirect(q, &d, &w);
            if (err)
                break;
            continue;
        }
        err = add_buffer(q, &d, &w, iovs, cap);
        if (err < 0)
            return err;
        if (err || !(d.flags & VRING_DESC_F_NEXT))
            break;
        w.idx = d.next;
        if (w.idx >= w.tsize) {
            err = VQ_ERR_DESC_INDEX;
            break;
        }
    }
    c->error = err;
    c->iov_count = err ? 0 : w.niov;
    c->readable_len = err ? 0 : w.rlen;
    c->writable_len = err ? 0 : w.wlen;
    return 0;
}

int vv_pop_batch(struct vv_queue *q, struct vv_chain *chains, uint32_t max_chains,
                 struct vv_iov *iovs, uint32_t max_iovs)
{
    uint32_t n = 0, used_iovs = 0;
    struct rings r;
    int rc;

    if (!q->enabled || q->broken || max_chains == 0)
        return 0;
    rc = map_rings(q, &r);
    if (rc) {
        q->broken = rc;
        return 0;
    }
    if (max_iovs < q->size)
        return -EINVAL;
    const uint16_t *ring = (const uint16_t *)((const char *)r.avail + 4);
    uint16_t *avail_event = (uint16_t *)((char *)r.used + 4 + 8 * (uint64_t)q->size);
    for (;;) {
        /* 2.7.13.2 acquire: ring entries and descriptors are read after avail idx */
        uint16_t avail_idx = load_u16((const char *)r.avail + 2, __ATOMIC_ACQUIRE);
        if ((uint16_t)(avail_idx - q->last_avail_idx) > q->size) {
            q->broken = VQ_BROKEN_AVAIL_IDX;
            return (int)n;
        }
        while (n < max_chains && q->last_avail_idx != avail_idx) {
            uint16_t head = load_u16(&ring[q->last_avail_idx & (q->size - 1)], __ATOMIC_RELAXED);
            if (head >= q->size) {
                q->broken = VQ_BROKEN_HEAD;
                return (int)n;
            }
            if (walk(q, r.desc, head, &chains[n], iovs + used_iovs, max_iovs - used_iovs) < 0)
                return (int)n;  /* does not fit: left for the next batch */
            chains[n].iov_start = used_iovs;
            used_iovs += chains[n].iov_count;
            n++;
            q->last_avail_idx++;
        }
        if (q->event_idx) {
            /* 2.7.10: tell the driver which avail idx to kick at, then re-check */
            __atomic_store_n(avail_event, htole16(q->last_avail_idx), __ATOMIC_RELAXED);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
        }
        if (n >= max_chains)
            return (int)n;
        if (load_u16((const char *)r.avail + 2, __ATOMIC_ACQUIRE) == q->last_avail_idx)
            return (int)n;
    }
}

int vv_chain_at(struct vv_queue *q, uint32_t head, struct vv_chain *chain,
                struct vv_iov *iovs, uint32_t max_iovs)
{
    if (vv_queue_check(q) || head >= q->size || max_iovs < q->size)
        return -EINVAL;
    const void *desc = vv_dma_translate(q->dma, q->desc_addr, 16 * (uint64_t)q->size,
                                        VV_PROT_READ);
    if (!desc)
        return -EFAULT;
    walk(q, desc, head, chain, iovs, max_iovs);
    chain->iov_start = 0;
    return 0;
}

int vv_push_batch(struct vv_queue *q, const uint32_t *ids, const uint32_t *lens, uint32_t n)
{
    struct rings r;
    int rc;

    if (!q->enabled || q->broken)
        return -EIO;
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] >= q->size)
            return -EINVAL;
    rc = map_rings(q, &r);
    if (rc) {
        q->broken = rc;
        return -EFAULT;
    }
    char *ring = (char *)r.used + 4;
    uint16_t idx = q->used_idx;
    for (uint32_t i = 0; i < n; i++, idx++) {
        uint32_t elem[2] = { htole32(ids[i]), htole32(lens[i]) };
        memcpy(ring + 8 * (uint64_t)(idx & (q->size - 1)), elem, sizeof(elem));
    }
    /* 2.7.8.2 / 2.7.13.3: entries visible before the idx that publishes them */
    __atomic_store_n((uint16_t *)((char *)r.used + 2), htole16(idx), __ATOMIC_RELEASE);
    q->used_idx = idx;
    return 0;
}

/* 2.7.10: true if new_idx has passed event_idx since old (wraps mod 2^16) */
static inline int vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

int vv_needs_notify(struct vv_queue *q)
{
    struct rings r;
    int rc;

    if (!q->enabled || q->broken)
        return 0;
    rc = map_rings(q, &r);
    if (rc) {
        q->broken = rc;
        return 0;
    }
    uint16_t old = q->signalled_used, now = q->used_idx;
    int valid = q->signalled_used_valid;
    if (valid && old == now)
        return 0;
    q->signalled_used = now;
    q->signalled_used_valid = 1;
    /* 2.7.7.2: flags / used_event are read after the used idx store is visible */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (q->event_idx) {
        uint16_t ev = load_u16((const char *)r.avail + 4 + 2 * (uint64_t)q->size,
                               __ATOMIC_RELAXED);
        return !valid || vring_need_event(ev, now, old);
    }
    return !(load_u16(r.avail, __ATOMIC_RELAXED) & VRING_AVAIL_F_NO_INTERRUPT);
}
