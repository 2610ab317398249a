/* fastpath.c: BAR0 hot registers and the virtio-gpio requestq in C. See fastpath.h.
 * The Python twin of each decision: vfio_virtio/virtio/pci_transport.py (registers,
 * interrupts), vfio_virtio/virtio/core.py (running, interrupt_queue), gpio/device.py
 * (queue_notify), gpio/controller.py (the request rules, via gpio_lines.c). */
#include <string.h>
#include "fastpath.h"

static uint16_t cfg16(const struct vv_fast *f, uint32_t off)
{
    return (uint16_t)(f->cfg[off] | f->cfg[off + 1] << 8);
}

static int msix_enabled(const struct vv_fast *f)
{
    return f->msix_cap && (cfg16(f, f->msix_cap + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_ENABLE);
}

/* pci_transport.queue_interrupt + PciFunction.trigger_msix/trigger_intx. */
static void queue_interrupt(struct vv_fast *f)
{
    if (!f->decodes_bars)
        return;
    if (f->cfg != NULL && msix_enabled(f)) {
        uint16_t vec = f->req_vector;
        if (vec == VIRTIO_MSI_NO_VECTOR || vec >= f->msix_vectors)
            return;
        if (f->trigger != NULL && f->trigger(f->ctx, vec) == 0)
            f->c_irqs++;
        return;
    }
    f->isr |= VIRTIO_PCI_ISR_QUEUE;
    if (f->cfg == NULL || cfg16(f, PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE)
        return;
    if (f->trigger != NULL && f->trigger(f->ctx, 0) == 0)
        f->c_irqs++;
}

/* Gather exactly VIRTIO_GPIO_REQUEST_SIZE readable bytes (when the chain has that many). */
static void gather(const struct vv_iov *iov, uint32_t n, uint8_t *out, uint32_t want)
{
    for (uint32_t i = 0; i < n && want; i++) {
        if (iov[i].writable)
            break;
        uint32_t k = iov[i].len < want ? iov[i].len : want;
        memcpy(out, (const void *)(uintptr_t)iov[i].addr, k);
        out += k;
        want -= k;
    }
}

static uint32_t scatter(const struct vv_iov *iov, uint32_t n, const uint8_t *data,
                        uint32_t len)
{
    uint32_t done = 0;

    for (uint32_t i = 0; i < n && done < len; i++) {
        if (!iov[i].writable)
            continue;
        uint32_t k = iov[i].len < len - done ? iov[i].len : len - done;
        memcpy((void *)(uintptr_t)iov[i].addr, data + done, k);
        done += k;
    }
    return done;
}

int vv_fast_requestq(struct vv_fast *f)
{
    struct vv_queue *q = f->reqq;
    struct vv_chain chains[VV_FAST_BATCH];
    uint32_t ids[VV_FAST_BATCH], lens[VV_FAST_BATCH];

    if (f->npend)
        return 1;                          /* Python has not taken the last ones yet */
    for (;;) {
        uint32_t ndone = 0;
        int n = vv_pop_batch(q, chains, VV_FAST_BATCH, f->iovs, f->max_iovs);

        if (n < 0)
            return 1;
        for (int i = 0; i < n; i++) {
            const struct vv_chain *c = &chains[i];
            uint8_t req[VIRTIO_GPIO_REQUEST_SIZE] = {0}, resp[2];
            int r;

            if (c->error) {                /* nothing written into an unvalidated chain */
                f->c_malformed++;
                f->gpio->requests++;
                f->gpio->errors++;
                ids[ndone] = c->head;
                lens[ndone++] = 0;
                continue;
            }
            if (c->readable_len == VIRTIO_GPIO_REQUEST_SIZE)
                gather(&f->iovs[c->iov_start], c->iov_count, req, sizeof(req));
            r = vv_gpio_handle(f->gpio, req, c->readable_len, c->writable_len, resp);
            if (r == VV_GPIO_PYTHON) {     /* this one and the rest, in order, to Python */
                for (int j = i; j < n; j++)
                    f->pend_heads[f->npend++] = chains[j].head;
                break;
            }
            f->gpio->requests++;
            if (r < 1 || resp[0] != VIRTIO_GPIO_STATUS_OK)
                f->gpio->errors++;
            ids[ndone] = c->head;
            lens[ndone++] = scatter(&f->iovs[c->iov_start], c->iov_count, resp, (uint32_t)r);
        }
        f->c_chains += ndone;
        if (ndone)
            vv_push_batch(q, ids, lens, ndone);
        if (q->broken)
            return 1;                      /* DEVICE_NEEDS_RESET is decided in Python */
        if (ndone && f->running && vv_needs_notify(q))
            queue_interrupt(f);
        if (f->npend)
            return 1;
        if (n < VV_FAST_BATCH)
            return 0;
    }
}

/* PciFunction.reassert_intx: a vfio client deasserts INTx at every BAR access, so after one
 * served here, signal INTx again while an interrupt is still pending (ISR set, INTx mode). */
static void reassert_intx(struct vv_fast *f)
{
    if (!f->isr || !f->decodes_bars || f->cfg == NULL || msix_enabled(f)
        || cfg16(f, PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE || f->trigger == NULL)
        return;
    f->trigger(f->ctx, 0);
}

static long access_here(struct vv_fast *f, char *buf, unsigned long count, long long off,
                        int is_write);

long vv_fast_access(struct vv_fast *f, char *buf, unsigned long count, long long off,
                    int is_write)
{
    long r = access_here(f, buf, count, off, is_write);

    if (r != VV_FAST_PYTHON)
        reassert_intx(f);
    return r;
}

static long access_here(struct vv_fast *f, char *buf, unsigned long count, long long off,
                        int is_write)
{
    if (count == 0 || count > 8 || off < 0)
        return VV_FAST_PYTHON;
    if (!f->decodes_bars) {                /* D3hot: PCI PM 1.2, 5.3 */
        if (!is_write)
            memset(buf, 0xff, count);
        return (long)count;
    }
    if (f->slow)
        return VV_FAST_PYTHON;
    if (!is_write) {
        if (off + (long long)count <= VV_FAST_COMMON_OFF + VV_FAST_COMMON_LEN) {
            memcpy(buf, f->common + off, count);
            f->c_reads++;
            return (long)count;
        }
        if (off == VV_FAST_ISR_OFF) {      /* read-to-clear (4.1.4.5) */
            memset(buf, 0, count);
            buf[0] = (char)f->isr;
            f->isr = 0;
            f->c_reads++;
            return (long)count;
        }
        return VV_FAST_PYTHON;
    }
    if (off >= VV_FAST_NOTIFY_OFF && off < VV_FAST_NOTIFY_OFF + VV_FAST_SLOT
        && (off - VV_FAST_NOTIFY_OFF) / VV_FAST_NOTIFY_MULT == 0 && f->serve_requestq
        && f->running && f->reqq != NULL && f->reqq->enabled && !f->reqq->broken) {
        f->c_kicks++;
        if (vv_fast_requestq(f) == 0)
            return (long)count;
    }
    return VV_FAST_PYTHON;
}
