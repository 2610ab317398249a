/* gpio_lines.c: virtio-gpio requestq rules over the C line table. See gpio_lines.h.
 * Any change to a rule here must be made in vfio_virtio/gpio/controller.py too (and the
 * other way round): tests/unit/test_gpio_differential.py compares the two. */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/gpio.h>
#include "gpio_lines.h"

_Static_assert(sizeof(struct gpio_v2_line_values) == 16, "uAPI v2 gpio_v2_line_values");

void vv_gpio_mark_changed(struct vv_gpio *g, uint32_t line)
{
    struct vv_gpio_line *l = &g->lines[line];

    if (l->changed)
        return;
    l->changed = 1;
    if (g->nchanged < g->ngpio)
        g->changed_list[g->nchanged++] = line;
    if (g->nchanged == 1 && g->notify_fd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(g->notify_fd, &one, sizeof(one));
        (void)r;                   /* EAGAIN: the counter is already non-zero */
    }
}

/* Set the direction the way SimBackend.set_direction does (value: driven for OUT). */
static void set_direction(struct vv_gpio *g, uint32_t gpio, uint8_t dir)
{
    struct vv_gpio_line *l = &g->lines[gpio];
    uint8_t bdir = l->direction, bval = vv_gpio_visible(l);

    l->direction = dir;
    if (bdir != dir || bval != vv_gpio_visible(l))
        vv_gpio_mark_changed(g, gpio);
}

/* Bit `bit` of a request's gpio_v2_line_values; 0 for a bit no request has. */
static uint64_t bit_mask(uint32_t bit)
{
    return bit < GPIO_V2_LINES_MAX ? 1ULL << bit : 0;
}

/* One uAPI v2 values ioctl on a line request fd, retried on EINTR. 0 or -errno. */
static int chip_ioctl(int fd, unsigned long req, struct gpio_v2_line_values *v)
{
    if (v->mask == 0)
        return -EINVAL;                     /* a bit outside a request: never from Python */
    for (;;) {
        if (ioctl(fd, req, v) == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* The chip's level of a line (chip mode): 0/1, or -errno (nothing changed). */
static int chip_get(const struct vv_gpio *g, uint32_t gpio)
{
    const struct vv_gpio_chipline *c = &g->chip[gpio];
    struct gpio_v2_line_values v = { .bits = 0, .mask = bit_mask(c->bit) };
    int r = chip_ioctl(c->fd, GPIO_V2_LINE_GET_VALUES_IOCTL, &v);

    return r < 0 ? r : (v.bits & v.mask) != 0;
}

/* Drive an output line of the chip (chip mode): 0 or -errno. */
static int chip_set(const struct vv_gpio *g, uint32_t gpio, uint32_t value)
{
    const struct vv_gpio_chipline *c = &g->chip[gpio];
    struct gpio_v2_line_values v = { .bits = value ? bit_mask(c->bit) : 0,
                                     .mask = bit_mask(c->bit) };

    return chip_ioctl(c->fd, GPIO_V2_LINE_SET_VALUES_IOCTL, &v);
}

static int err(uint32_t resp_cap, uint8_t *resp)
{
    uint32_t n = resp_cap < 2 ? resp_cap : 2;

    resp[0] = VIRTIO_GPIO_STATUS_ERR;
    resp[1] = 0;
    return (int)n;
}

static int ok(uint8_t *resp, uint8_t value)
{
    resp[0] = VIRTIO_GPIO_STATUS_OK;
    resp[1] = value;
    return 2;
}

int vv_gpio_handle(struct vv_gpio *g, const uint8_t *req, uint32_t req_len,
                   uint32_t resp_cap, uint8_t *resp)
{
    uint16_t type, gpio;
    uint32_t value;
    struct vv_gpio_line *l;

    if (g->mode == VV_GPIO_MODE_PYTHON)
        return VV_GPIO_PYTHON;
    if (req_len != VIRTIO_GPIO_REQUEST_SIZE)
        return err(resp_cap, resp);
    memcpy(&type, req, 2);
    memcpy(&gpio, req + 2, 2);
    memcpy(&value, req + 4, 4);
    type = le16toh(type);
    gpio = le16toh(gpio);
    value = le32toh(value);
    if (type == VIRTIO_GPIO_MSG_GET_LINE_NAMES) {
        if (g->names_size == 0 || resp_cap != 1 + g->names_size)
            return err(resp_cap, resp);
        return VV_GPIO_PYTHON;
    }
    if (resp_cap != VIRTIO_GPIO_RESPONSE_SIZE || gpio >= g->ngpio)
        return err(resp_cap, resp);
    l = &g->lines[gpio];
    switch (type) {
    case VIRTIO_GPIO_MSG_GET_DIRECTION:
        return ok(resp, l->direction);
    case VIRTIO_GPIO_MSG_SET_DIRECTION:
        if (value != VIRTIO_GPIO_DIRECTION_NONE && value != VIRTIO_GPIO_DIRECTION_OUT
            && value != VIRTIO_GPIO_DIRECTION_IN)
            return err(resp_cap, resp);
        if (g->mode == VV_GPIO_MODE_CHIP)
            return VV_GPIO_PYTHON;          /* reconfigures the line request */
        if (value == VIRTIO_GPIO_DIRECTION_NONE) {
            if (l->irq_type != VIRTIO_GPIO_IRQ_TYPE_NONE)
                return VV_GPIO_PYTHON;      /* disables the irq: a held buffer completes */
            l->latched = 0;
            set_direction(g, gpio, VIRTIO_GPIO_DIRECTION_NONE);
            l->value = 0;                   /* NONE discards the line's state (5.17.6) */
            return ok(resp, 0);
        }
        if (value == VIRTIO_GPIO_DIRECTION_OUT && l->irq_type != VIRTIO_GPIO_IRQ_TYPE_NONE)
            return err(resp_cap, resp);     /* an output cannot interrupt */
        set_direction(g, gpio, (uint8_t)value);
        return ok(resp, 0);
    case VIRTIO_GPIO_MSG_GET_VALUE:
        if (g->mode == VV_GPIO_MODE_CHIP && l->direction != VIRTIO_GPIO_DIRECTION_OUT) {
            int level = chip_get(g, gpio);

            return level < 0 ? VV_GPIO_PYTHON : ok(resp, (uint8_t)level);
        }
        return ok(resp, vv_gpio_visible(l) ? 1 : 0);
    case VIRTIO_GPIO_MSG_SET_VALUE:
        if (value > 1)
            return err(resp_cap, resp);
        if (g->mode == VV_GPIO_MODE_CHIP && l->direction == VIRTIO_GPIO_DIRECTION_OUT
            && chip_set(g, gpio, value) < 0)
            return VV_GPIO_PYTHON;          /* nothing changed; Python answers (ERR) */
        if (l->direction == VIRTIO_GPIO_DIRECTION_OUT && l->value != value) {
            l->value = (uint8_t)value;
            vv_gpio_mark_changed(g, gpio);
        }
        l->value = (uint8_t)value;          /* kept for a later SET_DIRECTION OUT (5.17.6.5) */
        return ok(resp, 0);
    case VIRTIO_GPIO_MSG_SET_IRQ_TYPE:
        return VV_GPIO_PYTHON;
    default:
        return err(resp_cap, resp);
    }
}
