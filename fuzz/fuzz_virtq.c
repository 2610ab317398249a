/* fuzz_virtq.c: libFuzzer harness for the split-ring fast path (cffi_build/csrc/virtq.c).
 *
 * Links virtq.c directly. Each input describes one hostile driver:
 *
 *   struct hdr (below)      queue config, ring addresses, DMA regions, index state
 *   ops[]                   2-byte operations run in order (pop / push / notify /
 *                           chain_at / guest memory scribble / avail idx jump)
 *   rest                    initial guest memory contents (repeated to fill it)
 *
 * Guest memory is a malloc'd buffer of the exact size, so ASan flags any access the ring
 * code makes outside it. The DMA regions map slices of it at fuzzer-chosen IOVAs with
 * fuzzer-chosen permissions (regions may alias the same bytes, as a hostile client can).
 * After every call the harness checks the contract of virtq.h and aborts on a breach:
 *   - every returned buffer lies wholly inside one DMA region with the needed permission
 *     (virtio 1.3 2.7.4: the device only touches what the driver exposed);
 *   - a malformed chain carries no buffers; lengths add up; head < size;
 *   - pop consumes exactly the chains it returns; a broken queue pops nothing, pushes nothing;
 *   - push with an id >= size writes nothing.
 * Build: scripts/fuzz.sh (clang-14 -fsanitize=fuzzer,address,undefined).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "virtq.h"

#define MAX_MEM      (256u * 1024u)
#define MAX_CHAINS   64
#define MAX_IOVS     VQ_MAX_SIZE
#define MAX_OPS      48

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_virtq: invariant failed at %s:%d: %s\n", __FILE__,  \
                    __LINE__, #cond);                                                 \
            abort();                                                                  \
        }                                                                             \
    } while (0)

struct hdr {
    uint8_t size_log2;      /* low 4 bits: log2 size; bit 7: use raw_size instead */
    uint8_t flags;          /* 1 event_idx, 2 indirect, 4 enabled, 8 signalled_used_valid */
    uint16_t raw_size;
    uint16_t last_avail_idx;
    uint16_t used_idx;
    uint16_t signalled_used;
    uint8_t nregions;       /* 1..4 */
    uint8_t nops;
    uint32_t mem_size;      /* clamped to 64 .. MAX_MEM */
    uint32_t desc_off, avail_off, used_off;   /* offsets from region 0's IOVA */
    struct {
        uint64_t iova;
        uint32_t off;       /* slice of guest memory backing this region */
        uint32_t len;
        uint8_t prot;
        uint8_t pad[7];
    } reg[4];
} __attribute__((packed));

static struct vv_iov iovs[MAX_IOVS];
static struct vv_chain chains[MAX_CHAINS];
static uint32_t ids[MAX_CHAINS + 1], lens[MAX_CHAINS + 1];

static uint8_t *g_mem;
static uint32_t g_mem_size;

/* [iova, iova+len) at host `addr` must lie wholly inside one region with `prot`, and inside
 * guest memory (virtio 1.3 2.7.4: the device touches only what the driver exposed). */
static void check_range(const struct vv_dma_table *t, uint64_t iova, uint64_t len,
                        uint32_t prot, uint64_t addr)
{
    int ok = 0;

    CHECK(len > 0);
    for (uint32_t i = 0; i < t->n && !ok; i++) {
        const struct vv_dma_region *r = &t->r[i];
        if (iova >= r->iova && iova - r->iova < r->len && len <= r->len - (iova - r->iova)
            && (r->prot & prot) == prot && addr == r->vaddr + (iova - r->iova))
            ok = 1;
    }
    CHECK(ok);
    uintptr_t lo = (uintptr_t)g_mem, a = (uintptr_t)addr;
    CHECK(a >= lo && a - lo <= g_mem_size && len <= g_mem_size - (a - lo));
}

static void check_iov(const struct vv_dma_table *t, const struct vv_iov *v)
{
    check_range(t, v->iova, v->len, v->writable ? VV_PROT_WRITE : VV_PROT_READ, v->addr);
}

static void check_chain(const struct vv_queue *q, const struct vv_chain *c, uint32_t iov_base,
                        uint32_t max_iovs)
{
    uint64_t r = 0, w = 0;

    CHECK(c->head < q->size);
    if (c->error) {
        CHECK(c->iov_count == 0 && c->readable_len == 0 && c->writable_len == 0);
        return;
    }
    CHECK(c->iov_start == iov_base);
    CHECK(c->iov_count <= q->size && (uint64_t)c->iov_start + c->iov_count <= max_iovs);
    int seen_write = 0;
    for (uint32_t i = 0; i < c->iov_count; i++) {
        const struct vv_iov *v = &iovs[c->iov_start + i];
        check_iov(q->dma, v);
        CHECK(!(seen_write && !v->writable));      /* 2.7.4.2 order */
        seen_write |= v->writable;
        if (v->writable)
            w += v->len;
        else
            r += v->len;
    }
    CHECK(r == c->readable_len && w == c->writable_len);
    CHECK(r + w <= UINT32_MAX);
}

