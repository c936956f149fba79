"""The PCIe root complex of a GPU, from sysfs, for the standard ``resource.kubernetes.io/pcieRoot`` attribute.

As upstream's deviceattribute helper does: ``/sys/bus/pci/devices/<BDF>`` is a symlink into the device tree
``/sys/devices/pci<domain>:<bus>/.../<BDF>``; its first component below ``/sys/devices`` names the root
complex. Devices behind one root get the same value, which lets a claim put a GPU and a NIC of another
driver under one root (``matchAttribute: resource.kubernetes.io/pcieRoot``). A GPU whose root cannot be
read (simulated GPUs, an unusual sysfs) gets no attribute rather than a guessed one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.draslices import normalise_bdf


def pcie_root(bdf: str, sysfs: str | os.PathLike[str] = "/sys") -> str:
    """``pci0000:00`` for BDF ``0000:07:00.0``; "" when it cannot be read."""
    root = Path(sysfs)
    link = root / "bus" / "pci" / "devices" / bdf
    try:
        target = os.readlink(link)
    except OSError:
        return ""
    resolved = os.path.normpath(target if os.path.isabs(target) else os.path.join(link.parent, target))
    devices = os.path.normpath(root / "devices")
    relative = os.path.relpath(resolved, devices)
    first = relative.split(os.sep, 1)[0]
    if relative.startswith("..") or not first.startswith("pci") or os.path.basename(resolved) != bdf:
        return ""
    return first


def pcie_roots(gpus: Iterable[GpuInfo], sysfs: str | os.PathLike[str] = "/sys") -> dict[str, str]:
    """uuid -> root complex, for the GPUs whose root is readable."""
    out = {}
    for g in gpus:
        bdf = normalise_bdf(g.pci_bus_id)
        root = pcie_root(bdf, sysfs) if bdf else ""
        if root:
            out[g.uuid] = root
    return out
