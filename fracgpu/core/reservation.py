"""Building a pod's reservation: free device IDs on the chosen GPUs and each container's share.

The kubelet pools the devices of ordinary init containers: an init container takes pool IDs first
(in sorted order) and adds its own to the pool; a sidecar takes pool IDs first and removes its IDs
from the pool (it keeps them); an app container takes pool IDs first and removes the ones it took.
Whatever a container still needs comes from fresh IDs. The expected split written into
`fracgpu.io/assigned` follows the same walk, so that in the usual case the plugin's preferred
answer is the split the kubelet ends up with.
"""

from __future__ import annotations

from collections.abc import Sequence

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.names import CORES_PER_GPU, device_id
from fracgpu.core.request import ContainerDemand, GpuRequest


class NoFreeDeviceIds(ValueError):
    """A GPU has fewer free device IDs than the share needs (the ledger and the ID set disagree)."""


def free_indices(held: int, n: int) -> list[int]:
    """The n lowest device indices (0..99) whose bit is not set in the mask `held`."""
    out = [k for k in range(CORES_PER_GPU) if not held >> k & 1][:n]
    if len(out) < n:
        raise NoFreeDeviceIds(f"only {len(out)} free device ids, {n} needed")
    return out


def split_containers(containers: Sequence[ContainerDemand], ids: Sequence[str]) -> tuple[ContainerShare, ...]:
    """Each GPU container's expected device IDs, walking containers as the kubelet does.

    `ids` are the pod's reserved IDs in the order fresh ones should be handed out; their number is
    the pod's effective request, which is exactly what the walk consumes.
    """
    fresh = list(ids)
    pool: set[str] = set()
    out: list[ContainerShare] = []
    for c in containers:
        if c.cores <= 0:
            continue
        got = sorted(pool)[: c.cores]
        need = c.cores - len(got)
        got += fresh[:need]
        del fresh[:need]
        if c.kind == "init":
            pool |= set(got)
        else:  # sidecars keep their ids, app containers use theirs up
            pool -= set(got)
        out.append(ContainerShare(name=c.name, kind=c.kind, device_ids=tuple(got)))
    return tuple(out)


def build_assignment(
    req: GpuRequest,
    node: str,
    tenant: str,
    assigned_at: str,
    gpus: Sequence[tuple[str, int]],
    held: Sequence[int],
) -> Assignment:
    """The reservation of `req` on `gpus` ((uuid, GPU memory bytes) each), given the IDs already
    held on each of those GPUs (bit masks: bit k = id <uuid>::<k> taken)."""
    shares: list[GpuShare] = []
    all_ids: list[str] = []
    for (uuid, gpu_memory), taken in zip(gpus, held, strict=True):
        cores = req.cores_per_gpu
        ids = tuple(device_id(uuid, k) for k in free_indices(taken, cores))
        shares.append(GpuShare(uuid=uuid, cores=cores, memory=req.memory_on(gpu_memory), device_ids=ids))
        all_ids.extend(ids)
    return Assignment(
        node=node,
        tenant=tenant,
        assigned_at=assigned_at,
        gpus=tuple(shares),
        containers=split_containers(req.containers, all_ids),
    )
