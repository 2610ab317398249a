"""cffi binding to libvfio-user: context lifecycle, regions, capabilities, IRQs, DMA."""
from .context import Context, RegionHandler  # noqa: F401
