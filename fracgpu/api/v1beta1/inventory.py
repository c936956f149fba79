"""The `fracgpu.io/gpu-inventory` Node annotation: what the plugin saw on its node.

Written by the device plugin (only when it changes), read by the extender, the controller and
`fracgpu inspect`. JSON, versioned by ``version`` so that a later format can be told apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum

from fracgpu.api.v1beta1 import _decode as d
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.names import MAX_GPU_MEMORY

FORMAT_VERSION = 1
# A GPU index, NUMA node or NVLink count is a C int where NVML and the kernel report it.
MAX_SMALL = 2**31 - 1


class LinkClass(IntEnum):
    """How two GPUs talk, best first by value (higher is better)."""

    SYSTEM = 0  # across CPU sockets (SMP interconnect)
    NUMA = 1  # same NUMA node, through the host bridge
    PCIE_SWITCH = 2  # behind one PCIe switch
    NVLINK = 3


LINK_NAMES = {
    LinkClass.SYSTEM: "system",
    LinkClass.NUMA: "numa",
    LinkClass.PCIE_SWITCH: "pcie-switch",
    LinkClass.NVLINK: "nvlink",
}
_LINK_BY_NAME = {v: k for k, v in LINK_NAMES.items()}


@dataclass(frozen=True, slots=True)
class GpuLink:
    peer: str  # the other GPU's uuid
    link: LinkClass
    nvlinks: int = 0  # number of NVLink lanes between them (0 when link is not NVLINK)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    uuid: str
    index: int
    model: str  # normalised, a valid label value (see core.inventory.normalise_model)
    memory: int  # bytes
    numa: int  # -1 when unknown
    pci_bus_id: str = ""
    healthy: bool = True
    reason: str = ""  # why unhealthy, empty when healthy
    links: tuple[GpuLink, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class NodeInventoryDoc:
    gpus: tuple[GpuInfo, ...]
    node_healthy: bool = True  # False when NVML is unreachable / driver gone
    node_reason: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "nodeHealthy": self.node_healthy,
                "nodeReason": self.node_reason,
                "gpus": [
                    {
                        "uuid": g.uuid,
                        "index": g.index,
                        "model": g.model,
                        "memory": g.memory,
                        "numa": g.numa,
                        "pciBusId": g.pci_bus_id,
                        "healthy": g.healthy,
                        "reason": g.reason,
                        "links": [
                            {"peer": lk.peer, "link": LINK_NAMES[lk.link], "nvlinks": lk.nvlinks}
                            for lk in g.links
                        ],
                    }
                    for g in self.gpus
                ],
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> NodeInventoryDoc:
        top = d.versioned(text, "inventory", FORMAT_VERSION)
        gpus: list[GpuInfo] = []
        for where, g in d.objects(top.get("gpus"), "inventory.gpus"):
            links: list[GpuLink] = []
            for lw, lo in d.objects(g.get("links", []), f"{where}.links"):
                name = d.choice(lo, "link", lw, _LINK_BY_NAME)
                links.append(
                    GpuLink(
                        peer=d.string(lo, "peer", lw),
                        link=_LINK_BY_NAME[name],
                        nvlinks=d.integer(lo, "nvlinks", lw, maximum=MAX_SMALL, default=0),
                    )
                )
            uuid = d.string(g, "uuid", where)
            if not uuid or "::" in uuid:
                raise InvalidDocument(f"{where}.uuid: must be non-empty and contain no '::'")
            gpus.append(
                GpuInfo(
                    uuid=uuid,
                    index=d.integer(g, "index", where, maximum=MAX_SMALL),
                    model=d.string(g, "model", where),
                    memory=d.integer(g, "memory", where, minimum=1, maximum=MAX_GPU_MEMORY),
                    numa=d.integer(g, "numa", where, minimum=-1, maximum=MAX_SMALL, default=-1),
                    pci_bus_id=d.string(g, "pciBusId", where, default=""),
                    healthy=d.boolean(g, "healthy", where, default=True),
                    reason=d.string(g, "reason", where, default=""),
                    links=tuple(links),
                )
            )
        uuids = [g.uuid for g in gpus]
        if len(set(uuids)) != len(uuids):
            raise InvalidDocument("inventory.gpus: duplicate uuid")
        return NodeInventoryDoc(
            gpus=tuple(gpus),
            node_healthy=d.boolean(top, "nodeHealthy", "inventory", default=True),
            node_reason=d.string(top, "nodeReason", "inventory", default=""),
        )