/* The used ring must not change when a push is refused. */
static uint16_t read_used_idx(const struct vv_queue *q)
{
    const uint8_t *u = vv_dma_translate(q->dma, q->device_addr, 4, VV_PROT_WRITE);
    return u ? (uint16_t)(u[2] | u[3] << 8) : 0;
}

static void run_ops(struct vv_queue *q, const uint8_t *ops, uint32_t nops)
{
    uint32_t popped[MAX_CHAINS];
    uint32_t npopped = 0;

    for (uint32_t k = 0; k < nops; k++) {
        uint8_t op = ops[2 * k], arg = ops[2 * k + 1];
        switch (op % 7) {
        case 0: {   /* pop */
            uint32_t maxc = (arg % MAX_CHAINS) + 1;
            uint32_t maxi = (arg & 0x80) ? q->size : MAX_IOVS;
            if (arg == 0xFF)
                maxi = q->size ? q->size - 1 : 0;       /* too small: -EINVAL */
            int32_t was_broken = q->broken;
            uint16_t before = q->last_avail_idx;
            int n = vv_pop_batch(q, chains, maxc, iovs, maxi);
            if (n == -EINVAL) {
                CHECK(maxi < q->size);
                break;
            }
            CHECK(n >= 0 && (uint32_t)n <= maxc);
#ifdef FUZZ_DEBUG
            fprintf(stderr, "pop: n=%d broken=%d", n, q->broken);
            for (int i = 0; i < n; i++)
                fprintf(stderr, " [head %u err %d r %u w %u]", chains[i].head, chains[i].error,
                        chains[i].readable_len, chains[i].writable_len);
            fprintf(stderr, "\n");
#endif
            CHECK((uint16_t)(q->last_avail_idx - before) == (uint16_t)n);
            if (was_broken || !q->enabled)
                CHECK(n == 0);
            uint32_t base = 0;
            for (int i = 0; i < n; i++) {
                check_chain(q, &chains[i], base, maxi);
                base += chains[i].iov_count;
                if (npopped < MAX_CHAINS)
                    popped[npopped++] = chains[i].head;
            }
            break;
        }
        case 1: {   /* push what was popped (arg: how many, written length) */
            uint32_t n = npopped < (uint32_t)(arg % 8) ? npopped : (uint32_t)(arg % 8);
            for (uint32_t i = 0; i < n; i++) {
                ids[i] = popped[i];
                lens[i] = (uint32_t)arg * 3u;
            }
            int32_t was_broken = q->broken;
            uint16_t before = q->used_idx;
            int rc = vv_push_batch(q, ids, lens, n);
            if (was_broken || !q->enabled)
                CHECK(rc == -EIO);
            if (rc == 0)
                CHECK((uint16_t)(q->used_idx - before) == n && read_used_idx(q) == q->used_idx);
            else
                CHECK(q->used_idx == before);
            memmove(popped, popped + n, (npopped - n) * sizeof(popped[0]));
            npopped -= n;
            break;
        }
        case 2: {   /* push an arbitrary (possibly out of range) id */
            ids[0] = (uint32_t)arg << (arg & 7);
            lens[0] = 0xFFFFFFFFu;
            uint16_t before = q->used_idx;
            uint16_t ring_before = read_used_idx(q);
            int rc = vv_push_batch(q, ids, lens, 1);
            if (ids[0] >= q->size) {
                CHECK(rc == -EINVAL || rc == -EIO);
                CHECK(q->used_idx == before && read_used_idx(q) == ring_before);
            }
            break;
        }
        case 3: {   /* notify decision */
            int rc = vv_needs_notify(q);
            CHECK(rc == 0 || rc == 1);
            break;
        }
        case 4: {   /* chain_at */
            uint32_t head = (uint32_t)arg * (arg & 1 ? 257u : 1u);
            struct vv_chain c;
            int rc = vv_chain_at(q, head, &c, iovs, MAX_IOVS);
            CHECK(rc == 0 || rc == -EINVAL || rc == -EFAULT);
            if (rc == 0) {
                CHECK(head < q->size);
                check_chain(q, &c, 0, MAX_IOVS);
            }
            break;
        }
        case 5: {   /* the driver scribbles on guest memory (racing writes) */
            uint32_t off = ((uint32_t)arg * 2654435761u) % g_mem_size;
            g_mem[off] ^= (uint8_t)(arg | 1);
            break;
        }
        case 6: {   /* the driver moves avail idx (can race ahead of size) */
            uint8_t *a = vv_dma_translate(q->dma, q->driver_addr, 4, VV_PROT_READ);
            if (a) {
                uint16_t idx = (uint16_t)(q->last_avail_idx + arg);
                a[2] = (uint8_t)idx;
                a[3] = (uint8_t)(idx >> 8);
            }
            break;
        }
        }
    }
}

