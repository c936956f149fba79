"""DRA objects in a snapshot read as fracgpu's (fracgpu.core.dralower): slices -> inventory, claims -> requests
and reservations, and every shape that has no vgpu equivalent refused with its reason."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, LABEL_ENABLED
from fracgpu.core.draclaims import Demand, request_demand
from fracgpu.core.dralower import lower_dra
from fracgpu.core.draslices import (
    SliceOptions,
    SliceReadError,
    build_slices,
    device_names,
    gpus_from_devices,
    node_devices,
)
from fracgpu.core.records import parse_list
from fracgpu.inspect.view import build_world
from fracgpu.sim.pending import pending_whatif

Obj = dict[str, Any]
GI = 2**30


def gpu(i: int, *, memory: int = 80 * GI, numa: int = 0, bus: str = "", healthy: bool = True, reason: str = "",
        nvlink: tuple[int, ...] = ()) -> GpuInfo:
    return GpuInfo(uuid=uuid(i), index=i, model="A100-SXM4-80GB", memory=memory, numa=numa, pci_bus_id=bus,
                   healthy=healthy, reason=reason, links=tuple(GpuLink(uuid(p), LinkClass.NVLINK, 1) for p in nvlink))


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-0000-0000-000000000000"


# -- inventory -> slices -> inventory --------------------------------------------------------------------

ROUND_TRIPS = {
    "one healthy GPU": [gpu(0)],
    "an NVLinked pair and a lone GPU": [gpu(0, nvlink=(1,)), gpu(1, nvlink=(0,)), gpu(2)],
    "no NUMA affinity, a PCI bus": [gpu(0, numa=-1, bus="0000:07:00.0")],
    "an unhealthy GPU keeps its reason": [gpu(0), gpu(1, healthy=False, reason="XID-79")],
    "a small GPU": [gpu(0, memory=512 * 2**20)],
    "two NVLink domains": [gpu(0, nvlink=(1,)), gpu(1, nvlink=(0,)), gpu(2, nvlink=(3,)), gpu(3, nvlink=(2,))],
}


@pytest.mark.parametrize("gpus", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_inventory_survives_slices_and_back(gpus: list[GpuInfo]) -> None:
    slices = build_slices("n1", node_devices(gpus), 1)
    assert tuple(gpus_from_devices([d for s in slices for d in s.spec.devices])) == tuple(gpus)


def test_a_pool_cut_into_several_slices_reads_back_whole() -> None:
    gpus = [gpu(i) for i in range(5)]
    slices = [s.to_json() for s in build_slices("n1", node_devices(gpus), 3, opts=SliceOptions(devices_per_slice=2))]
    assert len(slices) == 3
    lowered = lower_dra([dra_node("n1")], [], slices, [], [])
    assert tuple(build_world(parse_list([dra_node("n1"), *slices])).nodes["n1"].inventory.gpus  # type: ignore[union-attr]
                 ) == tuple(gpus)
    assert lowered.dra_nodes == {"n1"}


BAD_DEVICES: dict[str, tuple[dict[str, Any], str]] = {
    "cores not 100": ({"capacity": {"cores": {"value": "50"}}}, "capacity cores is 50"),
    "memory not whole": ({"capacity": {"memory": {"value": "0.5"}}}, "capacity memory must be a whole"),
    "memory a word": ({"capacity": {"memory": {"value": "lots"}}}, "capacity memory must be a whole"),
    "no uuid": ({"attributes": {"uuid": None}}, "attribute uuid"),
    "uuid with ::": ({"attributes": {"uuid": {"string": "GPU-a::b"}}}, "attribute uuid"),
    "index a string": ({"attributes": {"index": {"string": "0"}}}, "attribute index must be an int"),
}


@pytest.mark.parametrize(("patch", "why"), BAD_DEVICES.values(), ids=BAD_DEVICES.keys())
def test_a_device_that_is_no_fracgpu_gpu_makes_the_node_unusable_with_the_reason(patch: Obj, why: str) -> None:
    s = slices_of("n1", [gpu(0)])[0]
    dev = s["spec"]["devices"][0]
    for part, values in patch.items():
        for k, v in values.items():
            if v is None:
                del dev[part][k]
            else:
                dev[part][k] = {**dev[part].get(k, {}), **v} if part == "capacity" else v
    spec = build_world(parse_list([dra_node("n1"), s])).state.specs[0]
    assert spec is not None
    assert spec.unusable.startswith("node's gpu.fracgpu.io ResourceSlices cannot be read as GPUs: ")
    assert why in spec.unusable


def test_two_devices_of_one_gpu_are_refused() -> None:
    with pytest.raises(SliceReadError, match="same GPU uuid"):
        devices = node_devices([gpu(0)])
        gpus_from_devices([devices[0], devices[0]])


def test_an_incomplete_pool_is_not_used_and_an_old_generation_is_ignored() -> None:
    cut = slices_of("n1", [gpu(0), gpu(1)], per=1)
    spec = build_world(parse_list([dra_node("n1"), cut[0]])).state.specs[0]
    assert spec is not None and "1 of 2 slices of generation 1" in spec.unusable
    old = slices_of("n1", [gpu(5)], generation=1)[0]
    old["metadata"]["name"] = "old"
    world = build_world(parse_list([dra_node("n1"), old, *slices_of("n1", [gpu(0)], generation=2)]))
    assert [g.uuid for g in world.nodes["n1"].inventory.gpus] == [uuid(0)]  # type: ignore[union-attr]


def test_a_node_with_its_own_inventory_annotation_keeps_it() -> None:
    node = dra_node("n1")
    node["metadata"]["annotations"] = {ANN_INVENTORY: '{"version":1,"gpus":[]}'}
    doc = parse_list([node, *slices_of("n1", [gpu(0)])])
    assert doc.nodes[0] == node and not doc.dra_nodes


def test_only_the_dra_label_opts_a_slice_node_in() -> None:
    unlabelled = dra_node("n1")
    del unlabelled["metadata"]["labels"]
    doc = parse_list([unlabelled, *slices_of("n1", [gpu(0)])])
    assert LABEL_ENABLED not in doc.nodes[0]["metadata"]["labels"]
    assert doc.nodes[0]["metadata"]["annotations"][ANN_INVENTORY]


# -- claim requests -> vgpu requests ----------------------------------------------------------------------

MAPPED: dict[str, tuple[Obj, Demand]] = {
    "a share": ({"deviceClassName": "vgpu.fracgpu.io", "capacity": {"requests": {"cores": "30", "memory": "20Gi"}}},
                Demand(shares=((30, 20 * GI),))),
    "capacity names with the driver's domain": (
        {"deviceClassName": "vgpu.fracgpu.io",
         "capacity": {"requests": {"gpu.fracgpu.io/cores": "5", "gpu.fracgpu.io/memory": "1Gi"}}},
        Demand(shares=((5, GI),))),
    "memory only: cores default to all 100": (
        {"deviceClassName": "vgpu.fracgpu.io", "capacity": {"requests": {"memory": "10Gi"}}},
        Demand(shares=((100, 10 * GI),))),
    "a fraction of a core rounds up to the step": (
        {"deviceClassName": "vgpu.fracgpu.io", "capacity": {"requests": {"cores": "500m", "memory": "1Gi"}}},
        Demand(shares=((1, GI),))),
    "one whole GPU": ({"deviceClassName": "gpu.fracgpu.io"}, Demand(whole=1)),
    "three whole GPUs": ({"deviceClassName": "gpu.fracgpu.io", "allocationMode": "ExactCount", "count": 3},
                         Demand(whole=3)),
    "the shared class without capacity: the device whole": ({"deviceClassName": "vgpu.fracgpu.io"},
                                                            Demand(whole=1)),
}


@pytest.mark.parametrize(("exactly", "demand"), MAPPED.values(), ids=MAPPED.keys())
def test_claim_requests_map_to_vgpu_requests(exactly: Obj, demand: Demand) -> None:
    assert request_demand({"name": "gpu", "exactly": exactly}, "r") == demand


SHARE: Obj = {"deviceClassName": "vgpu.fracgpu.io", "capacity": {"requests": {"cores": "30", "memory": "20Gi"}}}
HOSTILE_REQUESTS: dict[str, tuple[Any, str]] = {
    "another driver's class": ({"name": "nic", "exactly": {"deviceClassName": "nic.example.com"}},
                               "asks for device class 'nic.example.com'"),
    "a CEL selector": ({"name": "g", "exactly": {**SHARE, "selectors": [{"cel": {"expression": "true"}}]}},
                       "CEL selectors"),
    "prioritized alternatives": ({"name": "g", "firstAvailable": [{"name": "a", **SHARE}]}, "firstAvailable"),
    "all devices": ({"name": "g", "exactly": {"deviceClassName": "gpu.fracgpu.io", "allocationMode": "All"}},
                    "allocationMode All"),
    "admin access": ({"name": "g", "exactly": {**SHARE, "adminAccess": True}}, "adminAccess"),
    "taint tolerations": ({"name": "g", "exactly": {**SHARE, "tolerations": [{"operator": "Exists"}]}},
                          "tolerations"),
    "cores without memory": ({"name": "g", "exactly": {"deviceClassName": "vgpu.fracgpu.io",
                                                       "capacity": {"requests": {"cores": "30"}}}},
                             "30 cores without memory"),
    "more than a GPU's cores": ({"name": "g", "exactly": {"deviceClassName": "vgpu.fracgpu.io",
                                                          "capacity": {"requests": {"cores": "150", "memory": "1Gi"}}}},
                                "asks for 150 cores"),
    "memory not a quantity": ({"name": "g", "exactly": {"deviceClassName": "vgpu.fracgpu.io",
                                                        "capacity": {"requests": {"cores": "1", "memory": "lots"}}}},
                              "memory 'lots' is not a quantity"),
    "cores a boolean": ({"name": "g", "exactly": {"deviceClassName": "vgpu.fracgpu.io",
                                                  "capacity": {"requests": {"cores": True, "memory": "1Gi"}}}},
                        "cores is not a quantity"),
    "an unknown capacity": ({"name": "g", "exactly": {"deviceClassName": "vgpu.fracgpu.io",
                                                      "capacity": {"requests": {"bandwidth": "1"}}}},
                            "requests capacity bandwidth"),
    "capacity requests a list": ({"name": "g", "exactly": {"deviceClassName": "vgpu.fracgpu.io",
                                                           "capacity": {"requests": ["cores"]}}},
                                 "capacity.requests is not a map"),
    "count a string": ({"name": "g", "exactly": {"deviceClassName": "gpu.fracgpu.io", "count": "2"}},
                       "count must be 1..64"),
    "count huge": ({"name": "g", "exactly": {"deviceClassName": "gpu.fracgpu.io", "count": 10**30}},
                   "count must be 1..64"),
    "two shares in one request": ({"name": "g", "exactly": {**SHARE, "count": 2}}, "asks for 2 shares"),
    "exactly a string": ({"name": "g", "exactly": "gpu"}, "has no 'exactly'"),
    "a request that is a list": ([1, 2], "is not an object"),
}


def claim_pod(name: str, *, template: str = "", claim: str = "", node: str = "",
              generated: str = "") -> Obj:
    ref: Obj = {"name": "gpu"}
    if template:
        ref["resourceClaimTemplateName"] = template
    if claim:
        ref["resourceClaimName"] = claim
    spec: Obj = {"resourceClaims": [ref], "containers": [{"name": "c", "resources": {"claims": [{"name": "gpu"}]}}]}
    status: Obj = {"phase": "Running" if node else "Pending"}
    if node:
        spec["nodeName"] = node
    if generated:
        status["resourceClaimStatuses"] = [{"name": "gpu", "resourceClaimName": generated}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
            "status": status}


def template(name: str, devices: Any) -> Obj:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"spec": {"devices": devices}}}


def dra_node(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"fracgpu.io/dra": "true"}},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi"}}}


def slices_of(node: str, gpus: list[GpuInfo], *, generation: int = 1, per: int = 64) -> list[Obj]:
    return [s.to_json() for s in build_slices(node, node_devices(gpus), generation,
                                               opts=SliceOptions(devices_per_slice=per))]


def pending_reasons(objs: list[Obj]) -> dict[str, str]:
    world = build_world(parse_list([dra_node("n1"), *slices_of("n1", [gpu(0), gpu(1)]), *objs]))
    return {r["pod"]: r.get("reason", "fits") for r in pending_whatif(world, "fracgpu")}


@pytest.mark.parametrize(("request_", "why"), HOSTILE_REQUESTS.values(), ids=HOSTILE_REQUESTS.keys())
def test_a_claim_request_without_a_vgpu_equivalent_is_refused_with_its_reason(request_: Any, why: str) -> None:
    good = {"name": "ok", "exactly": SHARE}
    reasons = pending_reasons([template("t", {"requests": [good, request_]} if "nic" in str(request_) else
                                         {"requests": [request_]}), claim_pod("p", template="t")])
    assert reasons["ns/p"].startswith("claims not understood: template ns/t request ")
    assert why in reasons["ns/p"]


HOSTILE_PODS: dict[str, tuple[list[Obj], str]] = {
    "a missing template": ([claim_pod("p", template="gone")], "template ns/gone is not in the snapshot"),
    "a missing claim": ([claim_pod("p", claim="gone")], "claim ns/gone is not in the snapshot"),
    "a claim entry naming nothing": ([{**claim_pod("p"), "spec": {"resourceClaims": [{"name": "gpu"}],
                                                                  "containers": [{"name": "c"}]}}],
                                     "spec.resourceClaims[gpu] names no claim or template"),
    "resourceClaims not a list": ([{**claim_pod("p"), "spec": {"resourceClaims": {"name": "gpu"},
                                                               "containers": [{"name": "c"}]}}],
                                  "spec.resourceClaims is not a list"),
    "claim constraints": ([template("t", {"requests": [{"name": "g", "exactly": SHARE}],
                                          "constraints": [{"matchAttribute": "gpu.fracgpu.io/nvlinkDomain"}]}),
                           claim_pod("p", template="t")], "has constraints"),
    "opaque config": ([template("t", {"requests": [{"name": "g", "exactly": SHARE}],
                                      "config": [{"opaque": {"driver": "gpu.fracgpu.io", "parameters": {}}}]}),
                       claim_pod("p", template="t")], "has config"),
    "no requests": ([template("t", {"requests": []}), claim_pod("p", claim="c"),
                     {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                      "metadata": {"name": "c", "namespace": "ns"},
                      "spec": {"devices": {"requests": [{"name": "g", "exactly": SHARE}]}}},
                     claim_pod("q", template="t")], "template ns/t has no requests"),
    "devices not an object": ([template("t", "gpu"), claim_pod("p", template="t")], "has no spec.devices"),
    "a share and a whole GPU": ([template("t", {"requests": [{"name": "a", "exactly": SHARE},
                                                             {"name": "b", "exactly": {"deviceClassName":
                                                                                       "gpu.fracgpu.io"}}]}),
                                 claim_pod("p", template="t")], "1 GPU share(s) and 1 whole GPU(s)"),
}


@pytest.mark.parametrize(("objs", "why"), HOSTILE_PODS.values(), ids=HOSTILE_PODS.keys())
def test_pods_whose_claims_cannot_be_read_are_refused_with_the_reason(objs: list[Obj], why: str) -> None:
    reasons = pending_reasons(objs)
    assert any(why in r for r in reasons.values()), reasons
    assert all(r.startswith("claims not understood: ") or r == "fits" for r in reasons.values())


def test_a_pod_asking_vgpu_core_and_a_claim_is_refused() -> None:
    pod = claim_pod("p", template="t")
    pod["spec"]["containers"][0]["resources"]["limits"] = {"fracgpu.io/vgpu-core": "10"}
    reasons = pending_reasons([template("t", {"requests": [{"name": "g", "exactly": SHARE}]}), pod])
    assert reasons["ns/p"] == "the pod asks for fracgpu.io/vgpu-core and for gpu.fracgpu.io claims; one or the other"


def test_pods_with_claims_of_other_drivers_only_are_not_gpu_pods() -> None:
    doc = parse_list([template("t", {"requests": [{"name": "nic", "exactly": {"deviceClassName": "nic.example"}}]}),
                      claim_pod("p", template="t")])
    assert not doc.dra_pods and not doc.dra_pod_problems and doc.pods[0]["spec"] == claim_pod("p", template="t")["spec"]


# -- allocated claims -> reservations ----------------------------------------------------------------------


def allocated_claim(name: str, results: list[Obj] | None) -> Obj:
    status: Obj = {} if results is None else {"allocation": {"devices": {"results": results}}}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": SHARE}]}}, "status": status}


DEV0 = device_names([gpu(0)])[uuid(0)]


def result(**kw: Any) -> Obj:
    return {"request": "gpu", "driver": "gpu.fracgpu.io", "pool": "n1", "device": DEV0, **kw}


def test_allocated_claims_are_the_pods_reservation_summed_per_gpu() -> None:
    pods = [claim_pod("p", claim="c1", node="n1"), claim_pod("q", claim="c2", node="n1")]
    pods[0]["spec"]["resourceClaims"].append({"name": "more", "resourceClaimName": "c3"})
    claims = [allocated_claim("c1", [result(consumedCapacity={"cores": "30", "memory": "20Gi"})]),
              allocated_claim("c2", [result(consumedCapacity={"gpu.fracgpu.io/cores": "20",
                                                              "gpu.fracgpu.io/memory": "10Gi"})]),
              allocated_claim("c3", [result(consumedCapacity={"cores": "10", "memory": "1Gi"}),
                                     result(device=device_names([gpu(1)])[uuid(1)])])]
    doc = parse_list([dra_node("n1"), *slices_of("n1", [gpu(0), gpu(1)]), *pods, *claims])
    held = {p["metadata"]["name"]: Assignment.from_json(p["metadata"]["annotations"][ANN_ASSIGNED]) for p in doc.pods}
    assert [(g.uuid, g.cores, g.memory) for g in held["p"].gpus] == [(uuid(0), 40, 21 * GI), (uuid(1), 100, 80 * GI)]
    assert [(g.uuid, g.cores, g.memory) for g in held["q"].gpus] == [(uuid(0), 20, 10 * GI)]
    world = build_world(doc)
    assert int(world.state.free_cores[0, 0]) == 40 and int(world.state.free_cores[0, 1]) == 0


BAD_ALLOCATIONS: dict[str, tuple[list[Obj] | None, str]] = {
    "not allocated": (None, "claim ns/c is not allocated but its pod is bound to n1"),
    "another driver's device": ([result(driver="nic.example")], "holds a device of driver nic.example"),
    "another node's pool": ([result(pool="n2")], "of pool n2, not of the pod's node n1"),
    "a device the node does not publish": ([result(device="gpu-9")], "holds device gpu-9, which node n1's"),
    "more cores than a GPU": ([result(consumedCapacity={"cores": "500", "memory": "1Gi"})], "consumes 500 cores"),
    "more memory than the GPU": ([result(consumedCapacity={"cores": "5", "memory": "81Gi"})], "consumes 5 cores"),
    "a broken result": ([{"request": "gpu"}], "ResourceClaim ns/c.status.allocation.devices.results[0]"),
    "two claims past 100 cores": ([result(consumedCapacity={"cores": "80", "memory": "1Gi"})] * 2,
                                  "hold 160 cores of GPU"),
}


@pytest.mark.parametrize(("results", "why"), BAD_ALLOCATIONS.values(), ids=BAD_ALLOCATIONS.keys())
def test_a_bound_pod_whose_allocation_cannot_be_read_closes_its_node(results: list[Obj] | None, why: str) -> None:
    pod = claim_pod("p", claim="c", node="n1")
    pending = claim_pod("new", claim="c2")
    world = build_world(parse_list([dra_node("n1"), *slices_of("n1", [gpu(0), gpu(1)]), pod,
                                    allocated_claim("c", copy.deepcopy(results)), pending,
                                    allocated_claim("c2", None)]))
    spec = world.state.specs[0]
    assert spec is not None
    assert spec.unusable.startswith("node runs pod ns/p whose gpu.fracgpu.io claims cannot be read (")
    assert why in spec.unusable
    assert spec.unusable.endswith("; no new GPU pod here until it is fixed or the pod ends")
    [refusal] = pending_whatif(world, "fracgpu")
    assert not refusal["fits"]


def test_a_pending_pod_uses_its_generated_claim_when_there_is_one() -> None:
    claim = allocated_claim("p-gpu-abcde", None)
    claim["spec"]["devices"]["requests"][0]["exactly"] = {"deviceClassName": "gpu.fracgpu.io", "count": 2}
    reasons = pending_reasons([template("t", {"requests": [{"name": "g", "exactly": SHARE}]}),
                               claim_pod("p", template="t", generated="p-gpu-abcde"), claim])
    assert reasons == {"ns/p": "fits"}
    world = build_world(parse_list([dra_node("n1"), *slices_of("n1", [gpu(0), gpu(1)]), claim,
                                    claim_pod("p", template="t", generated="p-gpu-abcde")]))
    [placed] = pending_whatif(world, "fracgpu")
    assert placed["cores"] == 200


def test_a_bound_pod_whose_claim_is_missing_closes_its_node() -> None:
    world = build_world(parse_list([dra_node("n1"), *slices_of("n1", [gpu(0)]),
                                    claim_pod("p", claim="gone", node="n1")]))
    spec = world.state.specs[0]
    assert spec is not None and "(claim ns/gone is not in the snapshot)" in spec.unusable


@pytest.mark.parametrize("containers", [5, "main", [5], None])
def test_a_claim_pod_with_broken_containers_is_read_without_crashing(containers: Any) -> None:
    pod = claim_pod("p", template="t")
    pod["spec"]["initContainers"] = containers
    reasons = pending_reasons([template("t", {"requests": [{"name": "g", "exactly": SHARE}]}), pod])
    assert reasons["ns/p"] in ("fits", "pod: spec.initContainers must be a list", "pod: spec.initContainers[0] must "
                                                                                   "be an object")
