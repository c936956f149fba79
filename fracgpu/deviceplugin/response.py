"""What a container gets from Allocate: env (and mounts) for the GPU set and limits of its grant."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fracgpu.api.v1beta1.deviceplugin import api_pb2
from fracgpu.api.v1beta1.names import DEVICE_LIST_MOUNT_ROOT
from fracgpu.deviceplugin.ledger import Grant

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


def container_response(grant: Grant, limiter: LimiterConfig | None = None, cdi_kind: str = "",
                       device_list: tuple[str, ...] = (DEVICE_LIST_ENVVAR,)) -> api_pb2.ContainerAllocateResponse:
    """``cdi_kind`` (e.g. ``nvidia.com/gpu``, as nvidia-ctk names GPUs by UUID) adds one CDI device per
    GPU, for kubelets and runtimes that inject devices through CDI (DevicePluginCDIDevices, GA in 1.31);
    ``device_list`` names the GPUs to the NVIDIA container runtime (DEVICE_LIST_STRATEGIES)."""
    limits = grant.limits
    cores = max(lim.cores for lim in limits)
    vram = min(lim.memory for lim in limits)
    uuids = [lim.gpu.uuid for lim in limits]
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
        "FRACGPU_POD": grant.pod,
        "FRACGPU_CONTAINER": grant.container,
    }
    mounts: list[api_pb2.Mount] = []
    if DEVICE_LIST_VOLUME_MOUNTS in device_list:
        mounts += [api_pb2.Mount(container_path=f"{DEVICE_LIST_MOUNT_ROOT}/{uuid}", host_path="/dev/null",
                                 read_only=True) for uuid in uuids]
    if limiter is not None:
        for i, lim in enumerate(limits):
            envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{max(1, lim.memory // MIB)}m"
        envs["CUDA_DEVICE_SM_LIMIT"] = str(cores)
        mounts.append(api_pb2.Mount(container_path=limiter.container_dir, host_path=limiter.host_dir,
                                    read_only=True))
        if limiter.preload_file:
            mounts.append(api_pb2.Mount(container_path="/etc/ld.so.preload", host_path=limiter.preload_file,
                                        read_only=True))
    cdi = [api_pb2.CDIDevice(name=f"{cdi_kind}={uuid}") for uuid in uuids] if cdi_kind else []
    return api_pb2.ContainerAllocateResponse(envs=envs, mounts=mounts, cdi_devices=cdi)