/* Plain translate contract: NULL, or a pointer inside one matching region. */
static int overlaps(const struct vv_dma_table *t, uint64_t iova, uint64_t len)
{
    for (uint32_t k = 0; k < t->n; k++)
        if (iova <= t->r[k].iova + t->r[k].len - 1 && t->r[k].iova <= iova + len - 1)
            return 1;                        /* inclusive ends: no wrap at 2^64 */
    return 0;
}

static void fuzz_translate(const struct vv_dma_table *t, const struct hdr *h)
{
    for (int i = 0; i < 4; i++) {
        uint64_t iova = h->reg[i].iova + h->desc_off;
        uint64_t len = h->reg[(i + 1) & 3].len | (uint64_t)(h->reg[(i + 2) & 3].off & 1) << 63;
        for (uint32_t prot = 0; prot <= 3; prot++) {
            void *p = vv_dma_translate(t, iova, len, prot);
            if (p)
                check_range(t, iova, len, prot, (uint64_t)(uintptr_t)p);
            p = vv_dma_translate(t, iova, h->avail_off, prot);
            if (p)
                check_range(t, iova, h->avail_off, prot, (uint64_t)(uintptr_t)p);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hdr h;
    struct vv_dma_table table;
    struct vv_queue q;

    if (size < sizeof(h))
        return 0;
    memcpy(&h, data, sizeof(h));
    data += sizeof(h);
    size -= sizeof(h);

    uint32_t nops = h.nops % (MAX_OPS + 1);
    if (size < 2 * (size_t)nops)
        nops = (uint32_t)(size / 2);
    const uint8_t *ops = data;
    data += 2 * nops;
    size -= 2 * nops;

    g_mem_size = 64 + h.mem_size % (MAX_MEM - 63);
    g_mem = malloc(g_mem_size);
    if (!g_mem)
        return 0;
    if (size) {
        for (uint32_t off = 0; off < g_mem_size; off += (uint32_t)size)
            memcpy(g_mem + off, data, g_mem_size - off < size ? g_mem_size - off : size);
    } else {
        memset(g_mem, 0, g_mem_size);
    }

    memset(&table, 0, sizeof(table));
    uint32_t nreg = 1 + h.nregions % 4;
    for (uint32_t i = 0; i < nreg; i++) {
        uint32_t off = h.reg[i].off % g_mem_size;
        uint32_t len = h.reg[i].len % (g_mem_size - off + 1);
        if (i == 0) {              /* region 0: all of guest memory, the usual case */
            off = 0;
            len = g_mem_size;
        }
        if (len == 0)
            continue;
        uint64_t iova = i == 0 ? (h.reg[0].iova & ~0xFFFull) : h.reg[i].iova;
        /* The table is the device's own state, filled by DmaTable.add, which refuses a region
         * that wraps or overlaps one already mapped (EEXIST), as libvfio-user does. Build only
         * tables it could hold: with overlapping IOVAs two translations of one address could
         * name different memory, which no real table allows. */
        if (iova + len - 1 < iova || overlaps(&table, iova, len))
            continue;
        struct vv_dma_region *r = &table.r[table.n++];
        r->iova = iova;
        r->len = len;
        r->vaddr = (uint64_t)(uintptr_t)(g_mem + off);
        r->prot = h.reg[i].prot & 3;
        if (i == 0)
            r->prot |= h.reg[0].prot & 4 ? 0 : 3;
    }
    fuzz_translate(&table, &h);

    memset(&q, 0, sizeof(q));
    q.dma = &table;
    uint64_t base = table.r[0].iova;
    q.desc_addr = base + h.desc_off;
    q.driver_addr = base + h.avail_off;
    q.device_addr = base + h.used_off;
    q.size = (h.size_log2 & 0x80) ? h.raw_size : 1u << (h.size_log2 & 15);
    q.last_avail_idx = h.last_avail_idx;
    q.used_idx = h.used_idx;
    q.signalled_used = h.signalled_used;
    q.signalled_used_valid = (h.flags & 8) != 0;
    q.event_idx = (h.flags & 1) != 0;
    q.indirect = (h.flags & 2) != 0;
    q.enabled = (h.flags & 4) == 0;        /* enabled unless the bit says otherwise */
    if (q.enabled)
        q.broken = vv_queue_check(&q);

    if (nops == 0) {   /* default: pop everything, push it back, decide notify */
        static const uint8_t dflt[] = { 0, 0x3F, 1, 7, 3, 0, 0, 0x3F, 1, 7, 3, 0, 4, 1 };
        run_ops(&q, dflt, sizeof(dflt) / 2);
    } else {
        run_ops(&q, ops, nops);
    }
    free(g_mem);
    g_mem = NULL;
    return 0;
}
