"""What a container gets from Allocate: env (and mounts) for the GPU set and limits of its grant."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fracgpu.api.v1beta1.deviceplugin import api_pb2
from fracgpu.deviceplugin.ledger import Grant

MIB = 1024 * 1024

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


def container_response(grant: Grant, limiter: LimiterConfig | None = None,
                       cdi_kind: str = "") -> api_pb2.ContainerAllocateResponse:
    """``cdi_kind`` (e.g. ``nvidia.com/gpu``, as nvidia-ctk names GPUs by UUID) adds one CDI device per
    GPU, for kubelets and runtimes that inject devices through CDI (DevicePluginCDIDevices, GA in 1.31);
    the NVIDIA_VISIBLE_DEVICES env stays for the NVIDIA container runtime's legacy mode."""
    limits = grant.limits
    cores = max(lim.cores for lim in limits)
    vram = min(lim.memory for lim in limits)
    envs = {
        "NVIDIA_VISIBLE_DEVICES": ",".join(lim.gpu.uuid for lim in limits),
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
    if limiter is not None:
        for i, lim in enumerate(limits):
            envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{max(1, lim.memory // MIB)}m"
        envs["CUDA_DEVICE_SM_LIMIT"] = str(cores)
        mounts.append(api_pb2.Mount(container_path=limiter.container_dir, host_path=limiter.host_dir,
                                    read_only=True))
        if limiter.preload_file:
            mounts.append(api_pb2.Mount(container_path="/etc/ld.so.preload", host_path=limiter.preload_file,
                                        read_only=True))
    cdi = [api_pb2.CDIDevice(name=f"{cdi_kind}={lim.gpu.uuid}") for lim in limits] if cdi_kind else []
    return api_pb2.ContainerAllocateResponse(envs=envs, mounts=mounts, cdi_devices=cdi)
