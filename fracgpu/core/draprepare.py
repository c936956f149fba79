"""Preparing a ResourceClaim on this node: which GPUs and limits, checked, and the CDI spec for the runtime. Pure.

The kubelet names the claim; its ``status.allocation.devices.results`` (written by kube-scheduler) say which
devices of which driver and pool it got and, for devices that allow multiple allocations, how much of each
capacity it consumes. ``plan_claim`` turns the results for this driver and node into ``PreparedDevice``s, or
refuses with one reason. It is the last line before a container starts (as Allocate is for the device plugin):
the GPUs must be this node's and healthy, and every GPU must have room for the claim next to the claims
already prepared here — the scheduler should make that true, the driver makes sure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fracgpu.api.v1beta1.dra.checkpoint import PreparedClaim, PreparedDevice
from fracgpu.api.v1beta1.dra.resource import ResourceClaim
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import CORES_PER_GPU, DRA_CAPACITY_CORES, DRA_CAPACITY_MEMORY, DRA_DRIVER
from fracgpu.core.draslices import device_names
from fracgpu.core.quantity import QuantityError, format_bytes_human, parse_quantity
from fracgpu.core.shareenv import LimiterConfig, ShareLimit, share_env

CDI_VERSION: Final = "0.3.0"  # the oldest CDI version with env and mounts: every CDI-enabled runtime reads it
CDI_FILE_PREFIX: Final = "fracgpu-claim-"
_CDI_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")
# Kubernetes UIDs are UUIDs; anything else must never reach a file name
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


class Refusal(ValueError):
    """The claim cannot be prepared on this node; the message says why (it reaches the pod's events)."""


def valid_uid(uid: str) -> bool:
    return _UID.fullmatch(uid) is not None


def _capacity(consumed: Mapping[str, str], name: str, driver: str) -> str | None:
    # consumedCapacity names may omit the driver's domain (types.go: DeviceRequestAllocationResult)
    return consumed.get(name, consumed.get(f"{driver}/{name}"))


def plan_claim(claim: ResourceClaim, *, node: str, gpus: Sequence[GpuInfo],
               prepared: Mapping[str, PreparedClaim], driver: str = DRA_DRIVER) -> PreparedClaim:
    """The devices and limits of ``claim`` on ``node``; ``Refusal`` with the reason when it cannot be prepared.

    ``prepared`` are the claims already prepared on the node (by uid); a claim is never counted twice against
    a GPU's room, so re-planning a prepared claim gives the same answer.
    """
    who = f"claim {claim.namespace}/{claim.name}"
    if not claim.allocated:
        raise Refusal(f"{who} is not allocated")
    ours = [r for r in claim.results if r.driver == driver]
    if not ours:
        raise Refusal(f"{who} has no device of driver {driver}")
    elsewhere = sorted({r.pool for r in ours if r.pool != node})
    if elsewhere:
        raise Refusal(f"{who} is allocated devices of pool {', '.join(elsewhere)}, not of node {node}")
    names = device_names(gpus)
    by_name = {names[g.uuid]: g for g in gpus}
    devices: list[PreparedDevice] = []
    for r in ours:
        gpu = by_name.get(r.device)
        if gpu is None:
            raise Refusal(f"{who}: device {r.device} is not a GPU of node {node}")
        if not gpu.healthy:
            raise Refusal(f"{who}: GPU {gpu.uuid} ({r.device}) is unhealthy: {gpu.reason or 'no reason given'}")
        cores, memory = CORES_PER_GPU, gpu.memory  # no consumedCapacity: the device was allocated whole
        raw_cores = _capacity(r.consumed_capacity, DRA_CAPACITY_CORES, driver)
        raw_memory = _capacity(r.consumed_capacity, DRA_CAPACITY_MEMORY, driver)
        try:
            if raw_cores is not None:
                cores_q = parse_quantity(raw_cores)
                if cores_q != cores_q.to_integral_value() or not 1 <= cores_q <= CORES_PER_GPU:
                    raise Refusal(f"{who}: device {r.device}: consumed cores {raw_cores} is not a whole number "
                                  f"from 1 to {CORES_PER_GPU}")
                cores = int(cores_q)
            if raw_memory is not None:
                memory_q = parse_quantity(raw_memory)
                if memory_q != memory_q.to_integral_value() or not 0 < memory_q <= gpu.memory:
                    raise Refusal(f"{who}: device {r.device}: consumed memory {raw_memory} is not a whole number "
                                  f"of bytes from 1 to the GPU's {format_bytes_human(gpu.memory)}")
                memory = int(memory_q)
        except QuantityError as e:
            raise Refusal(f"{who}: device {r.device}: consumed capacity: {e}") from None
        devices.append(PreparedDevice(request=r.base_request, pool=r.pool, device=r.device, uuid=gpu.uuid,
                                      cores=cores, memory=memory, share_id=r.share_id, admin=r.admin_access))
    _check_room(who, claim.uid, devices, gpus, prepared)
    return PreparedClaim(uid=claim.uid, namespace=claim.namespace, name=claim.name, devices=tuple(devices))


def booked(prepared: Mapping[str, PreparedClaim], *, excluding: str = "") -> dict[str, tuple[int, int]]:
    """uuid -> (cores, memory) held by the prepared claims (admin access holds nothing)."""
    out: dict[str, tuple[int, int]] = {}
    for uid, c in prepared.items():
        if uid == excluding:
            continue
        for x in c.devices:
            if not x.admin:
                cores, memory = out.get(x.uuid, (0, 0))
                out[x.uuid] = (cores + x.cores, memory + x.memory)
    return out


def _check_room(who: str, uid: str, devices: Sequence[PreparedDevice], gpus: Sequence[GpuInfo],
                prepared: Mapping[str, PreparedClaim]) -> None:
    held = booked(prepared, excluding=uid)
    wanted: dict[str, tuple[int, int]] = {}
    for x in devices:
        if not x.admin:
            cores, memory = wanted.get(x.uuid, (0, 0))
            wanted[x.uuid] = (cores + x.cores, memory + x.memory)
    by_uuid = {g.uuid: g for g in gpus}
    for uuid, (cores, memory) in sorted(wanted.items()):
        gpu = by_uuid[uuid]
        used_cores, used_memory = held.get(uuid, (0, 0))
        free_cores, free_memory = CORES_PER_GPU - used_cores, gpu.memory - used_memory
        if cores > free_cores or memory > free_memory:
            raise Refusal(f"{who} needs {cores} cores and {format_bytes_human(memory)} of GPU {uuid}, which has "
                          f"{max(0, free_cores)} cores and {format_bytes_human(max(0, free_memory))} free next to "
                          "the claims already prepared on this node")


# -- CDI ----------------------------------------------------------------------------------------------------


def cdi_device_name(uid: str, request: str) -> str:
    """A CDI device name unique to the claim (runtimes may cache specs: names must not be reused)."""
    return f"{uid}-{_CDI_NAME_BAD.sub('_', request)}"


def cdi_file_name(uid: str) -> str:
    if not valid_uid(uid):
        raise ValueError(f"not a claim uid: {uid!r}")
    return f"{CDI_FILE_PREFIX}{uid}.json"


def cdi_device_ids(claim: PreparedClaim, kind: str) -> dict[str, str]:
    """request -> fully qualified CDI device id ``vendor/class=name``."""
    return {x.request: f"{kind}={cdi_device_name(claim.uid, x.request)}" for x in claim.devices}


def cdi_spec(claim: PreparedClaim, *, kind: str, limiter: LimiterConfig | None = None) -> dict[str, Any]:
    """The CDI spec of a prepared claim: one CDI device per request, with the env and limiter mounts that the
    device plugin's Allocate gives a container holding the same GPUs and limits."""
    requests: dict[str, list[PreparedDevice]] = {}
    for x in claim.devices:
        requests.setdefault(x.request, []).append(x)
    devices = []
    for request, shares in requests.items():
        envs, mounts = share_env([ShareLimit(x.uuid, x.cores, x.memory) for x in shares], limiter)
        envs["FRACGPU_CLAIM"] = claim.key
        edits: dict[str, Any] = {"env": [f"{k}={v}" for k, v in envs.items()]}
        if mounts:
            edits["mounts"] = [{"hostPath": m.host_path, "containerPath": m.container_path,
                                "options": ["ro" if m.read_only else "rw", "nosuid", "nodev", "bind"]}
                               for m in mounts]
        devices.append({"name": cdi_device_name(claim.uid, request), "containerEdits": edits})
    return {"cdiVersion": CDI_VERSION, "kind": kind, "devices": devices}
