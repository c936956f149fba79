"""Numbers that are legal JSON or legal quantities but no real GPU, node or pod has: 2^63, 2^64, 10^30.

The placement core keeps its ledger in numpy int64 arrays; a value past int64 reaching it raised
OverflowError inside the extender's watch handler (found by tests/fuzz/test_wire_cache.py). Every
decoder refuses such a value where it reads it, naming the field, so a node is refused with the
usual "inventory annotation is invalid" reason and a pod with a reasoned failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass, NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, LABEL_ENABLED, LABEL_TENANT, MAX_GPU_MEMORY
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.cluster import ClusterState, GpuUse, NodeSpec, PodUse
from fracgpu.core.pod import decode_pod
from fracgpu.core.quantity import MAX_QUANTITY, QuantityError, parse_bytes, parse_count, parse_milli
from fracgpu.core.records import NODE_BAD_INVENTORY, host_requests, node_record, parse_list
from fracgpu.core.request import RequestError, parse_pod_request
from fracgpu.core.tenant import QuotaError, Tenants
from fracgpu.inspect.view import build_world

HUGE = [2**63, 2**64, 10**30]
HUGE_IDS = ["2^63", "2^64", "10^30"]
GI = 1024**3


# ---- JSON annotations: every integer field the ledger or the device plugin uses -------------------

def inventory_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(NodeInventoryDoc(gpus=(
        GpuInfo("GPU-a", 0, "A100", 80 * GI, 0, links=(GpuLink("GPU-b", LinkClass.NVLINK, 12),)),
        GpuInfo("GPU-b", 1, "A100", 80 * GI, 0, links=(GpuLink("GPU-a", LinkClass.NVLINK, 12),)),
    )).to_json())
    return doc


def assigned_doc() -> dict[str, Any]:
    ids = tuple(f"GPU-a::{k}" for k in range(30))
    doc: dict[str, Any] = json.loads(Assignment(node="n", tenant="ns/t", assigned_at="2026-11-22T22:17:15Z",
                                                gpus=(GpuShare("GPU-a", 30, 8 * GI, ids),),
                                                containers=(ContainerShare("c", "app", ids),)).to_json())
    return doc


def at(path: tuple[str | int, ...], value: int) -> Callable[[dict[str, Any]], None]:
    def put(doc: dict[str, Any]) -> None:
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
    return put


ANNOTATION_FIELDS = [
    ("inventory", ("gpus", 1, "memory"), "inventory.gpus[1].memory"),
    ("inventory", ("gpus", 1, "index"), "inventory.gpus[1].index"),
    ("inventory", ("gpus", 1, "numa"), "inventory.gpus[1].numa"),
    ("inventory", ("gpus", 0, "links", 0, "nvlinks"), "inventory.gpus[0].links[0].nvlinks"),
    ("assigned", ("gpus", 0, "memory"), "assigned.gpus[0].memory"),
]


@pytest.mark.parametrize("value", HUGE, ids=HUGE_IDS)
@pytest.mark.parametrize(("doc", "path", "field"), ANNOTATION_FIELDS, ids=[f for _, _, f in ANNOTATION_FIELDS])
def test_an_annotation_integer_past_its_bound_is_an_invalid_document(doc: str, path: tuple[str | int, ...],
                                                                    field: str, value: int) -> None:
    body = inventory_doc() if doc == "inventory" else assigned_doc()
    at(path, value)(body)
    parse = NodeInventoryDoc.from_json if doc == "inventory" else Assignment.from_json
    with pytest.raises(InvalidDocument) as e:
        parse(json.dumps(body))
    assert str(e.value).startswith(f"{field}: must be <= "), str(e.value)
    assert str(value) in str(e.value)


def test_one_pebibyte_of_gpu_memory_is_the_largest_accepted_and_fits_the_ledger() -> None:
    """A GPU, a node and 2,000 pods on them at the bounds: the ledger's int64 sums stay exact."""
    inv, assigned = inventory_doc(), assigned_doc()
    at(("gpus", 0, "memory"), MAX_GPU_MEMORY)(inv)
    at(("gpus", 0, "memory"), MAX_GPU_MEMORY)(assigned)
    gpus = NodeInventoryDoc.from_json(json.dumps(inv)).gpus
    share = Assignment.from_json(json.dumps(assigned)).gpus[0]
    state = ClusterState()
    state.upsert_node(NodeSpec("n", gpus, cpu_milli=MAX_QUANTITY // 1000 * 1000, memory_bytes=MAX_QUANTITY))
    for i in range(2000):
        state.add_pod(f"p{i}", PodUse("n", (GpuUse(share.uuid, 1, share.memory),), MAX_QUANTITY // 1000 * 1000,
                                      MAX_QUANTITY))
    assert int(state.free_memory[0, 0]) == MAX_GPU_MEMORY - 2000 * MAX_GPU_MEMORY
    assert int(state.mem_free[0]) == MAX_QUANTITY - 2000 * MAX_QUANTITY
    for doc, parse in ((inv, NodeInventoryDoc.from_json), (assigned, Assignment.from_json)):
        at(("gpus", 0, "memory"), MAX_GPU_MEMORY + 1)(doc)
        with pytest.raises(InvalidDocument):
            parse(json.dumps(doc))


# ---- quantities: pod requests, node allocatable, quotas ------------------------------------------

QUANTITY_TEXTS = [str(2**63), str(2**64), "1e30"]


@pytest.mark.parametrize("text", QUANTITY_TEXTS)
@pytest.mark.parametrize(("parse", "unit"), [(parse_bytes, "4Pi"), (parse_count, str(MAX_QUANTITY)),
                                             (parse_milli, str(MAX_QUANTITY // 1000))],
                         ids=["bytes", "count", "milli"])
def test_a_quantity_past_two_to_the_52_is_refused_naming_it(parse: Callable[..., int], unit: str, text: str) -> None:
    with pytest.raises(QuantityError) as e:
        parse(text, what="spec.x")
    assert str(e.value) == f"spec.x is too large, got {text!r} (at most {unit})"
    assert parse(unit) in (MAX_QUANTITY, MAX_QUANTITY // 1000 * 1000)  # the bound itself is accepted


def requesting(**resources: str) -> dict[str, Any]:
    res = {"fracgpu.io/vgpu-core": "50", **resources}
    return {"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": res, "limits": dict(res)}}]}}


def containers(n: int, **resources: str) -> dict[str, Any]:
    res = {"fracgpu.io/vgpu-core": "10", **resources}
    return {"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": f"c{i}", "resources": {"requests": res, "limits": dict(res)}}
                                    for i in range(n)]}}


