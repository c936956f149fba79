"""A pod's reservation written back as its claims' ``status.allocation`` (fracgpu allocates ahead of
kube-scheduler, docs/dra.md "Placement").

The extender decides for the pod as for any GPU pod (the claims lowered to vgpu-core / vgpu-memory by
``core.dralower``); ``claim_allocations`` turns that decision (node, GPUs, shares) into what
kube-scheduler's own allocator would have written for the same devices: one result per device and
request, the consumed capacity, a share ID (the devices allow multiple allocations) and a node
selector naming the node, so that the scheduler sends the pod there. Reading the written allocation
back (``dralower.allocated_gpus``) gives the same shares. Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import CORES_PER_GPU, DRA_CAPACITY_CORES, DRA_CAPACITY_MEMORY, DRA_DRIVER
from fracgpu.core.draclaims import request_demand

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Placed:
    """One GPU of the decision: its device name in the node's pool and the share taken of it."""

    device: str
    cores: int
    memory: int


def node_selector(node: str) -> Obj:
    """The selector kube-scheduler's allocator writes for node-local devices: the node by name."""
    return {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}


def placed_on(gpus: Sequence[tuple[str, int, int]], devices: Mapping[str, GpuInfo]) -> list[Placed]:
    """(uuid, cores, memory) of a reservation as device names of the pool; KeyError names a GPU the pool
    does not publish."""
    by_uuid = {g.uuid: name for name, g in devices.items()}
    out = []
    for uuid, cores, memory in gpus:
        if uuid not in by_uuid:
            raise KeyError(f"GPU {uuid} is not a device of the node's pool")
        out.append(Placed(by_uuid[uuid], cores, memory))
    return out


def claim_allocations(claims: Sequence[Mapping[str, Any]], node: str, placed: Sequence[Placed],
                      devices: Mapping[str, GpuInfo], new_share_id: Callable[[], str]) -> list[Obj]:
    """``status.allocation`` of each claim (in the given order) for a decision that put the pod's
    shares on ``placed`` of ``node``. The requests are taken in order: a share takes the one placed
    GPU; a request for K whole GPUs the next K. ValueError when the decision does not match the
    claims (a bug: the decision was made for these claims)."""
    left = list(placed)
    out: list[Obj] = []
    for claim in claims:
        meta = claim.get("metadata") or {}
        where = f"claim {meta.get('namespace')}/{meta.get('name')}"
        spec = claim.get("spec") or {}
        results: list[Obj] = []
        for i, req in enumerate((spec.get("devices") or {}).get("requests") or []):
            name = str(req.get("name") or i)
            demand = request_demand(req, f"{where} request {name}")
            wanted = [(c, m) for c, m in demand.shares] or [(CORES_PER_GPU, -1)] * demand.whole
            for cores, memory in wanted:
                if not left:
                    raise ValueError(f"{where} request {name}: the decision placed fewer GPUs than the claims ask")
                p = left.pop(0)
                full = devices[p.device].memory
                if p.cores != cores or p.memory != (full if memory < 0 else memory):
                    raise ValueError(f"{where} request {name}: placed {p.cores} cores and {p.memory} bytes of "
                                     f"{p.device}, the request asks {cores} and {full if memory < 0 else memory}")
                results.append({
                    "request": name, "driver": DRA_DRIVER, "pool": node, "device": p.device,
                    "shareID": new_share_id(),
                    "consumedCapacity": {DRA_CAPACITY_CORES: str(p.cores), DRA_CAPACITY_MEMORY: str(p.memory)},
                })
        out.append({"devices": {"results": results}, "nodeSelector": node_selector(node)})
    if left:
        raise ValueError(f"the decision placed {len(left)} GPU(s) more than the claims ask")
    return out


def allocated_claim(claim: Mapping[str, Any], allocation: Obj, pod_name: str, pod_uid: str) -> Obj:
    """The claim with ``allocation`` and the pod as its consumer, the status write kube-scheduler makes
    at PreBind: reserved for the pod in the same write, so that the resourceclaim controller sees the
    claim go from used to unused when the pod ends (and clears the allocation) — an allocation without a
    consumer would never be cleared."""
    out = copy.deepcopy(dict(claim))
    status = dict(out.get("status") or {})
    reserved = [r for r in status.get("reservedFor") or [] if isinstance(r, Mapping) and r.get("uid") != pod_uid]
    status["allocation"] = allocation
    status["reservedFor"] = [*reserved, {"resource": "pods", "name": pod_name, "uid": pod_uid}]
    out["status"] = status
    return out


__all__ = ["Placed", "allocated_claim", "claim_allocations", "node_selector", "placed_on"]
