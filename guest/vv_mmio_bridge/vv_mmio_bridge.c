// SPDX-License-Identifier: GPL-2.0-only
/*
 * vv_mmio_bridge: hand a PCI function that carries a virtio-mmio (version 2) register block
 * in BAR0 to the stock virtio_mmio driver.
 *
 * vfio-virtio serves its devices as PCI functions over vfio-user. In mmio mode
 * (--transport mmio) the function has the PCI IDs 1af4:10f9 (QEMU's experimental range, which
 * virtio_pci does not drive) and BAR0 is the register layout of virtio 1.3 section 4.2.2.
 * This driver enables the function, takes one interrupt (MSI-X vector 0, else INTx) and
 * registers a platform device named "virtio-mmio" with BAR0 as its MEM resource and that
 * interrupt as its IRQ resource. virtio_mmio binds to it by name and the virtio device driver
 * (gpio-virtio) binds to the virtio device as on any virtio-mmio board.
 *
 * BAR0 is not requested here: virtio_mmio requests (and maps) it itself, as a child of the
 * PCI BAR resource. Power management: the PCI core saves/restores config space and moves the
 * function to D3hot and back around suspend (that needs dev_pm_ops, even empty ones);
 * virtio_mmio's own freeze/restore on the child does the virtio part.
 *
 * Part of vfio-virtio. Module parameter intx=1 skips MSI-X (tests INTx).
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/platform_device.h>
#include <linux/ioport.h>

#define VV_MMIO_PCI_VENDOR_ID	0x1af4
#define VV_MMIO_PCI_DEVICE_ID	0x10f9
#define VV_MMIO_MIN_LEN		0x100	/* registers up to Config (4.2.2) */

#ifndef PCI_IRQ_INTX
#define PCI_IRQ_INTX PCI_IRQ_LEGACY
#endif

static bool intx;
module_param(intx, bool, 0444);
MODULE_PARM_DESC(intx, "use INTx even when MSI-X is available");

struct vv_bridge {
	struct platform_device *child;
};

static int vv_bridge_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct resource res[2];
	struct platform_device_info info = {
		.parent = &pdev->dev,
		.name = "virtio-mmio",
		.id = PLATFORM_DEVID_AUTO,
		.res = res,
		.num_res = ARRAY_SIZE(res),
		.dma_mask = DMA_BIT_MASK(64),
	};
	struct vv_bridge *br;
	unsigned int flags = intx ? PCI_IRQ_INTX : (PCI_IRQ_MSIX | PCI_IRQ_INTX);
	int ret, irq;

	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < VV_MMIO_MIN_LEN) {
		dev_err(&pdev->dev, "BAR0 is not a memory BAR of at least %#x bytes\n",
			VV_MMIO_MIN_LEN);
		return -ENODEV;
	}
	br = devm_kzalloc(&pdev->dev, sizeof(*br), GFP_KERNEL);
	if (!br)
		return -ENOMEM;
	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	pci_set_master(pdev);			/* the device reads and writes the rings */
	ret = pci_alloc_irq_vectors(pdev, 1, 1, flags);
	if (ret < 0) {
		dev_err(&pdev->dev, "no interrupt: %d\n", ret);
		return ret;
	}
	irq = pci_irq_vector(pdev, 0);
	if (irq < 0) {
		ret = irq;
		goto err_irq;
	}

	memset(res, 0, sizeof(res));
	res[0].start = pci_resource_start(pdev, 0);
	res[0].end = pci_resource_end(pdev, 0);
	res[0].flags = IORESOURCE_MEM;
	res[0].name = pci_name(pdev);
	res[1].start = irq;
	res[1].end = irq;
	res[1].flags = IORESOURCE_IRQ;

	br->child = platform_device_register_full(&info);
	if (IS_ERR(br->child)) {
		ret = PTR_ERR(br->child);
		dev_err(&pdev->dev, "registering the virtio-mmio device failed: %d\n", ret);
		goto err_irq;
	}
	pci_set_drvdata(pdev, br);
	dev_info(&pdev->dev, "virtio-mmio at %pR irq %d (%s) -> %s\n", &res[0], irq,
		 pdev->msix_enabled ? "MSI-X" : "INTx", dev_name(&br->child->dev));
	return 0;

err_irq:
	pci_free_irq_vectors(pdev);
	return ret;
}

static void vv_bridge_remove(struct pci_dev *pdev)
{
	struct vv_bridge *br = pci_get_drvdata(pdev);

	platform_device_unregister(br->child);	/* virtio_mmio unbinds: frees its IRQ */
	pci_free_irq_vectors(pdev);
}

/* No-op callbacks: their presence makes the PCI core put the function into D3hot on
 * suspend and back to D0 on resume (without dev_pm_ops it would leave it in D0). */
static int vv_bridge_suspend(struct device *dev)
{
	return 0;
}

static int vv_bridge_resume(struct device *dev)
{
	return 0;
}

static DEFINE_SIMPLE_DEV_PM_OPS(vv_bridge_pm, vv_bridge_suspend, vv_bridge_resume);

static const struct pci_device_id vv_bridge_ids[] = {
	{ PCI_DEVICE(VV_MMIO_PCI_VENDOR_ID, VV_MMIO_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vv_bridge_ids);

static struct pci_driver vv_bridge_driver = {
	.name = "vv_mmio_bridge",
	.id_table = vv_bridge_ids,
	.probe = vv_bridge_probe,
	.remove = vv_bridge_remove,
	.driver.pm = pm_sleep_ptr(&vv_bridge_pm),
};
module_pci_driver(vv_bridge_driver);

MODULE_DESCRIPTION("vfio-virtio: virtio-mmio register block in a PCI BAR -> virtio-mmio platform device");
MODULE_LICENSE("GPL");
