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
from tests.manifests.render import of_kind as base_of_kind
from tests.manifests.test_network_policies import API_SERVER, SCRAPER, TENANT, Peer, allowed

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


def named(kind: str, name: str) -> Obj:
    (obj,) = [o for o in of_kind(kind) if o["metadata"]["name"] == name]
    return obj


OWN_NODE = "fracgpu-dra-driver-own-node"
CLAIMS_POLICY = "fracgpu-dra-claims"


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
                                               "DaemonSet", "NetworkPolicy", "Service"}


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
    policy, binding = named("ValidatingAdmissionPolicy", OWN_NODE), named("ValidatingAdmissionPolicyBinding", OWN_NODE)
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    outcome = run_policy(policy, Request(ACCOUNT, operation, "resourceslices", obj, old, group="resource.k8s.io",
                                         extra=extra))
    assert outcome.matched
    if denial:
        assert outcome.denials[0].startswith(denial)  # the first failing validation says why
    else:
        assert outcome.allowed, outcome.denials


def test_the_policy_leaves_everyone_else_alone() -> None:
    policy = named("ValidatingAdmissionPolicy", OWN_NODE)
    kubelet = Request("system:node:n1", "DELETE", "resourceslices", None, slice_obj("n2"), group="resource.k8s.io")
    assert not run_policy(policy, kubelet).matched


# -- the claims policy: shares state memory, nobody tolerates a failed GPU ----------------------------------


def exact(name: str = "gpu", cls: str = names.DRA_DEVICE_CLASS_SHARED, **fields: Any) -> Obj:
    return {"name": name, "exactly": {"deviceClassName": cls, **fields}}


def first_available(name: str, *subs: Obj) -> Obj:
    return {"name": name, "firstAvailable": [{"name": s["name"], **s["exactly"]} for s in subs]}


SHARE: dict[str, Any] = {"capacity": {"requests": {"cores": "50", "memory": "40Gi"}}}
CORES_ONLY: dict[str, Any] = {"capacity": {"requests": {"cores": "50"}}}
UNHEALTHY = {"key": names.DRA_TAINT_UNHEALTHY, "operator": "Exists", "effect": "NoSchedule"}


def claim(*requests: Obj, template: bool = False) -> Obj:
    spec = {"devices": {"requests": list(requests)}}
    if template:
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
                "metadata": {"name": "t", "namespace": "team-a"}, "spec": {"spec": spec}}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "c", "namespace": "team-a"}, "spec": spec}


NO_MEMORY = ("states no memory: a share must state capacity.requests.memory (the default is the whole GPU's "
             "memory)")
TOLERATES = "tolerates the device taint gpu.fracgpu.io/unhealthy: a failed GPU is never handed out (docs/dra.md)"


@pytest.mark.parametrize(("requests", "message"), [
    ([exact(**SHARE)], None),
    ([exact(capacity={"requests": {"memory": "10Gi"}})], None),
    ([exact(capacity={"requests": {"cores": "50", "gpu.fracgpu.io/memory": "10Gi"}})], None),
    ([exact(**CORES_ONLY)], f"request gpu of class vgpu.fracgpu.io {NO_MEMORY}"),
    ([exact()], f"request gpu of class vgpu.fracgpu.io {NO_MEMORY}"),
    ([exact("a", **SHARE), exact("b", capacity={})], f"request b of class vgpu.fracgpu.io {NO_MEMORY}"),
    ([exact(cls=names.DRA_DEVICE_CLASS, count=2)], None),  # whole GPUs: no capacity is the point
    ([exact(cls="gpu.nvidia.com", **CORES_ONLY)], None),  # another driver's class: not fracgpu's business
    ([first_available("gpu", exact("big", **SHARE), exact("small", **CORES_ONLY))],
     f"request gpu/small of class vgpu.fracgpu.io {NO_MEMORY}"),
    ([first_available("gpu", exact("share", **SHARE), exact("whole", cls=names.DRA_DEVICE_CLASS))], None),
    ([exact(**SHARE, tolerations=[UNHEALTHY])], f"request gpu of class vgpu.fracgpu.io {TOLERATES}"),
    ([exact(cls=names.DRA_DEVICE_CLASS, tolerations=[{"key": names.DRA_TAINT_UNHEALTHY, "operator": "Equal",
                                                      "value": "XID-79"}])],
     f"request gpu of class gpu.fracgpu.io {TOLERATES}"),
    ([exact(cls=names.DRA_DEVICE_CLASS, tolerations=[{"operator": "Exists"}])],
     f"request gpu of class gpu.fracgpu.io {TOLERATES}"),  # an empty key with Exists tolerates every taint
    ([exact(**SHARE, tolerations=[{"key": "example.com/maintenance", "operator": "Exists"}])], None),
    ([first_available("gpu", exact("s", cls=names.DRA_DEVICE_CLASS, tolerations=[UNHEALTHY]))],
     f"request gpu/s of class gpu.fracgpu.io {TOLERATES}"),
    ([exact(cls="gpu.nvidia.com", tolerations=[UNHEALTHY])], None),
    ([], None),
], ids=["share", "memory only", "qualified memory", "cores only", "no capacity", "second request",
        "whole gpus", "other driver", "subrequest without memory", "subrequests fine", "tolerates unhealthy",
        "tolerates unhealthy Equal", "tolerates everything", "other toleration", "subrequest tolerates",
        "other driver tolerates", "no requests"])
