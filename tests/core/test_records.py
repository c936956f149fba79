"""Slim records from plain objects and the snapshot List format."""

from __future__ import annotations

import pytest

from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_INVENTORY, LABEL_ENABLED, LABEL_ZONE
from fracgpu.core.pod import decode_pod
from fracgpu.core.records import (
    NODE_BAD_INVENTORY,
    NODE_GPUS_UNREACHABLE,
    NODE_NO_INVENTORY,
    NODE_NOT_OPTED_IN,
    host_requests,
    node_record,
    parse_list,
    pod_record,
)
from fracgpu.core.registry import PolicyConfigError, parse_policies

INV = NodeInventoryDoc(gpus=(GpuInfo("g0", 0, "T4", 16 * 1024**3, 0),)).to_json()


def node(labels: dict[str, str], inv: str | None = INV, taints: list[dict[str, str]] | None = None) -> dict[str, object]:
    ann = {ANN_INVENTORY: inv} if inv is not None else {}
    return {"kind": "Node", "metadata": {"name": "n", "labels": labels, "annotations": ann},
            "spec": {"taints": taints or []}, "status": {"allocatable": {"cpu": "8", "memory": "32Gi"}}}


ON = {LABEL_ENABLED: "true", LABEL_ZONE: "z1"}


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (node(ON), ""),
        (node({LABEL_ZONE: "z1"}), NODE_NOT_OPTED_IN),
        (node(ON, inv=None), NODE_NO_INVENTORY),
        (node(ON, inv="{not json"), NODE_BAD_INVENTORY),
        (node(ON, inv=NodeInventoryDoc(gpus=(), node_healthy=False).to_json()), NODE_GPUS_UNREACHABLE),
        (node(ON, taints=[{"key": "fracgpu.io/gpu-failed", "effect": "NoSchedule"}]),
         "node is tainted fracgpu.io/gpu-failed:NoSchedule"),
        (node(ON, taints=[{"key": "fracgpu.io/gpu-failed", "effect": "PreferNoSchedule"}]), ""),
    ],
    ids=["usable", "not opted in", "no inventory", "broken inventory", "nvml down", "tainted", "soft taint"],
)
def test_node_usability(obj: dict[str, object], reason: str) -> None:
    rec = node_record(obj)
    assert rec.unusable() == reason
    assert (rec.zone, rec.cpu_milli, rec.memory_bytes) == ("z1", 8000, 32 * 1024**3)


def test_unchanged_inventory_is_not_parsed_again() -> None:
    first = node_record(node(ON))
    again = node_record(node(ON), first)
    assert again.inventory is first.inventory


def test_pod_records() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "deletionTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"nodeName": "n", "priority": 5, "initContainers": [
               {"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
               "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "fracgpu.io/vgpu-core": "20"}}}]},
           "status": {"phase": "Running"}}
    rec = pod_record(pod)
    assert (rec.key, rec.node, rec.priority, rec.deleting, rec.finished) == ("ns/p", "n", 5, True, False)
    assert rec.request is not None and rec.request.cores == 20
    assert (rec.cpu_milli, rec.memory_bytes) == (2000, 1024**3)
    assert rec.pod is None  # bound pods keep no decoded pod
    bad = pod_record({"metadata": {"name": "b"}, "spec": {"containers": [
        {"name": "c", "resources": {"requests": {"fracgpu.io/vgpu-core": "150"}}}]}})
    assert bad.request is None and "neither a share" in bad.request_error and bad.pod is not None


def test_host_requests_tolerate_garbage() -> None:
    pod = decode_pod({"spec": {"containers": [{"resources": {"requests": {"cpu": "lots"}}}, "x"]}})
    assert host_requests(pod) == (0, 0)


def test_parse_list_by_kind_and_errors() -> None:
    doc = parse_list({"kind": "List", "items": [node(ON), {"kind": "Pod", "metadata": {"name": "p"}},
                                                {"kind": "Namespace", "metadata": {"name": "ns"}}]})
    assert (len(doc.nodes), len(doc.pods), len(doc.namespaces)) == (1, 1, 1)
    assert len(parse_list([{"kind": "PodList", "items": [{"kind": "Pod", "metadata": {"name": "a"}}]},
                           {"kind": "Node", "metadata": {"name": "n"}}]).pods) == 1
    with pytest.raises(InvalidDocument, match=r"items\[0\]\.kind"):
        parse_list({"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "s"}}]})
    with pytest.raises(InvalidDocument, match=r"metadata\.name"):
        parse_list({"kind": "List", "items": [{"kind": "Pod", "metadata": {}}]})


@pytest.mark.parametrize(
    ("text", "error"),
    [("nope", "unknown policy"), ("binpack=x", "not a number"), ("binpack=-1", "positive"),
     ("binpack,binpack", "twice"), ("", "empty")],
)
def test_policy_registry_refuses_bad_lists(text: str, error: str) -> None:
    with pytest.raises(PolicyConfigError, match=error):
        parse_policies(text)


def test_policy_registry_builds_weighted_list() -> None:
    ps = parse_policies("binpack=2, topology")
    assert [(p.policy.name, p.weight) for p in ps] == [("binpack", 2.0), ("topology", 1.0)]
