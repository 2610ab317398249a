/* gpio_lines.h: the virtio-gpio line table and the requestq rules (virtio 1.3, 5.17.6), C.
 *
 * The C twin of vfio_virtio/gpio/controller.py (the Python reference; the differential test
 * tests/unit/test_gpio_differential.py requires identical responses and line states) for the
 * requests the fast path serves. The table also holds the sim backend's line state
 * (vfio_virtio/backends/sim.py reads and writes it through cffi): one copy of each line.
 *
 * Requests that need Python (GET_LINE_NAMES with names, SET_IRQ_TYPE, SET_DIRECTION NONE on
 * a line whose interrupt is enabled) are not executed: vv_gpio_handle returns VV_GPIO_PYTHON.
 *
 * Chip mode (the gpiod backend, vfio_virtio/backends/gpiod_backend.py): the table keeps the
 * protocol state, the host chip is the truth for a non-output line's level. GET_VALUE and
 * SET_VALUE drive the chip with GPIO_V2_LINE_GET_VALUES_IOCTL / GPIO_V2_LINE_SET_VALUES_IOCTL
 * (linux/gpio.h, uAPI v2) on the line request's fd; SET_DIRECTION reconfigures the request
 * and goes to Python, and so does a request whose ioctl fails (the Python backend repeats it
 * and answers ERR, noting a removed chip). Python mode: every request goes to Python (a
 * backend that is held, disowned or whose chip is gone).
 * Constants are the spec's names (mirrored in vfio_virtio/gpio/spec.py).
 */
#ifndef VV_GPIO_LINES_H
#define VV_GPIO_LINES_H

#include <stdint.h>

#define VIRTIO_GPIO_MSG_GET_LINE_NAMES 0x0001
#define VIRTIO_GPIO_MSG_GET_DIRECTION  0x0002
#define VIRTIO_GPIO_MSG_SET_DIRECTION  0x0003
#define VIRTIO_GPIO_MSG_GET_VALUE      0x0004
#define VIRTIO_GPIO_MSG_SET_VALUE      0x0005
#define VIRTIO_GPIO_MSG_SET_IRQ_TYPE   0x0006
#define VIRTIO_GPIO_STATUS_OK  0x0
#define VIRTIO_GPIO_STATUS_ERR 0x1
#define VIRTIO_GPIO_DIRECTION_NONE 0x00
#define VIRTIO_GPIO_DIRECTION_OUT  0x01
#define VIRTIO_GPIO_DIRECTION_IN   0x02
#define VIRTIO_GPIO_IRQ_TYPE_NONE  0x00
#define VIRTIO_GPIO_REQUEST_SIZE   8
#define VIRTIO_GPIO_RESPONSE_SIZE  2

#define VV_GPIO_PYTHON (-1)        /* vv_gpio_handle: this request needs the Python path */

/* One line. direction/value/irq_type/latched are the protocol state (controller.py _Line);
 * input and edge are the sim backend's (host-driven level, armed change detection:
 * 0 none, 1 rising, 2 falling, 3 both). value is the driven value of an output and the
 * pending value of any other line (5.17.6.5). changed: the line's visible state changed and
 * the host side has not been told yet (it is then listed in vv_gpio.changed_list). */
struct vv_gpio_line {
    uint8_t direction;
    uint8_t value;
    uint8_t irq_type;
    uint8_t latched;
    uint8_t input;
    uint8_t edge;
    uint8_t changed;
    uint8_t pad;
};

#define VV_GPIO_MODE_SIM    0     /* the line table is the lines (input: the sensed level) */
#define VV_GPIO_MODE_CHIP   1     /* lines of a host gpiochip: chip[] says where */
#define VV_GPIO_MODE_PYTHON 2     /* every request to Python */

/* Where a line lives in chip mode: its line request's fd and its bit in that request's
 * gpio_v2_line_values (the line's index in the request, not the chip offset). */
struct vv_gpio_chipline {
    int32_t fd;
    uint32_t bit;
};

/* The table. Python allocates lines[ngpio] and changed_list[ngpio] (and chip[ngpio]). */
struct vv_gpio {
    uint32_t ngpio;
    uint32_t names_size;       /* gpio_names_size; GET_LINE_NAMES is answered by Python */
    uint32_t nchanged;         /* entries in changed_list */
    int32_t notify_fd;         /* eventfd written when nchanged goes 0 -> 1; -1: none */
    uint64_t requests;         /* requests served here */
    uint64_t errors;           /* of which answered ERR */
    struct vv_gpio_line *lines;
    uint32_t *changed_list;
    uint32_t mode;             /* VV_GPIO_MODE_* */
    uint32_t pad;
    struct vv_gpio_chipline *chip;   /* chip mode: per line; NULL otherwise */
};

/* Execute one requestq message. req/req_len: the device-readable bytes (req_len is the
 * chain's whole readable length; only 8 is valid), resp_cap: the device-writable length.
 * Writes the response into resp[0..1] and returns its length (0..2): status ERR truncated to
 * what fits for a malformed message, exactly as controller.py answers. Returns
 * VV_GPIO_PYTHON, changing nothing, for a request only Python serves. Never fails otherwise. */
int vv_gpio_handle(struct vv_gpio *g, const uint8_t *req, uint32_t req_len,
                   uint32_t resp_cap, uint8_t *resp);

/* Visible value of a line: the driven value of an output, the sensed input otherwise. */
static inline uint8_t vv_gpio_visible(const struct vv_gpio_line *l)
{
    return l->direction == VIRTIO_GPIO_DIRECTION_OUT ? l->value : l->input;
}

/* Note that `line`'s visible state changed (listed once; the eventfd is written on the
 * first). */
void vv_gpio_mark_changed(struct vv_gpio *g, uint32_t line);

#endif
