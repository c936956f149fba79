"""The inventory and assignment annotations: round trips, and broken documents refused with a place."""

from __future__ import annotations

import pytest

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass, NodeInventoryDoc
from fracgpu.core.inventory import link_between, normalise_model, split_device_id

GI = 1024**3


@pytest.mark.parametrize(
    ("nvml", "model"),
    [("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"), ("Tesla V100-SXM2-16GB", "V100-SXM2-16GB"),
     ("NVIDIA GeForce RTX 4090", "GeForce-RTX-4090"), ("NVIDIA H100 80GB HBM3", "H100-80GB-HBM3"), ("", "unknown")],
)
def test_normalise_model(nvml: str, model: str) -> None:
    assert normalise_model(nvml) == model


def test_inventory_round_trip_and_links() -> None:
    doc = NodeInventoryDoc(gpus=(
        GpuInfo("GPU-a", 0, "A100", 80 * GI, 0, "0000:07:00.0", links=(GpuLink("GPU-b", LinkClass.NVLINK, 12),)),
        GpuInfo("GPU-b", 1, "A100", 80 * GI, 0, "0000:0f:00.0", healthy=False, reason="xid 79"),
    ))
    assert NodeInventoryDoc.from_json(doc.to_json()) == doc
    assert link_between(*doc.gpus) == LinkClass.NVLINK


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected an object"),
        ('{"version": 2, "gpus": []}', "unsupported 2"),
        ('{"version": 1}', "inventory.gpus: expected a list"),
        ('{"version": 1, "gpus": [{"uuid": "g", "index": 0, "model": "T4", "memory": -1}]}', "memory: must be >= 1"),
        ('{"version": 1, "gpus": [{"uuid": "g", "index": "0", "model": "T4", "memory": 1}]}', "index: expected an integer"),
        ('{"version": 1, "gpus": [{"uuid": "a::1", "index": 0, "model": "T4", "memory": 1}]}', "no '::'"),
        ('{"version": 1, "gpus": [{"uuid": "g", "index": 0, "model": "T4", "memory": 1, '
         '"links": [{"peer": "h", "link": "warp"}]}]}', "link: one of system, numa, pcie-switch, nvlink, got 'warp'"),
        ('{"version": 1, "gpus": [{"uuid": "g", "index": 0, "model": "T4", "memory": 1},'
         '{"uuid": "g", "index": 1, "model": "T4", "memory": 1}]}', "duplicate uuid"),
    ],
)
def test_broken_inventory_is_refused(text: str, where: str) -> None:
    with pytest.raises(InvalidDocument, match=where):
        NodeInventoryDoc.from_json(text)


def test_assignment_round_trip() -> None:
    ids = tuple(f"GPU-a::{k}" for k in range(3))
    a = Assignment("n1", "ns/team", "2026-11-23T09:00:00Z", (GpuShare("GPU-a", 3, GI, ids),),
                   (ContainerShare("c", "app", ids),))
    assert Assignment.from_json(a.to_json()) == a
    assert a.device_ids == frozenset(ids) and a.cores == 3


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"version": 1, "node": "n", "tenant": "t", "assignedAt": "x", "gpus": []}', "empty"),
        ('{"version": 1, "node": "n", "tenant": "t", "assignedAt": "x", '
         '"gpus": [{"uuid": "a", "cores": 2, "memory": 1, "deviceIds": ["a::1"]}]}', "1 ids for 2 cores"),
        ('{"version": 1, "node": "n", "tenant": "t", "assignedAt": "x", '
         '"gpus": [{"uuid": "a", "cores": 1, "memory": 1, "deviceIds": ["b::1"]}]}', "not of GPU a"),
        ('{"version": 1, "node": "n", "tenant": "t", "assignedAt": "x", '
         '"gpus": [{"uuid": "a", "cores": 101, "memory": 1, "deviceIds": []}]}', "at most 100"),
        ('{"version": 1, "node": "n", "tenant": "t", "assignedAt": "x", '
         '"gpus": [{"uuid": "a", "cores": 1, "memory": 1, "deviceIds": ["a::1"]}], '
         '"containers": [{"name": "c", "kind": "daemon", "deviceIds": []}]}', "kind"),
    ],
)
def test_broken_assignment_is_refused(text: str, where: str) -> None:
    with pytest.raises(InvalidDocument, match=where):
        Assignment.from_json(text)


@pytest.mark.parametrize(("i", "parsed"), [("GPU-a::7", ("GPU-a", 7)), ("GPU-a::100", None), ("GPU-a", None),
                                            ("::3", None), ("GPU-a::x", None)])
def test_split_device_id(i: str, parsed: tuple[str, int] | None) -> None:
    assert split_device_id(i) == parsed
