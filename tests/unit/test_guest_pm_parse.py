"""Parsing of the kernel's pm_print_times lines (drivers/base/power/main.c,
initcall_debug_report: "<dev>: PM: <callback> returned <err> after <n> usecs")."""

from vfio_virtio_kit.guest_pm import device_pm_times

DMESG = """\
[    2.757200] pci-idio-16 0000:00:01.0: PM: calling pci_pm_suspend @ 179, parent: pci0000:00
[    2.757200] pci-idio-16 0000:00:01.0: PM: pci_pm_suspend returned 0 after 222 usecs
[    2.759978] pci-idio-16 0000:00:01.0: PM: pci_pm_suspend_noirq returned -16 after 595 usecs
[    2.760000] virtio-pci 0000:00:02.0: PM: pci_pm_resume_noirq+0x0/0x120 returned 0 after 7 usecs
rtc rtc0: PM: rtc_resume returned 0 after 1 usecs
[    2.770000] PM: noirq resume of devices complete after 2.520 msecs
"""


def test_per_device_callbacks_are_extracted() -> None:
    calls = device_pm_times(DMESG, "0000:00:01.0")
    assert [(c.driver, c.callback, c.error, c.usecs) for c in calls] == [
        ("pci-idio-16", "pci_pm_suspend", 0, 222),
        ("pci-idio-16", "pci_pm_suspend_noirq", -16, 595),
    ]


def test_symbol_offsets_and_untimestamped_lines() -> None:
    allc = device_pm_times(DMESG)
    assert [(c.device, c.callback) for c in allc][2:] == [
        ("0000:00:02.0", "pci_pm_resume_noirq"), ("rtc0", "rtc_resume")]
    assert device_pm_times(DMESG, "0000:00:09.0") == []
