"""What every driver-side virtio transport shares: feature negotiation (virtio 1.3, 3.1.1)."""
from __future__ import annotations

from vfio_virtio.virtio import spec as V


class VirtioDriverBase:
    """Subclasses provide reset(), add_status(), read_status(), device_features(),
    write_driver_features(), kick(), ``rings`` and ``error`` (the exception they raise)."""

    error: type[Exception] = RuntimeError
    features = 0

    def negotiate(self, wanted: int | None = None, reset: bool = True) -> int:
        """3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, read features, write the subset we
        accept (``wanted`` & offered; all offered if None), FEATURES_OK, and re-read status:
        if FEATURES_OK did not stick, set FAILED and raise ``self.error``."""
        if reset:
            self.reset()
        self.add_status(V.VIRTIO_CONFIG_S_ACKNOWLEDGE)
        self.add_status(V.VIRTIO_CONFIG_S_DRIVER)
        offered = self.device_features()
        accepted = offered if wanted is None else offered & wanted
        self.write_driver_features(accepted)
        self.add_status(V.VIRTIO_CONFIG_S_FEATURES_OK)
        if not self.read_status() & V.VIRTIO_CONFIG_S_FEATURES_OK:
            self.add_status(V.VIRTIO_CONFIG_S_FAILED)
            raise self.error(f"device refused features {accepted:#x}")
        self.features = accepted
        return accepted

    def driver_ok(self) -> None:
        """3.1.1 step 8: set DRIVER_OK."""
        self.add_status(V.VIRTIO_CONFIG_S_DRIVER_OK)

    def has(self, bit: int) -> bool:
        """True if feature ``bit`` was negotiated."""
        return bool(self.features >> bit & 1)

    def kick_if_needed(self, queue: int) -> bool:
        """Kick only when the ring's notification suppression allows (2.7.10)."""
        if self.rings[queue].kick_needed():
            self.kick(queue)
            return True
        return False
