"""What a container gets from Allocate: env (and mounts) for the GPU set and limits of its grant."""

from __future__ import annotations

from fracgpu.api.v1beta1.deviceplugin import api_pb2
from fracgpu.core.shareenv import (
    DEVICE_LIST_ENVVAR,
    LimiterConfig,
    ShareLimit,
    parse_device_list,
    share_env,
    valid_cdi_kind,
)
from fracgpu.deviceplugin.ledger import Grant

__all__ = ["LimiterConfig", "container_response", "parse_device_list", "valid_cdi_kind"]


def container_response(grant: Grant, limiter: LimiterConfig | None = None, cdi_kind: str = "",
                       device_list: tuple[str, ...] = (DEVICE_LIST_ENVVAR,)) -> api_pb2.ContainerAllocateResponse:
    """``cdi_kind`` (e.g. ``nvidia.com/gpu``, as nvidia-ctk names GPUs by UUID) adds one CDI device per
    GPU, for kubelets and runtimes that inject devices through CDI (DevicePluginCDIDevices, GA in 1.31);
    ``device_list`` names the GPUs to the NVIDIA container runtime (core.shareenv.DEVICE_LIST_STRATEGIES)."""
    limits = grant.limits
    envs, mounts = share_env([ShareLimit(lim.gpu.uuid, lim.cores, lim.memory) for lim in limits], limiter,
                             device_list)
    envs["FRACGPU_POD"] = grant.pod
    envs["FRACGPU_CONTAINER"] = grant.container
    cdi = [api_pb2.CDIDevice(name=f"{cdi_kind}={lim.gpu.uuid}") for lim in limits] if cdi_kind else []
    return api_pb2.ContainerAllocateResponse(
        envs=envs, cdi_devices=cdi,
        mounts=[api_pb2.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
                for m in mounts])
