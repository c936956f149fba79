"""GPU inventory helpers: normalised model names, device IDs and links between GPUs."""

from __future__ import annotations

import re

from fracgpu.api.v1beta1.inventory import GpuInfo, LinkClass
from fracgpu.api.v1beta1.names import CORES_PER_GPU, DEVICE_ID_SEPARATOR

_VENDOR_PREFIXES = ("NVIDIA ", "Tesla ")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
MAX_LABEL = 63


def normalise_model(nvml_name: str) -> str:
    """NVML's product name as a label value that globs match: 'NVIDIA A100-SXM4-80GB' -> 'A100-SXM4-80GB'."""
    name = nvml_name.strip()
    changed = True
    while changed:
        changed = False
        for prefix in _VENDOR_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :].strip()
                changed = True
    name = _NOT_LABEL.sub("-", name)[:MAX_LABEL].strip("-._")
    return name or "unknown"


def device_ids(gpu_uuid: str) -> list[str]:
    return [f"{gpu_uuid}{DEVICE_ID_SEPARATOR}{k}" for k in range(CORES_PER_GPU)]


def split_device_id(device_id: str) -> tuple[str, int] | None:
    """'<uuid>::<k>' -> (uuid, k); None for anything that is not one of our ids."""
    uuid, sep, k = device_id.rpartition(DEVICE_ID_SEPARATOR)
    if not sep or not uuid or not k.isdigit():
        return None
    index = int(k)
    return (uuid, index) if 0 <= index < CORES_PER_GPU else None


def link_between(a: GpuInfo, b: GpuInfo) -> LinkClass:
    """The best link the inventory records between two GPUs; unknown pairs fall back to NUMA facts."""
    best: LinkClass | None = None
    for lk in a.links:
        if lk.peer == b.uuid and (best is None or lk.link > best):
            best = lk.link
    for lk in b.links:
        if lk.peer == a.uuid and (best is None or lk.link > best):
            best = lk.link
    if best is not None:
        return best
    if a.numa >= 0 and a.numa == b.numa:
        return LinkClass.NUMA
    return LinkClass.SYSTEM