@dataclass(frozen=True)
class PodCase:
    name: str
    pod: dict[str, Any]
    error: str


POD_CASES = [
    *[PodCase(f"vgpu-memory {t}", requesting(**{"fracgpu.io/vgpu-memory": t}),
              f"container c: fracgpu.io/vgpu-memory is too large, got {t!r} (at most 1Pi)") for t in QUANTITY_TEXTS],
    PodCase("vgpu-memory 2^70", requesting(**{"fracgpu.io/vgpu-memory": str(2**70)}),
            f"container c: fracgpu.io/vgpu-memory is too large, got '{2**70}' (at most 1Pi)"),
    PodCase("vgpu-memory 2 PiB", requesting(**{"fracgpu.io/vgpu-memory": "2Pi"}),
            "container c: fracgpu.io/vgpu-memory is too large, got '2Pi' (at most 1Pi)"),
    *[PodCase(f"cpu {t}", requesting(cpu=t), f"container c: cpu is too large, got {t!r} (at most {MAX_QUANTITY // 1000})")
      for t in QUANTITY_TEXTS],
    *[PodCase(f"memory {t}", requesting(memory=t), f"container c: memory is too large, got {t!r} (at most 4Pi)")
      for t in QUANTITY_TEXTS],
    *[PodCase(f"vgpu-core {t}", requesting(**{"fracgpu.io/vgpu-core": t}),
              f"container c: fracgpu.io/vgpu-core is too large, got {t!r} (at most {MAX_QUANTITY})")
      for t in QUANTITY_TEXTS],
    # each container within its bound, the pod's sum past it
    PodCase("vgpu-memory of 3 containers", containers(3, **{"fracgpu.io/vgpu-memory": "512Ti"}),
            "pod: fracgpu.io/vgpu-memory adds up to 1.5Pi, more than a GPU has (at most 1Pi)"),
    PodCase("memory of 3 containers", containers(3, memory="2Pi"),
            "pod: memory adds up to 6Pi, more than 4Pi"),
    PodCase("cpu of 3 containers", containers(3, cpu=str(MAX_QUANTITY // 2000)),
            f"pod: cpu adds up to {3 * (MAX_QUANTITY // 2000)}, more than {MAX_QUANTITY // 1000}"),
]


@pytest.mark.parametrize("case", POD_CASES, ids=lambda c: c.name)
def test_a_pod_request_past_its_bound_is_a_request_error_naming_the_field(case: PodCase) -> None:
    with pytest.raises(RequestError) as e:
        parse_pod_request(decode_pod(case.pod))
    assert str(e.value) == case.error


@pytest.mark.parametrize("text", QUANTITY_TEXTS)
@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_host_requests_past_the_bound_count_as_unreadable(resource: str, text: str) -> None:
    """A CPU-only pod (no GPU request to refuse) is charged nothing for what cannot be read, as for
    any other unreadable quantity; the kubelet refuses it anyway."""
    spec = {"containers": [{"name": "c", "resources": {"requests": {resource: text}}}]}
    assert host_requests(decode_pod({"spec": spec})) == (0, 0)


def test_host_requests_adding_up_past_the_bound_count_as_unreadable() -> None:
    spec = {"containers": [{"name": f"c{i}", "resources": {"requests": {"memory": "2Pi", "cpu": "1"}}}
                           for i in range(3)]}
    assert host_requests(decode_pod({"spec": spec})) == (3000, 0)


@pytest.mark.parametrize("text", QUANTITY_TEXTS)
@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_node_allocatable_past_the_bound_counts_as_unreadable(resource: str, text: str) -> None:
    obj = {"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "8", "memory": "32Gi", resource: text}}}
    rec = node_record(obj)
    assert (rec.cpu_milli, rec.memory_bytes) == (0, 0)


QUOTA_CASES = [*[("fracgpu.io/vgpu-memory", t, "4Pi") for t in QUANTITY_TEXTS],
               # the CRD's pattern for vgpu-core is digits only
               *[("fracgpu.io/vgpu-core", str(v), str(MAX_QUANTITY)) for v in HUGE]]


@pytest.mark.parametrize(("resource", "text", "bound"), QUOTA_CASES, ids=[f"{r} {t}" for r, t, _ in QUOTA_CASES])
def test_a_tenant_quota_past_the_bound_is_unusable_naming_the_field(resource: str, text: str, bound: str) -> None:
    quota = TenantQuota.from_dict({"metadata": {"name": "q"}, "spec": {
        "namespaceSelector": {"matchLabels": {LABEL_TENANT: "t"}}, "hard": {resource: text}}})
    limits = Tenants([], [quota]).limits("tq/q")
    assert isinstance(limits, QuotaError)
    assert limits.message == f"TenantQuota q spec.hard[{resource}] is too large, got {text!r} (at most {bound})"



# ---- the simulator reads snapshots with the same decoders ------------------------------------------

def test_a_snapshot_with_huge_numbers_loads_with_the_node_refused() -> None:
    inv = inventory_doc()
    inv["gpus"][1]["memory"] = 2**64
    assigned = assigned_doc()
    assigned["gpus"][0]["memory"] = 10**30
    ok = NodeInventoryDoc(gpus=(GpuInfo("GPU-a", 0, "A100", 80 * GI, 0),)).to_json()
    doc = {"kind": "List", "items": [
        {"kind": "Node", "metadata": {"name": "bad", "labels": {LABEL_ENABLED: "true"},
                                      "annotations": {ANN_INVENTORY: json.dumps(inv)}},
         "status": {"allocatable": {"cpu": "1e30", "memory": str(2**64)}}},
        {"kind": "Node", "metadata": {"name": "n", "labels": {LABEL_ENABLED: "true"}, "annotations": {ANN_INVENTORY: ok}},
         "status": {"allocatable": {"cpu": "8", "memory": "32Gi"}}},
        {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "annotations": {ANN_ASSIGNED: json.dumps(assigned)}},
         "spec": {"nodeName": "n", "containers": [{"name": "c", "resources": {
             "requests": {"fracgpu.io/vgpu-core": "30", "memory": "1e30"}}}]},
         "status": {"phase": "Running"}},
    ]}
    world = build_world(parse_list(doc))
    assert world.nodes["bad"].unusable() == NODE_BAD_INVENTORY
    assert world.nodes["bad"].inventory_error.startswith("inventory.gpus[1].memory: must be <= ")
    (rec,) = world.pods
    assert rec.assignment is None and rec.assignment_error.startswith("assigned.gpus[0].memory: must be <= ")
    assert rec.request_error == "container c: memory is too large, got '1e30' (at most 4Pi)"
