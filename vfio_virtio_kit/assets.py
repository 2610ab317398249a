"""Where the hardware-in-loop assets live (built by ``make setup``).

``scripts/setup_qemu.sh`` puts a wrapper for Debian sid's QEMU (with ``vfio-user-pci``) at
``$VV_CACHE/qemu/current/qemu-system-x86_64``; ``scripts/setup_guest.sh`` puts the guest
kernel, initramfs and the out-of-tree ``gpio-virtio.ko`` under ``$VV_CACHE/guest/current``;
``scripts/setup_libvfio_user.sh`` builds libvfio-user and its samples under
``$VV_CACHE/libvfio-user/current``. ``VV_CACHE`` defaults to ``~/.cache/vfio-virtio`` (the
same rule as ``scripts/common.sh``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AssetsMissing", "GuestAssets", "cache_dir", "find_assets", "libvfio_user_sample"]


class AssetsMissing(RuntimeError):
    """A setup product is absent: the message says which and how to build it."""


def cache_dir() -> Path:
    """The setup cache: ``$VV_CACHE``, else ``$XDG_CACHE_HOME/vfio-virtio``, else ``~/.cache/vfio-virtio``."""
    env = os.environ.get("VV_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg if xdg else Path.home() / ".cache") / "vfio-virtio"


@dataclass(frozen=True)
class GuestAssets:
    """Paths of everything a :class:`~vfio_virtio_kit.machine.GuestMachine` boots."""

    qemu: Path            # wrapper script running the private QEMU
    qemu_version: str     # Debian version of qemu-system-x86
    kernel: Path          # vmlinuz
    initrd: Path          # initramfs.cpio.gz (busybox, gpiod tools, modules, guest/init)
    kernel_release: str   # e.g. "6.12.117+deb12-amd64"
    kernel_config: Path   # the kernel's .config
    gpio_virtio_ko: Path  # out-of-tree gpio-virtio.ko (also inside the initramfs)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise AssetsMissing(f"guest assets missing: run make setup ({what} not found: {path})")
    return path


def find_assets(cache: Path | None = None) -> GuestAssets:
    """Locate the QEMU and guest assets; raise :class:`AssetsMissing` if any is absent."""
    base = cache if cache is not None else cache_dir()
    qdir = base / "qemu" / "current"
    gdir = base / "guest" / "current"
    _need(qdir / ".complete", "QEMU root (scripts/setup_qemu.sh)")
    _need(gdir / ".complete", "guest image (scripts/setup_guest.sh)")
    return GuestAssets(
        qemu=_need(qdir / "qemu-system-x86_64", "QEMU wrapper"),
        qemu_version=(qdir / "version").read_text().strip() if (qdir / "version").exists() else "?",
        kernel=_need(gdir / "vmlinuz", "guest kernel"),
        initrd=_need(gdir / "initramfs.cpio.gz", "guest initramfs"),
        kernel_release=_need(gdir / "release", "kernel release").read_text().strip(),
        kernel_config=_need(gdir / "config", "kernel config"),
        gpio_virtio_ko=_need(gdir / "gpio-virtio.ko", "gpio-virtio.ko"),
    )


def libvfio_user_sample(name: str = "gpio-pci-idio-16", cache: Path | None = None) -> Path:
    """Path of a libvfio-user sample server binary built by setup_libvfio_user.sh."""
    base = (cache if cache is not None else cache_dir()) / "libvfio-user" / "current"
    for cand in (base / "build" / "samples" / name, base / "prefix" / name):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    raise AssetsMissing(f"guest assets missing: run make setup (libvfio-user sample {name} not under {base})")
