"""vfio-virtio: userspace virtio devices served over vfio-user."""
__version__ = "0.1.0"
