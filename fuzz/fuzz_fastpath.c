/* fuzz_fastpath.c: libFuzzer harness for the C request path (cffi_build/csrc/fastpath.c,
 * gpio_lines.c, over virtq.c): a hostile driver's BAR0 accesses and requestq contents.
 *
 * Input: struct hdr (queue size and ring offsets, line count, gating and MSI-X state), then
 * ops[] (8 bytes each: a BAR0 access at any offset/size, a guest memory scribble, a line
 * table poke as the host side would make, or Python taking the chains C left), then the
 * initial guest memory (one RW region at IOVA 0x1000, repeated to fill it; malloc'd at its
 * exact size, so ASan flags any access outside).
 * Invariants checked after every op (abort on breach):
 *   - vv_fast_access returns the byte count or VV_FAST_PYTHON, nothing else;
 *   - in D3hot (decodes_bars 0) a read returns all ones and nothing is served or triggered;
 *   - interrupts: only with the queue running, vector < msix_vectors (MSI-X) or 0 (INTx);
 *   - pend_heads: at most one batch, every head < queue size;
 *   - chip mode (line request fds that fail, as a removed chip's) and Python mode: the
 *     requests C hands over change nothing;
 *   - the line table stays valid: direction NONE/OUT/IN, value and input 0/1, irq types
 *     untouched by C, changed_list entries < ngpio and listed once.
 * Build: scripts/fuzz.sh (clang-14 -fsanitize=fuzzer,address,undefined).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastpath.h"

#define MAX_MEM   (128u * 1024u)
#define MAX_LINES 64
#define MAX_OPS   64
#define IOVA      0x1000u

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_fastpath: invariant failed at %s:%d: %s\n",         \
                    __FILE__, __LINE__, #cond);                                       \
            abort();                                                                  \
        }                                                                             \
    } while (0)

struct hdr {
    uint8_t size_log2;     /* queue size 1 << (v % 9) */
    uint8_t flags;         /* 1 event_idx, 2 indirect, 4 decodes, 8 running, 16 slow,
                              32 msix enabled, 64 intx disabled, 128 serve_requestq */
    uint8_t ngpio;         /* 1..MAX_LINES; 128: chip mode (fds fail), 64: Python mode */
    uint8_t nops;
    uint16_t req_vector;
    uint16_t msix_vectors; /* 1..128 */
    uint32_t mem_size;
    uint32_t desc_off, avail_off, used_off;
    uint32_t names_size;
};

struct op {
    uint8_t kind;
    uint8_t count;
    uint16_t off;
    uint32_t data;
};

static int ntrig, bad_trig;
static uint16_t g_msix_vectors;
static uint8_t g_cfg[256];

static int trigger(void *ctx, uint32_t vector)
{
    (void)ctx;
    ntrig++;
    if ((g_cfg[0x42] & 0x80) ? vector >= g_msix_vectors : vector != 0)
        bad_trig = 1;
    return 0;
}

