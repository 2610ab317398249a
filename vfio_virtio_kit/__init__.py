"""The development kit of vfio-virtio: NOT part of the runtime package (not in the wheel).

What tests, benchmarks and the demo drive the device with, from the driver's side:

* a vfio-user client written from the protocol spec (``vfio_user``, ``vfio_user_msgs``,
  ``vfio_user_spec``) and an in-process stand-in for it (``inproc``);
* driver-side virtio: guest memory (``guestmem``), split rings (``driver_ring``), virtio-pci and
  virtio-mmio drivers (``virtio_pci``, ``virtio_mmio``), a virtio-gpio driver (``gpio_driver``);
* the real-guest fixture: QEMU machine, QMP, console, guest assets, PM helpers (``machine``,
  ``qmp``, ``console``, ``assets``, ``guest_pm``), the server process (``server_proc``) and
  the ``rig`` that ties them together; the ``demo`` (``make demo``).

It is imported from the repository (tests, ``python -m benchmarks...``,
``python -m vfio_virtio_kit.demo``); users who drive lines from Python use the runtime client
``vfio_virtio.client`` instead (docs/CONTROL.md).
"""