@pytest.mark.parametrize("template", [False, True], ids=["claim", "template"])
def test_the_claims_policy(requests: list[Obj], message: str | None, template: bool) -> None:
    policy = named("ValidatingAdmissionPolicy", CLAIMS_POLICY)
    binding = named("ValidatingAdmissionPolicyBinding", CLAIMS_POLICY)
    assert binding["spec"] == {"policyName": CLAIMS_POLICY, "validationActions": ["Deny"]}
    resource = "resourceclaimtemplates" if template else "resourceclaims"
    outcome = run_policy(policy, Request("alice", "CREATE", resource, claim(*requests, template=template),
                                         group="resource.k8s.io"))
    assert outcome.matched
    assert outcome.denials == (() if message is None else (message,))


def test_the_claims_policy_leaves_metadata_updates_and_status_alone() -> None:
    policy = named("ValidatingAdmissionPolicy", CLAIMS_POLICY)
    old = claim(exact(**CORES_ONLY))  # a claim from before the policy: its finalizer must still come off
    new = {**old, "metadata": {**old["metadata"], "finalizers": []}}
    update = Request("system:serviceaccount:kube-system:resource-claim-controller", "UPDATE", "resourceclaims",
                     new, old, group="resource.k8s.io")
    assert not run_policy(policy, update).matched
    status = Request("system:kube-scheduler", "UPDATE", "resourceclaims", new, old, subresource="status",
                     group="resource.k8s.io")
    assert not run_policy(policy, status).matched
    changed = {**old, "spec": claim(exact(**SHARE, tolerations=[UNHEALTHY]))["spec"]}
    outcome = run_policy(policy, Request("alice", "UPDATE", "resourceclaims", changed, old, group="resource.k8s.io"))
    assert outcome.denials == (f"request gpu of class vgpu.fracgpu.io {TOLERATES}",)


def test_the_example_claims_pass_the_claims_policy() -> None:
    policy = named("ValidatingAdmissionPolicy", CLAIMS_POLICY)
    for obj in examples():
        resource = {"ResourceClaim": "resourceclaims", "ResourceClaimTemplate": "resourceclaimtemplates"}
        if obj["kind"] in resource:
            outcome = run_policy(policy, Request("alice", "CREATE", resource[obj["kind"]], obj,
                                                 group="resource.k8s.io"))
            assert outcome.matched and outcome.allowed, (obj["metadata"]["name"], outcome.denials)


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


@pytest.mark.parametrize(("name", "peer", "port", "ok"), [
    ("a scraper scrapes the driver", SCRAPER, "metrics", True),
    ("a tenant pod reads the driver's GPU metrics", TENANT, "metrics", False),
    ("the API server reaches the driver's metrics", API_SERVER, "metrics", False),
    ("a scraper on another port", SCRAPER, 9403, False),
], ids=["scraper", "tenant", "api-server", "other-port"])
def test_the_driver_serves_metrics_on_its_named_port_to_scrapers_only(name: str, peer: Peer, port: str | int,
                                                                      ok: bool) -> None:
    from fracgpu.draplugin.main import parser

    (ds,) = of_kind("DaemonSet")
    template = ds["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert ports["metrics"] == parser(env).parse_args([]).metrics_port  # what the driver binds in this pod
    assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    driver = Peer({"kubernetes.io/metadata.name": names.DEFAULT_NAMESPACE}, template["metadata"]["labels"])
    number = ports[port] if isinstance(port, str) else port
    assert allowed(peer, driver, number, ports, of_kind("NetworkPolicy") + base_of_kind("NetworkPolicy")) is ok, name


def test_the_service_monitor_finds_the_driver_and_the_scrape_config_keeps_it() -> None:
    from tests.charts.test_monitoring import monitoring, scrape, scrape_jobs

    (ds,) = of_kind("DaemonSet")
    template = ds["spec"]["template"]
    (svc,) = of_kind("Service")
    (sm,) = [o for o in monitoring() if o["kind"] == "ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    (endpoint,) = [e for e in sm["spec"]["endpoints"] if e["port"] == port["name"]]
    assert endpoint["scheme"] == "http" and endpoint["path"] == "/metrics"
    (container,) = template["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == port["port"]
    pod = {"metadata": {**template["metadata"], "name": "fracgpu-dra-driver-0", "namespace": ds["metadata"]["namespace"]},
           "spec": {**template["spec"], "nodeName": "gpu-1"}}
    (target,) = scrape(scrape_jobs(), [(pod, "10.0.0.9")])
    assert target["__address__"] == f"10.0.0.9:{port['port']}" and target["__scheme__"] == "http"
    assert target["component"] == "dra-driver" and target["node"] == "gpu-1"
