"""The `fracgpu.io/assigned` Pod annotation: the reservation the extender took at bind.

A reservation is per pod and per GPU: the device IDs and VRAM the pod holds on each GPU, plus
each container's expected share of those IDs (Allocate accepts any split of the pod's IDs that
matches each container's request, because the kubelet pools init-container devices).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fracgpu.api.v1beta1 import _decode as d
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.names import DEVICE_ID_SEPARATOR, MAX_GPU_MEMORY

FORMAT_VERSION = 1
CONTAINER_KINDS = ("init", "sidecar", "app")


@dataclass(frozen=True, slots=True)
class GpuShare:
    uuid: str
    cores: int  # vgpu-core units on this GPU (100 = the whole GPU)
    memory: int  # VRAM bytes on this GPU
    device_ids: tuple[str, ...]  # exactly `cores` ids of this GPU


@dataclass(frozen=True, slots=True)
class ContainerShare:
    name: str
    kind: str  # init | sidecar | app
    device_ids: tuple[str, ...]  # the ids this container is expected to get


@dataclass(frozen=True, slots=True)
class Assignment:
    node: str
    tenant: str
    assigned_at: str  # RFC 3339, the extender's clock
    gpus: tuple[GpuShare, ...]
    containers: tuple[ContainerShare, ...]

    @property
    def device_ids(self) -> frozenset[str]:
        return frozenset(i for g in self.gpus for i in g.device_ids)

    @property
    def cores(self) -> int:
        return sum(g.cores for g in self.gpus)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "node": self.node,
                "tenant": self.tenant,
                "assignedAt": self.assigned_at,
                "gpus": [
                    {"uuid": g.uuid, "cores": g.cores, "memory": g.memory, "deviceIds": list(g.device_ids)}
                    for g in self.gpus
                ],
                "containers": [
                    {"name": c.name, "kind": c.kind, "deviceIds": list(c.device_ids)} for c in self.containers
                ],
            },
            separators=(",", ":"),
        )

    @staticmethod
    def from_json(text: str) -> Assignment:
        top = d.versioned(text, "assigned", FORMAT_VERSION)
        gpus: list[GpuShare] = []
        for where, g in d.objects(top.get("gpus"), "assigned.gpus"):
            uuid = d.string(g, "uuid", where)
            ids = _ids(g, where)
            cores = d.integer(g, "cores", where, minimum=1)
            if cores > 100:
                raise InvalidDocument(f"{where}.cores: at most 100 on one GPU, got {cores}")
            if len(ids) != cores:
                raise InvalidDocument(f"{where}.deviceIds: {len(ids)} ids for {cores} cores")
            if any(not i.startswith(uuid + DEVICE_ID_SEPARATOR) for i in ids):
                raise InvalidDocument(f"{where}.deviceIds: an id is not of GPU {uuid}")
            memory = d.integer(g, "memory", where, maximum=MAX_GPU_MEMORY)
            gpus.append(GpuShare(uuid=uuid, cores=cores, memory=memory, device_ids=ids))
        containers: list[ContainerShare] = []
        for where, c in d.objects(top.get("containers", []), "assigned.containers"):
            kind = d.choice(c, "kind", where, CONTAINER_KINDS)
            containers.append(ContainerShare(name=d.string(c, "name", where), kind=kind, device_ids=_ids(c, where)))
        all_ids = [i for g in gpus for i in g.device_ids]
        if len(set(all_ids)) != len(all_ids):
            raise InvalidDocument("assigned.gpus: a device id appears twice")
        if not gpus:
            raise InvalidDocument("assigned.gpus: empty")
        return Assignment(
            node=d.string(top, "node", "assigned"),
            tenant=d.string(top, "tenant", "assigned"),
            assigned_at=d.string(top, "assignedAt", "assigned"),
            gpus=tuple(gpus),
            containers=tuple(containers),
        )


def _ids(o: Any, where: str) -> tuple[str, ...]:
    ids = d.lst(o.get("deviceIds"), f"{where}.deviceIds")
    if not all(isinstance(i, str) for i in ids):
        raise InvalidDocument(f"{where}.deviceIds: every id must be a string")
    return tuple(ids)
