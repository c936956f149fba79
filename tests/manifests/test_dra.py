"""manifests/dra (the DRA path, a separate kustomization) and examples/dra: schemas of every DRA-capable
Kubernetes version, the DeviceClass and claim selectors in CEL over a device as fracgpu publishes it, RBAC
against a recorded driver session, the own-node admission policy, and the DaemonSet's paths."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from celpy import celtypes

from fracgpu.api.v1beta1 import names
from fracgpu.api.v1beta1.dra.resource import Device, ResourceSlice
from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass
from fracgpu.cli import COMMANDS
from fracgpu.core.draslices import build_slices, node_devices
from fracgpu.draplugin.driver import KubeClaims
from fracgpu.draplugin.publisher import SlicePublisher
from fracgpu.kube.client import Transport
from fracgpu.kube.writer import KubeWriter
from tests.draplugin.world import DRA_RESOURCES, NODE
from tests.fakes.apiserver import DEFAULT_RESOURCES, FakeApiServer
from tests.manifests.cel import Request, evaluate, run_policy, to_cel
from tests.manifests.rbac import Access, Grant
from tests.manifests.render import MANIFESTS, Obj, kubectl_kustomize, kustomization

DRA = MANIFESTS / "dra"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "dra" / "claims.yaml"
VERSIONS = ["1.34", "1.35", "1.36", "1.37"]
ACCOUNT = f"system:serviceaccount:{names.DEFAULT_NAMESPACE}:fracgpu-dra-driver"


def rendered() -> list[Obj]:
    objs = kubectl_kustomize(DRA)
    if objs is None:  # no kubectl: the kustomization has no generators or patches, only images
        objs = [d for entry in kustomization(DRA)["resources"]
                for d in yaml.safe_load_all((DRA / entry).read_text()) if d is not None]
    return objs


def of_kind(kind: str) -> list[Obj]:
    return [o for o in rendered() if o["kind"] == kind]


def examples() -> list[Obj]:
    return [d for d in yaml.safe_load_all(EXAMPLES.read_text()) if d is not None]


def test_the_dra_kustomization_lists_every_file_once() -> None:
    listed = kustomization(DRA)["resources"]
    assert sorted(listed) == sorted(p.name for p in DRA.glob("*.yaml") if p.name != "kustomization.yaml")
    assert len(set(listed)) == len(listed)


def test_the_dra_path_is_not_in_the_default_install() -> None:
    assert "dra" not in kustomization()["resources"]
    assert {o["kind"] for o in rendered()} == {"DeviceClass", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                                               "DaemonSet"}


@pytest.mark.parametrize("version", VERSIONS)
def test_everything_validates_against_the_kubernetes_schemas(version: str) -> None:
    for obj in rendered() + examples():
        kubernetes_validate.validate(obj, version, strict=True)


# -- CEL: the selectors over a device exactly as fracgpu publishes it ---------------------------------------


def device_input(dev: Device) -> Any:
    """The `device` variable of the scheduler's CEL environment for one published device: attributes and
    capacity grouped by domain (unqualified names belong to the driver's domain), plus driver and
    allowMultipleAllocations."""
    attributes: dict[str, dict[str, Any]] = {}
    for name, attr in dev.attributes.items():
        domain, _, ident = name.rpartition("/")
        attributes.setdefault(domain or names.DRA_DRIVER, {})[ident] = attr.value
    capacity: dict[str, dict[str, Any]] = {names.DRA_DRIVER: {k: c.value for k, c in dev.capacity.items()}}
    return to_cel({"driver": names.DRA_DRIVER, "attributes": attributes, "capacity": capacity,
                   "allowMultipleAllocations": bool(dev.allow_multiple_allocations)})


def cel_device(index: int = 0, *, model: str = "A100-SXM4-80GB", allocator: str = names.DRA_ALLOCATOR_SCHEDULER
               ) -> Any:
    gpus = [GpuInfo(f"GPU-{i}", i, model, 80 * 1024**3, 0, links=(GpuLink(f"GPU-{1 - i}", LinkClass.NVLINK, 12),))
            for i in range(2)]
    return device_input(node_devices(gpus, allocator=allocator)[index])


def selectors(obj: Obj) -> list[str]:
    out = [s["cel"]["expression"] for s in obj.get("spec", {}).get("selectors", [])]
    for r in obj.get("spec", {}).get("spec", {}).get("devices", {}).get("requests", []):
        out += [s["cel"]["expression"] for s in r.get("exactly", {}).get("selectors", [])]
    return out


@pytest.mark.parametrize("name", [names.DRA_DEVICE_CLASS, names.DRA_DEVICE_CLASS_SHARED])
def test_device_classes_select_fracgpus_gpus_and_nothing_else(name: str) -> None:
    (cls,) = [c for c in of_kind("DeviceClass") if c["metadata"]["name"] == name]
    assert "extendedResourceName" not in cls["spec"]  # docs/dra.md: N of an extended resource = N devices
    for expression in selectors(cls):
        assert evaluate(expression, {"device": cel_device()}) == celtypes.BoolType(True)
        other = to_cel({"driver": "gpu.nvidia.com", "attributes": {}, "capacity": {},
                        "allowMultipleAllocations": True})
        assert evaluate(expression, {"device": other}) == celtypes.BoolType(False)


def published_devices(allocator: str) -> list[Device]:
    """A node's devices exactly as the driver publishes them (through the slices' JSON): NVLink pairs, NUMA
    nodes, PCIe roots, a failed GPU (tainted) among them."""
    gpus = [GpuInfo(f"GPU-{i:08x}-0000-0000-0000-000000000000", i, "H100-SXM5-80GB", 80 * 1024**3, i // 4,
                    pci_bus_id=f"00000000:{i + 7:02X}:00.0", healthy=i != 5, reason="XID 79" if i == 5 else "",
                    links=(GpuLink(f"GPU-{i ^ 1:08x}-0000-0000-0000-000000000000", LinkClass.NVLINK, 18),))
            for i in range(8)]
    devs = node_devices(gpus, pcie_roots={g.uuid: "pci0000:00" for g in gpus}, allocator=allocator)
    return [d for s in build_slices(NODE, devs, 1) for d in ResourceSlice.from_json(s.to_json()).spec.devices]


@pytest.mark.parametrize("name", [names.DRA_DEVICE_CLASS, names.DRA_DEVICE_CLASS_SHARED])
@pytest.mark.parametrize(("allocator", "selected"), [(names.DRA_ALLOCATOR_FRACGPU, False),
                                                     (names.DRA_ALLOCATOR_SCHEDULER, True)])
def test_the_scheduler_never_allocates_a_device_fracgpu_allocates(name: str, allocator: str, selected: bool) -> None:
    """The guarantee of one allocator per device: with --allocator fracgpu no class of manifests/dra selects a
    single device, so kube-scheduler's allocator has no candidate and cannot race fracgpu's; with
    kube-scheduler every device is a candidate (the failed GPU is kept off by its taint, not by the class)."""
    assert set(names.DRA_ALLOCATORS) == {names.DRA_ALLOCATOR_FRACGPU, names.DRA_ALLOCATOR_SCHEDULER}
    (cls,) = [c for c in of_kind("DeviceClass") if c["metadata"]["name"] == name]
    devices = published_devices(allocator)
    assert len(devices) == 8 and any(d.taints for d in devices)
    for dev in devices:
        got = all(evaluate(e, {"device": device_input(dev)}) == celtypes.BoolType(True) for e in selectors(cls))
        assert got is selected, (dev.name, allocator)


def test_a_device_without_the_allocator_attribute_is_not_selected_and_no_error() -> None:
    # an older driver's device: CEL would raise on the missing attribute, and a CEL error aborts the allocation
    # of the whole claim (CELDeviceSelector), so the classes test for it and leave such a device out
    (dev,) = published_devices(names.DRA_ALLOCATOR_SCHEDULER)[:1]
    old = replace(dev, attributes={k: v for k, v in dev.attributes.items() if k != names.DRA_ATTR_ALLOCATOR})
    for cls in of_kind("DeviceClass"):
        for expression in selectors(cls):
            assert evaluate(expression, {"device": device_input(old)}) == celtypes.BoolType(False)


def test_example_claims_select_by_published_attributes() -> None:
    (half,) = [o for o in examples() if o["metadata"]["name"] == "half-a100"]
    (expression,) = selectors(half)
    assert evaluate(expression, {"device": cel_device()}) == celtypes.BoolType(True)
    assert evaluate(expression, {"device": cel_device(model="H100-SXM5-80GB")}) == celtypes.BoolType(False)
    request = half["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert set(request["capacity"]["requests"]) == {names.DRA_CAPACITY_CORES, names.DRA_CAPACITY_MEMORY}
    (pair,) = [o for o in examples() if o["metadata"]["name"] == "two-nvlinked-gpus"]
    (constraint,) = pair["spec"]["spec"]["devices"]["constraints"]
    assert constraint["matchAttribute"] == f"{names.DRA_DRIVER}/nvlinkDomain"
    assert "nvlinkDomain" in node_devices([GpuInfo("a", 0, "m", 1, 0, links=(GpuLink("b", LinkClass.NVLINK),)),
                                           GpuInfo("b", 1, "m", 1, 0)])[0].attributes


# -- RBAC against what the driver really sends ---------------------------------------------------------------


def grants() -> list[Grant]:
    (role,) = of_kind("ClusterRole")
    (binding,) = of_kind("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fracgpu-dra-driver",
                                    "namespace": names.DEFAULT_NAMESPACE}]
    return [Grant("", tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]), ()) for r in role["rules"]]


def test_rbac_allows_every_request_of_the_driver_and_grants_nothing_unused() -> None:
    server = FakeApiServer((*DEFAULT_RESOURCES, *DRA_RESOURCES)).start()
    try:
        server.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
                    {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": "stale"},
                     "spec": {"driver": names.DRA_DRIVER, "nodeName": NODE,
                              "pool": {"name": "old", "generation": 1, "resourceSliceCount": 1}}},
                    {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                     "metadata": {"name": "c", "namespace": "default"}})
        writer = KubeWriter(Transport(server.api_client()))
        gpus = [GpuInfo("GPU-0", 0, "A100", 80 * 1024**3, 0)]
        publisher = SlicePublisher(writer, NODE, lambda opts: node_devices(gpus))
        server.on_next("create", "resourceslices", lambda: server.seed(  # a create that races: get + update
            {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{NODE}-gpu.fracgpu.io"},
             "spec": {"driver": names.DRA_DRIVER, "nodeName": NODE, "pool": {"name": "x", "generation": 1,
                                                                            "resourceSliceCount": 1}}}))
        publisher.sync()
        KubeClaims(writer).get("default", "c")
        requests = [Access(r.verb, r.group, r.resource, r.subresource, r.namespace, r.name) for r in server.requests]
    finally:
        server.stop()
    rules = grants()
    denied = [a for a in requests if not any(g.allows(a) for g in rules)]
    assert denied == []
    used = {(a.group, a.resource, a.verb) for a in requests}
    unused = {(grp, res, verb) for g in rules for grp in g.groups for res in g.resources for verb in g.verbs} - used
    assert unused == set()


# -- the own-node policy -------------------------------------------------------------------------------------


def slice_obj(node: str, driver: str = names.DRA_DRIVER) -> Obj:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{node}-x"},
            "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}}}


@pytest.mark.parametrize(("operation", "obj", "old", "extra", "denial"), [
    ("CREATE", slice_obj("n1"), None, {"authentication.kubernetes.io/node-name": ["n1"]}, ""),
    ("UPDATE", slice_obj("n1"), slice_obj("n1"), {"authentication.kubernetes.io/node-name": ["n1"]}, ""),
    ("DELETE", None, slice_obj("n1"), {"authentication.kubernetes.io/node-name": ["n1"]}, ""),
    ("CREATE", slice_obj("n2"), None, {"authentication.kubernetes.io/node-name": ["n1"]},
     "the fracgpu DRA driver of node n1 may write only ResourceSlices of driver gpu.fracgpu.io on its own node"),
    ("DELETE", None, slice_obj("n2"), {"authentication.kubernetes.io/node-name": ["n1"]},
     "the fracgpu DRA driver of node n1 may write only ResourceSlices of driver gpu.fracgpu.io on its own node"),
    ("CREATE", slice_obj("n1", "gpu.nvidia.com"), None, {"authentication.kubernetes.io/node-name": ["n1"]},
     "the fracgpu DRA driver of node n1 may write only ResourceSlices of driver gpu.fracgpu.io on its own node"),
    ("CREATE", slice_obj("n1"), None, {}, "the fracgpu DRA driver's token carries no node-name claim"),
], ids=["own", "update-own", "delete-own", "other-node", "delete-other", "other-driver", "no-claim"])
def test_the_driver_writes_only_its_own_nodes_slices(operation: str, obj: Obj | None, old: Obj | None,
                                                    extra: dict[str, list[str]], denial: str) -> None:
    (policy,) = of_kind("ValidatingAdmissionPolicy")
    (binding,) = of_kind("ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    outcome = run_policy(policy, Request(ACCOUNT, operation, "resourceslices", obj, old, group="resource.k8s.io",
                                         extra=extra))
    assert outcome.matched
    if denial:
        assert outcome.denials[0].startswith(denial)  # the first failing validation says why
    else:
        assert outcome.allowed, outcome.denials


def test_the_policy_leaves_everyone_else_alone() -> None:
    (policy,) = of_kind("ValidatingAdmissionPolicy")
    kubelet = Request("system:node:n1", "DELETE", "resourceslices", None, slice_obj("n2"), group="resource.k8s.io")
    assert not run_policy(policy, kubelet).matched


# -- the DaemonSet and the program agree --------------------------------------------------------------------


def test_the_daemonset_mounts_what_the_driver_uses_by_default() -> None:
    from fracgpu.draplugin.main import parser

    (ds,) = of_kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["dra-driver"] and "dra-driver" in COMMANDS
    assert pod["serviceAccountName"] == "fracgpu-dra-driver"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    defaults = parser({}).parse_args([])
    assert {defaults.plugin_dir, defaults.registry_dir, defaults.cdi_dir} <= mounts
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for m in container["volumeMounts"]:
        if m["name"] in host:
            assert host[m["name"]] == m["mountPath"]  # the kubelet dials the path the driver announces
    probe = " ".join(container["livenessProbe"]["exec"]["command"])
    assert f"{defaults.registry_dir}/{names.dra_registration_socket()}" in probe
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": names.LABEL_DRA, "operator": "In", "values": ["true"]},
                                        {"key": names.LABEL_ENABLED, "operator": "NotIn", "values": ["true"]}]
    assert container["image"] == "ghcr.io/fracgpu/fracgpu:v0.1.0"