static void check_table(const struct vv_gpio *g, const uint8_t *irq_before)
{
    CHECK(g->nchanged <= g->ngpio);
    for (uint32_t i = 0; i < g->ngpio; i++) {
        const struct vv_gpio_line *l = &g->lines[i];
        CHECK(l->direction <= 2 && l->value <= 1 && l->input <= 1);
        CHECK(l->irq_type == irq_before[i]);
        if (g->mode != VV_GPIO_MODE_SIM)     /* SET_DIRECTION is Python's there */
            CHECK(l->direction == VIRTIO_GPIO_DIRECTION_IN);
        if (g->mode == VV_GPIO_MODE_PYTHON)  /* C executes nothing */
            CHECK(l->value == 0 && !l->changed);
    }
    for (uint32_t i = 0; i < g->nchanged; i++) {
        CHECK(g->changed_list[i] < g->ngpio);
        CHECK(g->lines[g->changed_list[i]].changed == 1);
        for (uint32_t j = 0; j < i; j++)
            CHECK(g->changed_list[j] != g->changed_list[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hdr h;
    struct vv_dma_table dma;
    struct vv_queue q;
    struct vv_gpio g;
    struct vv_gpio_line lines[MAX_LINES];
    uint32_t changed[MAX_LINES];
    struct vv_gpio_chipline chip[MAX_LINES];
    uint8_t irq_before[MAX_LINES];
    static struct vv_iov iovs[VQ_MAX_SIZE];
    struct vv_fast f;
    const struct op *ops;
    uint8_t *mem;
    size_t rest;

    if (size < sizeof(h))
        return 0;
    memcpy(&h, data, sizeof(h));
    data += sizeof(h);
    size -= sizeof(h);
    h.nops %= MAX_OPS + 1;
    if (size < h.nops * sizeof(struct op))
        return 0;
    ops = (const struct op *)data;
    data += h.nops * sizeof(struct op);
    size -= h.nops * sizeof(struct op);
    h.mem_size = 64 + h.mem_size % (MAX_MEM - 64);
    mem = malloc(h.mem_size);
    for (uint32_t i = 0; i < h.mem_size; i++)
        mem[i] = size ? data[i % size] : 0;
    rest = size;
    (void)rest;

    memset(&dma, 0, sizeof(dma));
    dma.n = 1;
    dma.r[0].iova = IOVA;
    dma.r[0].len = h.mem_size;
    dma.r[0].vaddr = (uint64_t)(uintptr_t)mem;
    dma.r[0].prot = VV_PROT_READ | VV_PROT_WRITE;
    memset(&q, 0, sizeof(q));
    q.dma = &dma;
    q.size = 1u << (h.size_log2 % 9);
    q.desc_addr = IOVA + h.desc_off % h.mem_size;
    q.driver_addr = IOVA + h.avail_off % h.mem_size;
    q.device_addr = IOVA + h.used_off % h.mem_size;
    q.event_idx = h.flags & 1;
    q.indirect = (h.flags >> 1) & 1;
    q.broken = vv_queue_check(&q);
    q.enabled = 1;

    memset(&g, 0, sizeof(g));
    memset(lines, 0, sizeof(lines));
    g.ngpio = 1 + h.ngpio % MAX_LINES;
    g.names_size = h.names_size % 4096;
    g.notify_fd = -1;
    g.lines = lines;
    g.changed_list = changed;
    if (h.ngpio & 0x80) {                    /* chip mode: ioctls on fd -1 fail (to Python) */
        for (uint32_t i = 0; i < MAX_LINES; i++) {
            chip[i].fd = -1;
            chip[i].bit = i * 3;             /* some outside any request (>= 64) */
        }
        g.chip = chip;
        g.mode = VV_GPIO_MODE_CHIP;
    } else if (h.ngpio & 0x40) {
        g.mode = VV_GPIO_MODE_PYTHON;
    }
    for (uint32_t i = 0; i < g.ngpio; i++) {
        lines[i].direction = VIRTIO_GPIO_DIRECTION_IN;
        lines[i].irq_type = (uint8_t)(i % 3 == 2 ? 1 : 0);   /* some lines with an irq */
        irq_before[i] = lines[i].irq_type;
    }

    memset(g_cfg, 0, sizeof(g_cfg));
    g_msix_vectors = (uint16_t)(1 + h.msix_vectors % 128);
    if (h.flags & 32)
        g_cfg[0x42] = 0x80;                  /* MSI-X Enable, capability at 0x40 */
    if (h.flags & 64)
        g_cfg[PCI_COMMAND + 1] = PCI_COMMAND_INTX_DISABLE >> 8;
    memset(&f, 0, sizeof(f));
    f.cfg = g_cfg;
    f.trigger = trigger;
    f.msix_cap = 0x40;
    f.msix_vectors = g_msix_vectors;
    f.req_vector = h.req_vector;
    f.decodes_bars = (h.flags >> 2) & 1;
    f.running = (h.flags >> 3) & 1;
    f.slow = (h.flags >> 4) & 1;
    f.serve_requestq = h.flags >> 7;
    f.reqq = &q;
    f.gpio = &g;
    f.iovs = iovs;
    f.max_iovs = VQ_MAX_SIZE;
    for (uint32_t i = 0; i < VV_FAST_COMMON_LEN; i++)
        f.common[i] = (uint8_t)i;
    ntrig = bad_trig = 0;

    for (uint32_t k = 0; k < h.nops; k++) {
        struct op o;
        char buf[16];
        int before = ntrig;

        memcpy(&o, &ops[k], sizeof(o));
        switch ((o.kind & 7) % 6) {
        case 0: case 1: case 2: {            /* BAR0 access */
            unsigned long cnt = o.count % 10;
            int w = (o.kind & 7) % 6 == 2 || (o.kind & 0x80);
            long long off = (long long)o.off | ((o.kind & 0x40) ? 0x3000 : 0);
            memcpy(buf, &o.data, 4);
            memset(buf + 4, 0x5a, sizeof(buf) - 4);
            long r = vv_fast_access(&f, buf, cnt, off, w);
            CHECK(r == VV_FAST_PYTHON || r == (long)cnt);
            if (!f.decodes_bars && cnt && cnt <= 8) {
                CHECK(r == (long)cnt);
                CHECK(ntrig == before);
                if (!w)
                    for (unsigned long i = 0; i < cnt; i++)
                        CHECK((uint8_t)buf[i] == 0xff);
            }
            if (ntrig != before)
                CHECK(f.running);
            break;
        }
        case 3:                              /* guest memory scribble */
            memcpy(mem + (o.data % h.mem_size) / 4 * 4 % (h.mem_size - 3), &o.data, 4);
            break;
        case 4: {                            /* host side: input level, direction */
            struct vv_gpio_line *l = &lines[o.off % g.ngpio];
            l->input = o.data & 1;
            break;
        }
        case 5:                              /* Python takes the chains C left */
            if (f.npend) {
                uint32_t lens[VV_FAST_BATCH] = {0};
                vv_push_batch(&q, f.pend_heads, lens, f.npend);
                f.npend = 0;
            }
            break;
        }
        CHECK(!bad_trig);
        CHECK(f.npend <= VV_FAST_BATCH);
        for (uint32_t i = 0; i < f.npend; i++)
            CHECK(f.pend_heads[i] < q.size);
        check_table(&g, irq_before);
        if (g.nchanged == g.ngpio || (o.data & 0x10000)) {   /* the host drains changes */
            for (uint32_t i = 0; i < g.nchanged; i++)
                lines[changed[i]].changed = 0;
            g.nchanged = 0;
        }
    }
    free(mem);
    return 0;
}
