"""The PCI function as a vfio-user client (QEMU) sees it: config space, capabilities, PM."""
from __future__ import annotations

import os
import stat
import struct


from vfio_virtio.pci import spec as P
from vfio_virtio_kit.vfio_user import VfioUserClient
from vfio_virtio.virtio import spec as V

CFG = 7


def caps(c: VfioUserClient) -> list[tuple[int, int]]:
    """Walk the standard capability list: [(offset, id)], bounded against loops."""
    out, ptr, seen = [], c.cfg_read8(P.PCI_CAPABILITY_LIST), set()
    while ptr and ptr not in seen and len(out) < 48:
        seen.add(ptr)
        out.append((ptr, c.cfg_read8(ptr)))
        ptr = c.cfg_read8(ptr + 1)
    return out


def pm_offset(c: VfioUserClient) -> int:
    return next(off for off, cid in caps(c) if cid == P.PCI_CAP_ID_PM)


def test_config_header_identifies_modern_virtio_gpio(client):
    """virtio 1.3 4.1.2: 1af4:(0x1040+41), revision >= 1, subsystem id >= 0x40."""
    assert client.cfg_read16(P.PCI_VENDOR_ID) == 0x1AF4
    assert client.cfg_read16(P.PCI_DEVICE_ID) == 0x1069
    assert client.cfg_read8(P.PCI_REVISION_ID) >= 1
    assert client.cfg_read16(P.PCI_SUBSYSTEM_VENDOR_ID) == 0x1AF4
    assert client.cfg_read16(P.PCI_SUBSYSTEM_ID) >= 0x40
    assert client.cfg_read(P.PCI_CLASS_PROG, 3) == bytes([0x00, 0x80, 0x08])
    assert client.cfg_read16(P.PCI_STATUS) & P.PCI_STATUS_CAP_LIST
    assert client.cfg_read8(P.PCI_INTERRUPT_PIN) == 1


def test_capability_list_has_pm_msix_express_and_virtio_structures(client):
    found = caps(client)
    ids = [cid for _, cid in found]
    assert ids.count(P.PCI_CAP_ID_PM) == 1
    assert ids.count(P.PCI_CAP_ID_MSIX) == 1
    assert ids.count(P.PCI_CAP_ID_EXP) == 1
    bar0 = client.region_info(0).size
    types = {}
    for off, cid in found:
        if cid != P.PCI_CAP_ID_VNDR:
            continue
        raw = client.cfg_read(off, 16)
        _, _, cap_len, cfg_type, bar, _, offset, length = struct.unpack("<BBBBBBxxII", raw)
        types[cfg_type] = (bar, offset, length, cap_len, off)
        if cfg_type != V.VIRTIO_PCI_CAP_PCI_CFG:
            assert bar == 0 and offset + length <= bar0      # 4.1.4: inside the BAR
    assert set(types) == {1, 2, 3, 4, 5}
    assert types[V.VIRTIO_PCI_CAP_COMMON_CFG][2] >= 0x38
    assert types[V.VIRTIO_PCI_CAP_DEVICE_CFG][2] >= 8       # struct virtio_gpio_config
    noff = types[V.VIRTIO_PCI_CAP_NOTIFY_CFG][4]
    assert types[V.VIRTIO_PCI_CAP_NOTIFY_CFG][3] >= 20
    mult = client.cfg_read32(noff + 16)
    assert mult in (0,) or mult % 2 == 0                    # 4.1.4.4: even or 0
    msix = next(off for off, cid in found if cid == P.PCI_CAP_ID_MSIX)
    qsize = (client.cfg_read16(msix + 2) & 0x7FF) + 1
    assert qsize >= 3                                       # config + 2 queues
    table = client.cfg_read32(msix + 4)
    assert client.region_info(table & 7).size >= (table & ~7) + 16 * qsize


def test_pm_capability_defaults_with_no_soft_reset(client):
    pm = pm_offset(client)
    pmc = client.cfg_read16(pm + P.PCI_PM_PMC)
    assert pmc & P.PCI_PM_CAP_VER_MASK == 3
    assert not pmc & (P.PCI_PM_CAP_D1 | P.PCI_PM_CAP_D2)     # D1/D2 not advertised
    assert client.cfg_read16(pm + P.PCI_PM_CTRL) == P.PCI_PM_CTRL_NO_SOFT_RESET


