"""PCIe roots from a sysfs tree of real directories and symlinks, laid out as the kernel does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.draplugin.sysfs import pcie_root, pcie_roots


def device(sysfs: Path, chain: str, bdf: str, *, absolute: bool = False) -> None:
    """/sys/devices/<chain>/<bdf> and the /sys/bus/pci/devices/<bdf> symlink to it (relative, as the kernel
    makes it, or absolute)."""
    target = sysfs / "devices" / chain / bdf
    target.mkdir(parents=True)
    link_dir = sysfs / "bus" / "pci" / "devices"
    link_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(target if absolute else os.path.relpath(target, link_dir), link_dir / bdf)


@pytest.mark.parametrize(("chain", "bdf", "absolute", "root"), [
    ("pci0000:00", "0000:07:00.0", False, "pci0000:00"),  # on the root bus
    ("pci0000:3a/0000:3a:00.0/0000:3b:00.0/0000:3c:08.0", "0000:3d:00.0", False, "pci0000:3a"),  # behind switches
    ("pci0001:00/0001:00:01.0", "0001:01:00.0", True, "pci0001:00"),
    ("platform/soc", "0000:07:00.0", False, ""),  # not under a PCI root: no guess
])
def test_the_root_is_the_first_component_below_sys_devices(tmp_path: Path, chain: str, bdf: str, absolute: bool,
                                                          root: str) -> None:
    device(tmp_path, chain, bdf, absolute=absolute)
    assert pcie_root(bdf, tmp_path) == root


def test_a_missing_device_or_a_link_to_elsewhere_gives_nothing(tmp_path: Path) -> None:
    assert pcie_root("0000:07:00.0", tmp_path) == ""
    device(tmp_path, "pci0000:00", "0000:08:00.0")
    os.symlink(tmp_path / "devices" / "pci0000:00" / "0000:08:00.0", tmp_path / "bus/pci/devices/0000:09:00.0")
    assert pcie_root("0000:09:00.0", tmp_path) == ""  # the link's target is another device


def test_gpus_are_mapped_by_their_nvml_bus_ids(tmp_path: Path) -> None:
    device(tmp_path, "pci0000:3a/0000:3a:00.0", "0000:3b:00.0")
    gpus = [GpuInfo("GPU-a", 0, "A100", 1, 0, pci_bus_id="00000000:3B:00.0"), GpuInfo("GPU-b", 1, "A100", 1, 0),
            GpuInfo("GPU-c", 2, "A100", 1, 0, pci_bus_id="00000000:99:00.0")]
    assert pcie_roots(gpus, tmp_path) == {"GPU-a": "pci0000:3a"}
