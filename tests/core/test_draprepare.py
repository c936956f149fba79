"""Planning a claim on this node (fracgpu.core.draprepare), the CDI spec, and the types it reads and writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fracgpu.api.v1beta1.dra.checkpoint import Checkpoint, PreparedClaim, PreparedDevice
from fracgpu.api.v1beta1.dra.resource import AllocatedDevice, ResourceClaim
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.draprepare import Refusal, cdi_device_ids, cdi_file_name, cdi_spec, plan_claim, valid_uid
from fracgpu.core.draslices import device_names
from fracgpu.core.shareenv import ShareLimit, share_env

GI = 1024**3
NODE = "n1"
GPUS = tuple(GpuInfo(uuid=f"GPU-{i}", index=i, model="A100", memory=80 * GI, numa=0) for i in range(2))
NAMES = device_names(GPUS)


def result(index: int, cores: str | None = "50", memory: str | None = "40Gi", *, request: str = "gpu",
           driver: str = "gpu.fracgpu.io", pool: str = NODE, domain: bool = False, admin: bool = False) -> AllocatedDevice:
    consumed = {}
    prefix = "gpu.fracgpu.io/" if domain else ""
    if cores is not None:
        consumed[f"{prefix}cores"] = cores
    if memory is not None:
        consumed[f"{prefix}memory"] = memory
    return AllocatedDevice(request=request, driver=driver, pool=pool, device=NAMES[f"GPU-{index}"],
                           admin_access=admin, share_id="s" if consumed else "", consumed_capacity=consumed)


def claim(*results: AllocatedDevice, uid: str = "u1", allocated: bool = True) -> ResourceClaim:
    return ResourceClaim(namespace="ns", name="c", uid=uid, allocated=allocated, results=results)


def plan(c: ResourceClaim, prepared: dict[str, PreparedClaim] | None = None,
         gpus: tuple[GpuInfo, ...] = GPUS) -> list[tuple[str, str, int, int]]:
    got = plan_claim(c, node=NODE, gpus=gpus, prepared=prepared or {})
    return [(x.request, x.uuid, x.cores, x.memory) for x in got.devices]


@pytest.mark.parametrize(("results", "devices"), [
    ((result(0),), [("gpu", "GPU-0", 50, 40 * GI)]),
    ((result(0, domain=True),), [("gpu", "GPU-0", 50, 40 * GI)]),  # names may carry the driver's domain
    ((result(1, None, None),), [("gpu", "GPU-1", 100, 80 * GI)]),  # allocated whole: no consumedCapacity
    ((result(0, "30", None),), [("gpu", "GPU-0", 30, 80 * GI)]),
    ((result(0, request="main/sub"),), [("main", "GPU-0", 50, 40 * GI)]),  # subrequest: the main request
    ((result(0), result(1, request="b"), result(0, driver="gpu.nvidia.com")),
     [("gpu", "GPU-0", 50, 40 * GI), ("b", "GPU-1", 50, 40 * GI)]),  # another driver's device is not ours
], ids=["share", "domain", "whole", "memory-default", "subrequest", "mixed"])
def test_plan(results: tuple[AllocatedDevice, ...], devices: list[tuple[str, str, int, int]]) -> None:
    assert plan(claim(*results)) == devices


@pytest.mark.parametrize(("c", "reason"), [
    (claim(allocated=False), "claim ns/c is not allocated"),
    (claim(result(0, driver="x.example.com")), "claim ns/c has no device of driver gpu.fracgpu.io"),
    (claim(result(0, pool="n2"), result(1, pool="n3")),
     "claim ns/c is allocated devices of pool n2, n3, not of node n1"),
    (claim(AllocatedDevice("gpu", "gpu.fracgpu.io", NODE, "gpu-9")), "claim ns/c: device gpu-9 is not a GPU of node n1"),
    (claim(result(0, "0")), "consumed cores 0 is not a whole number from 1 to 100"),
    (claim(result(0, "1.5")), "consumed cores 1.5 is not a whole number from 1 to 100"),
    (claim(result(0, "10", "0")), "consumed memory 0 is not a whole number of bytes"),
    (claim(result(0, "10", "1.5")), "consumed memory 1.5 is not a whole number of bytes"),
    (claim(result(0, "10", "1e40")), "quantity out of range"),
    (claim(result(0, "60"), result(0, "50", "10Gi", request="b")),
     "claim ns/c needs 110 cores and 50Gi of GPU GPU-0, which has 100 cores and 80Gi free"),
], ids=["unallocated", "driver", "pool", "device", "zero", "fraction", "no-memory", "fraction-memory", "huge",
        "two-requests-one-gpu"])
def test_refusals(c: ResourceClaim, reason: str) -> None:
    with pytest.raises(Refusal) as e:
        plan_claim(c, node=NODE, gpus=GPUS, prepared={})
    assert reason in str(e.value)


def test_an_unhealthy_gpu_is_refused_with_its_reason() -> None:
    from dataclasses import replace

    sick = (replace(GPUS[0], healthy=False, reason="XID 79"), GPUS[1])
    with pytest.raises(Refusal, match=r"claim ns/c: GPU GPU-0 \(gpu-0\) is unhealthy: XID 79"):
        plan_claim(claim(result(0)), node=NODE, gpus=sick, prepared={})


def test_room_counts_other_prepared_claims_once_and_admin_access_not_at_all() -> None:
    held = plan_claim(claim(result(0, "70", "60Gi"), uid="a"), node=NODE, gpus=GPUS, prepared={})
    admin = plan_claim(claim(result(0, None, None, admin=True), uid="adm"), node=NODE, gpus=GPUS, prepared={})
    prepared = {"a": held, "adm": admin}
    assert plan(claim(result(0, "70", "60Gi"), uid="a"), prepared) == [("gpu", "GPU-0", 70, 60 * GI)]  # re-plan
    assert plan(claim(result(0, "30", "20Gi"), uid="b"), prepared) == [("gpu", "GPU-0", 30, 20 * GI)]
    with pytest.raises(Refusal, match="which has 30 cores and 20Gi free"):
        plan_claim(claim(result(0, "31", "1Gi"), uid="b"), node=NODE, gpus=GPUS, prepared=prepared)


# -- CDI -------------------------------------------------------------------------------------------------


def test_cdi_spec_has_one_device_per_request_with_the_shared_env() -> None:
    p = plan_claim(claim(result(0, "50", "40Gi"), result(1, "50", "20Gi"), result(1, "20", "10Gi", request="b")),
                   node=NODE, gpus=GPUS, prepared={})
    spec = cdi_spec(p, kind="k8s.gpu.fracgpu.io/claim")
    assert spec["cdiVersion"] == "0.3.0" and spec["kind"] == "k8s.gpu.fracgpu.io/claim"
    assert [d["name"] for d in spec["devices"]] == ["u1-gpu", "u1-b"]
    env = dict(line.split("=", 1) for line in spec["devices"][0]["containerEdits"]["env"])
    expected, _ = share_env([ShareLimit("GPU-0", 50, 40 * GI), ShareLimit("GPU-1", 50, 20 * GI)])
    assert env == {**expected, "FRACGPU_CLAIM": "ns/c"}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-0,GPU-1"
    assert env["FRACGPU_VRAM_LIMIT"] == str(20 * GI)  # the smaller of the two, as Allocate does
    assert "mounts" not in spec["devices"][0]["containerEdits"]
    assert cdi_device_ids(p, "k8s.gpu.fracgpu.io/claim") == {"gpu": "k8s.gpu.fracgpu.io/claim=u1-gpu",
                                                             "b": "k8s.gpu.fracgpu.io/claim=u1-b"}
    json.dumps(spec)


@pytest.mark.parametrize(("uid", "ok"), [
    ("0b6a4f2c-1b1e-4c39-9a51-6d0fb1c4a111", True), ("abc", True), ("", False), ("../x", False), ("a/b", False),
    ("-abc", False), ("a" * 65, False), ("a b", False)])
def test_only_uids_reach_file_names(uid: str, ok: bool) -> None:
    assert valid_uid(uid) is ok
    if ok:
        assert cdi_file_name(uid) == f"fracgpu-claim-{uid}.json"
    else:
        with pytest.raises(ValueError, match="not a claim uid"):
            cdi_file_name(uid)


# -- the claim as the API server sends it --------------------------------------------------------------------


UPSTREAM_CLAIM: dict[str, Any] = {  # shaped as kube-scheduler writes a claim with consumable capacity
    "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
    "metadata": {"name": "train-gpu-x7k2p", "namespace": "team-a", "uid": "8a1e7c1e-0f6e-4c63-9b39-0d1f8f5e0c11",
                 "resourceVersion": "4711", "annotations": {"resource.kubernetes.io/pod-claim-name": "gpu"}},
    "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
        "deviceClassName": "vgpu.fracgpu.io", "allocationMode": "ExactCount", "count": 1,
        "capacity": {"requests": {"cores": "50", "memory": "40Gi"}}}}]}},
    "status": {
        "allocation": {
            "devices": {"results": [{"request": "gpu", "driver": "gpu.fracgpu.io", "pool": "n1", "device": "gpu-0",
                                     "shareID": "6f7f1cd6-6c9e-4d1b-9f65-8d7a0a2e0c55",
                                     "consumedCapacity": {"cores": "50", "memory": "40Gi"}}],
                        "config": [{"source": "FromClass", "opaque": {"driver": "gpu.fracgpu.io", "parameters": {}}}]},
            "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]},
            "allocationTimestamp": "2026-12-01T10:00:00Z"},
        "reservedFor": [{"resource": "pods", "name": "train-0", "uid": "1c2d3e4f-0000-4000-8000-000000000001"}],
        "devices": [{"driver": "gpu.fracgpu.io", "pool": "n1", "device": "gpu-0",
                     "shareID": "6f7f1cd6-6c9e-4d1b-9f65-8d7a0a2e0c55", "conditions": []}]},
}


def test_resource_claim_from_the_api_server() -> None:
    c = ResourceClaim.from_json(UPSTREAM_CLAIM)
    assert (c.namespace, c.name, c.uid, c.allocated) == ("team-a", "train-gpu-x7k2p",
                                                        "8a1e7c1e-0f6e-4c63-9b39-0d1f8f5e0c11", True)
    (r,) = c.results
    assert (r.request, r.driver, r.pool, r.device, r.share_id) == (
        "gpu", "gpu.fracgpu.io", "n1", "gpu-0", "6f7f1cd6-6c9e-4d1b-9f65-8d7a0a2e0c55")
    assert dict(r.consumed_capacity) == {"cores": "50", "memory": "40Gi"}
    assert [(x.resource, x.name) for x in c.reserved_for] == [("pods", "train-0")]


@pytest.mark.parametrize(("path", "value", "error"), [
    (("status",), [], "status: expected an object"),
    (("status", "allocation", "devices", "results"), {}, "results: expected a list"),
    (("status", "allocation", "devices", "results", 0, "device"), 7, "device: expected a string"),
    (("status", "allocation", "devices", "results", 0, "consumedCapacity", "cores"), True, "expected a quantity"),
    (("metadata",), "x", "metadata: expected an object"),
])
def test_hostile_claims_name_the_bad_field(path: tuple[Any, ...], value: Any, error: str) -> None:
    doc = json.loads(json.dumps(UPSTREAM_CLAIM))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(InvalidDocument, match=error):
        ResourceClaim.from_json(doc)


# -- checkpoint --------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_tamper_detection() -> None:
    cp = Checkpoint("n1", {"u1": PreparedClaim("u1", "ns", "c", (PreparedDevice("gpu", "n1", "gpu-0", "GPU-0", 50,
                                                                                  40 * GI, "s1"),))})
    text = cp.to_json()
    assert Checkpoint.from_json(text) == cp
    with pytest.raises(InvalidDocument, match="checksum"):
        Checkpoint.from_json(text.replace('"cores": 50', '"cores": 5'))
    with pytest.raises(InvalidDocument, match="not JSON"):
        Checkpoint.from_json(text[: len(text) // 2])
    with pytest.raises(InvalidDocument, match="unsupported 2"):
        Checkpoint.from_json(json.dumps({**json.loads(text), "version": 2}))