def test_soft_reset_flag_clears_no_soft_reset(server_factory):
    srv = server_factory("--soft-reset")
    with VfioUserClient(srv.socket) as c:
        assert c.cfg_read16(pm_offset(c) + P.PCI_PM_CTRL) == 0


def test_pmcsr_read_only_bits_and_unsupported_states(client):
    """PCI PM 1.2 3.2.4: No_Soft_Reset is RO; a D1/D2 write is discarded; PMC is RO."""
    pm = pm_offset(client)
    ctrl = pm + P.PCI_PM_CTRL
    client.cfg_write16(ctrl, 0x0000)                         # tries to clear NSR
    assert client.cfg_read16(ctrl) == P.PCI_PM_CTRL_NO_SOFT_RESET
    for d in (P.PCI_D1, P.PCI_D2):
        client.cfg_write16(ctrl, d)
        assert client.cfg_read16(ctrl) & 3 == P.PCI_D0
    client.cfg_write16(ctrl, 0x7E00 | P.PCI_PM_CTRL_PME_STATUS)   # reserved, data select, W1C
    assert client.cfg_read16(ctrl) == P.PCI_PM_CTRL_NO_SOFT_RESET
    pmc = client.cfg_read16(pm + P.PCI_PM_PMC)
    client.cfg_write16(pm + P.PCI_PM_PMC, 0xFFFF)
    assert client.cfg_read16(pm + P.PCI_PM_PMC) == pmc


def test_pmcsr_byte_access_and_d3hot_gates_bars(client):
    """A 1-byte write to PMCSR's low byte changes the state (byte enables, like hardware);
    in D3hot memory reads return all ones (PCI PM 1.2 5.3) and config space still answers."""
    pm = pm_offset(client)
    ctrl = pm + P.PCI_PM_CTRL
    numq = client.region_read(0, V.VIRTIO_PCI_COMMON_NUMQ, 2)
    assert numq == b"\x02\x00"
    client.cfg_write(ctrl, bytes([P.PCI_D3hot]))
    assert client.cfg_read16(ctrl) == P.PCI_D3hot | P.PCI_PM_CTRL_NO_SOFT_RESET
    assert client.region_read(0, V.VIRTIO_PCI_COMMON_NUMQ, 2) == b"\xff\xff"
    assert client.cfg_read16(P.PCI_VENDOR_ID) == 0x1AF4
    client.cfg_write16(ctrl, P.PCI_D0)
    assert client.region_read(0, V.VIRTIO_PCI_COMMON_NUMQ, 2) == numq


def test_d3hot_to_d0_without_no_soft_reset_resets_virtio_status(server_factory):
    """PCI PM 1.2 5.4.1: No_Soft_Reset = 0 means D3hot -> D0 is a soft reset."""
    for flag, kept in (("--soft-reset", False), ("--no-soft-reset", True)):
        srv = server_factory(flag)
        with VfioUserClient(srv.socket) as c:
            st = V.VIRTIO_PCI_COMMON_STATUS
            c.region_write(0, st, bytes([V.VIRTIO_CONFIG_S_ACKNOWLEDGE]))
            ctrl = pm_offset(c) + P.PCI_PM_CTRL
            c.cfg_write16(ctrl, P.PCI_D3hot)
            c.cfg_write16(ctrl, P.PCI_D0)
            assert c.region_read(0, st, 1)[0] == (V.VIRTIO_CONFIG_S_ACKNOWLEDGE if kept else 0)


def test_second_client_attaches_after_disconnect(server):
    with VfioUserClient(server.socket) as c:
        c.region_write(0, V.VIRTIO_PCI_COMMON_STATUS, bytes([V.VIRTIO_CONFIG_S_ACKNOWLEDGE]))
    with VfioUserClient(server.socket) as c2:
        assert c2.cfg_read16(P.PCI_DEVICE_ID) == 0x1069
        # a new client finds the device reset at the virtio level
        assert c2.region_read(0, V.VIRTIO_PCI_COMMON_STATUS, 1) == b"\x00"
    assert server.alive()


def test_socket_is_private(server):
    mode = stat.S_IMODE(os.stat(server.socket).st_mode)
    assert mode == 0o600
