"""What a container with a GPU share sees: the env (and limiter mounts) for its GPUs and limits.

One definition for both paths: the device plugin's Allocate response and the DRA driver's CDI spec
carry the same variables, so a workload and an in-container limiter cannot tell them apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fracgpu.api.v1beta1.names import DEVICE_LIST_MOUNT_ROOT

MIB = 1024 * 1024

# How a container's GPUs are named to the NVIDIA container runtime (as NVIDIA's device plugin names
# them): "envvar", NVIDIA_VISIBLE_DEVICES=<uuids>, which the runtime honours for unprivileged
# containers only by default; "volume-mounts", a /dev/null bind mount at
# /var/run/nvidia-container-devices/<uuid> per GPU, which the runtime reads first when
# accept-nvidia-visible-devices-as-volume-mounts = true and which still works once
# accept-nvidia-visible-devices-envvar-when-unprivileged = false (docs/install.md).
DEVICE_LIST_ENVVAR = "envvar"
DEVICE_LIST_VOLUME_MOUNTS = "volume-mounts"
DEVICE_LIST_STRATEGIES = (DEVICE_LIST_ENVVAR, DEVICE_LIST_VOLUME_MOUNTS)


def parse_device_list(text: str) -> tuple[str, ...]:
    """A comma list of DEVICE_LIST_STRATEGIES, e.g. "envvar,volume-mounts"; ValueError names the bad one."""
    items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not items:
        raise ValueError(f"--device-list-strategy: give one or more of {', '.join(DEVICE_LIST_STRATEGIES)}")
    for x in items:
        if x not in DEVICE_LIST_STRATEGIES:
            raise ValueError(f"--device-list-strategy: {x!r} is not one of {', '.join(DEVICE_LIST_STRATEGIES)}")
    return items

# A CDI device kind, `vendor/class` (CDI spec: vendor a DNS-like name, class alphanumerics, `-`, `_`).
_CDI_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9]/[A-Za-z0-9][A-Za-z0-9_-]*")


def valid_cdi_kind(kind: str) -> bool:
    return _CDI_KIND.fullmatch(kind) is not None


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """An existing in-container limiter (HAMi-core's libvgpu.so): its env and library mount.

    ``host_dir`` holds the library on the node; it is mounted read-only at ``container_dir``.
    ``preload_file`` (optional) is a host file containing the library's path, mounted at
    /etc/ld.so.preload so that every process of the container loads the limiter.
    """

    host_dir: str
    container_dir: str = "/usr/local/vgpu"
    preload_file: str = ""


@dataclass(frozen=True, slots=True)
class ShareLimit:
    """A container's share of one GPU: vgpu-core units (100 = whole) and VRAM bytes."""

    uuid: str
    cores: int
    memory: int


@dataclass(frozen=True, slots=True)
class MountSpec:
    container_path: str
    host_path: str
    read_only: bool = True


def share_env(limits: Sequence[ShareLimit], limiter: LimiterConfig | None = None,
              device_list: tuple[str, ...] = (DEVICE_LIST_ENVVAR,)) -> tuple[dict[str, str], list[MountSpec]]:
    """Env and mounts for a container holding ``limits`` (one per visible GPU, in index order);
    ``device_list`` names the GPUs to the NVIDIA container runtime (DEVICE_LIST_STRATEGIES)."""
    if not limits:
        raise ValueError("a share needs at least one GPU")
    cores = max(lim.cores for lim in limits)
    vram = min(lim.memory for lim in limits)
    uuids = [lim.uuid for lim in limits]
    envs = {
        # Without "envvar" the variable still overrides an image's own NVIDIA_VISIBLE_DEVICES=all: a
        # runtime that reads the mounts never looks at it, one that does not fails on the path
        # instead of handing out every GPU (as NVIDIA's plugin does).
        "NVIDIA_VISIBLE_DEVICES": ",".join(uuids) if DEVICE_LIST_ENVVAR in device_list else DEVICE_LIST_MOUNT_ROOT,
        # effective only where an MPS control daemon is reachable from the container
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(cores),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": ",".join(
            f"{i}={max(1, lim.memory // MIB)}M" for i, lim in enumerate(limits)),
        "FRACGPU_VRAM_LIMIT": str(vram),
        "FRACGPU_CORE_PERCENT": str(cores),
    }
    mounts: list[MountSpec] = []
    if DEVICE_LIST_VOLUME_MOUNTS in device_list:
        mounts += [MountSpec(container_path=f"{DEVICE_LIST_MOUNT_ROOT}/{uuid}", host_path="/dev/null")
                   for uuid in uuids]
    if limiter is not None:
        for i, lim in enumerate(limits):
            envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{max(1, lim.memory // MIB)}m"
        envs["CUDA_DEVICE_SM_LIMIT"] = str(cores)
        mounts.append(MountSpec(container_path=limiter.container_dir, host_path=limiter.host_dir))
        if limiter.preload_file:
            mounts.append(MountSpec(container_path="/etc/ld.so.preload", host_path=limiter.preload_file))
    return envs, mounts
