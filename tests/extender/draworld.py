"""A cluster on the DRA path around fracgpu's allocator: the fake API server with resource.k8s.io/v1, DRA nodes
whose pools are published as the driver publishes them, and the parts of kube-controller-manager and
kube-scheduler the allocator meets (claims generated from templates, pods bound to their claims' node,
claims deallocated when their pod ends) played by this test world, after the upstream rules they follow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import (
    DEFAULT_NAMESPACE,
    DRA_CLAIM_FINALIZER,
    DRA_DEVICE_CLASS,
    DRA_DEVICE_CLASS_SHARED,
    LABEL_DRA,
)
from fracgpu.core.draslices import build_slices, node_devices
from fracgpu.extender.cache import ClusterCache
from fracgpu.extender.draallocator import Allocator
from fracgpu.extender.dracache import DraView
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.kube.client import Transport
from fracgpu.kube.retry import Backoff
from fracgpu.kube.writer import KubeWriter
from tests.extender.conftest import FakeClock
from tests.fakes.apiserver import FakeApiServer, ResourceType
from tests.poll import eventually

GI = 1024**3
DRA_RESOURCES = (
    ResourceType("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", namespaced=False),
    ResourceType("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", namespaced=True, status_subresource=True),
    ResourceType("resource.k8s.io", "v1", "resourceclaimtemplates", "ResourceClaimTemplate", namespaced=True),
    ResourceType("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", namespaced=False),
)
Obj = dict[str, Any]


def gpus(node: str, n: int, memory: int = 80 * GI) -> tuple[GpuInfo, ...]:
    return tuple(GpuInfo(uuid=f"GPU-{node}-{i}", index=i, model="A100-SXM4-80GB", memory=memory, numa=0) for i in range(n))


def dra_node(name: str, *, labels: dict[str, str] | None = None, taints: list[Obj] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {LABEL_DRA: "true", **(labels or {})}},
            "spec": {"taints": taints or []},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi"}}}


def pool(node: str, inventory: tuple[GpuInfo, ...], generation: int = 1, allocator: str = "fracgpu") -> list[Obj]:
    """The node's ResourceSlices exactly as `fracgpu dra-driver --allocator <allocator>` publishes them."""
    return [s.to_json() for s in build_slices(node, node_devices(inventory, allocator=allocator), generation)]


def share_template(name: str, cores: int, memory: str | None, namespace: str = "default") -> Obj:
    requests: Obj = {"cores": str(cores)}
    if memory is not None:
        requests["memory"] = memory
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"spec": {"devices": {"requests": [
                {"name": "gpu", "exactly": {"deviceClassName": DRA_DEVICE_CLASS_SHARED,
                                            "capacity": {"requests": requests}}}]}}}}


def whole_template(name: str, count: int, namespace: str = "default") -> Obj:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"spec": {"devices": {"requests": [
                {"name": "gpus", "exactly": {"deviceClassName": DRA_DEVICE_CLASS, "count": count}}]}}}}


def claim_pod(name: str, templates: list[str], *, namespace: str = "default", priority: int = 0,
              created: str = "2026-12-01T00:00:00Z", spec: Obj | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
            "spec": {"priority": priority, "containers": [{"name": "main", "image": "cuda"}],
                     "resourceClaims": [{"name": f"c{i}", "resourceClaimTemplateName": t}
                                        for i, t in enumerate(templates)], **(spec or {})}}


class DraCluster:
    def __init__(self, apiserver: FakeApiServer, config: SchedulerConfig | None = None) -> None:
        self.apiserver = apiserver
        self.clock = FakeClock()
        self.scheduler = Scheduler(config or SchedulerConfig(heartbeat_stale_s=40, refresh_s=0), self.clock,
                                   wall=self.clock)
        self.view = DraView(self.scheduler, self.clock)
        self.transport = Transport(apiserver.api_client(), timeout_s=5)
        self.writer = KubeWriter(self.transport, component="fracgpu-extender")
        self.cache = ClusterCache(self.transport, self.scheduler, namespace=DEFAULT_NAMESPACE,
                                  backoff=Backoff(initial_s=0.01, cap_s=0.05), watch_timeout_s=30, dra=self.view)
        self.metrics = ExtenderMetrics(self.scheduler)
        self.allocator = Allocator(self.scheduler, self.view, self.writer, clock=self.clock, metrics=self.metrics)

    # ---- kube-controller-manager's resourceclaim controller ----------------------------------------
    def generate_claims(self, pod: Obj) -> list[Obj]:
        """Create the pod's claims from its templates and record them in its status, as the
        resourceclaim controller does (owner: the pod; the annotation naming the pod claim)."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        stored = self.apiserver.get_object("pods", name, ns)
        assert stored is not None
        made, statuses = [], []
        for ref in pod["spec"]["resourceClaims"]:
            tpl = self.apiserver.get_object("resourceclaimtemplates", ref["resourceClaimTemplateName"], ns)
            assert tpl is not None
            claim_name = f"{name}-{ref['name']}"
            made.append(self.apiserver.seed({
                "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": claim_name, "namespace": ns,
                             "annotations": {"resource.kubernetes.io/pod-claim-name": ref["name"]},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name,
                                                  "uid": stored["metadata"]["uid"], "controller": True}]},
                "spec": tpl["spec"]["spec"]})[0])
            statuses.append({"name": ref["name"], "resourceClaimName": claim_name})
        self.apiserver.patch_object("pods", name, {"status": {"resourceClaimStatuses": statuses}}, ns)
        return made

    def create_pod(self, pod: Obj) -> list[Obj]:
        self.apiserver.seed(pod)
        return self.generate_claims(pod)

    def end_pod(self, pod: Obj) -> None:
        """The pod ended: the controller drops it from its claims' reservedFor and, the claim unused now,
        clears the allocation and its finalizer (pkg/controller/resourceclaim syncClaim)."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.apiserver.patch_object("pods", name, {"status": {"phase": "Succeeded"}}, ns)
        for claim in self.claims_of(pod):
            self.apiserver.seed({**claim, "status": {}, "metadata": {
                **claim["metadata"], "finalizers": [f for f in claim["metadata"].get("finalizers", [])
                                                    if f != DRA_CLAIM_FINALIZER]}})

    # ---- kube-scheduler ----------------------------------------------------------------------
    def schedule(self, pod: Obj) -> str:
        """Bind a pod whose claims are all allocated to their node (the Filter of the dynamicresources
        plugin: an allocated claim's nodeSelector; Reserve/PreBind: the pod is in reservedFor)."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        nodes = set()
        for claim in self.claims_of(pod):
            alloc = claim["status"]["allocation"]
            [term] = alloc["nodeSelector"]["nodeSelectorTerms"]
            [field] = term["matchFields"]
            assert field["key"] == "metadata.name" and field["operator"] == "In"
            nodes.update(field["values"])
            assert [r["name"] for r in claim["status"]["reservedFor"]] == [name]
        [node] = nodes
        self.apiserver.patch_object("pods", name, {"spec": {"nodeName": node}, "status": {"phase": "Running"}}, ns)
        return str(node)

    # ---- reading --------------------------------------------------------------------------------
    def claims_of(self, pod: Obj) -> list[Obj]:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        out = []
        for ref in pod["spec"]["resourceClaims"]:
            c = self.apiserver.get_object("resourceclaims", f"{name}-{ref['name']}", ns)
            assert c is not None
            out.append(c)
        return out

    def results(self, pod: Obj) -> list[Obj]:
        return [r for c in self.claims_of(pod) for r in ((c.get("status") or {}).get("allocation") or {}).get(
            "devices", {}).get("results", [])]

    def events(self, name: str) -> list[str]:
        return [e["message"] for e in self.apiserver.list_objects("events")
                if e["involvedObject"]["name"] == name and e["reason"] == "FailedGPUAllocation"]

    def settle(self, cond: Callable[[], bool]) -> None:
        """Wait for the watches to bring `cond` about."""
        eventually(cond, what="the cache's view")

    def waiting(self) -> set[str]:
        return {w.key for w in self.view.waiting()}

    def counted(self, outcome: str) -> float:
        """fracgpu_extender_dra_allocations_total{outcome}, as /metrics shows it."""
        return self.metrics.registry.get_sample_value("fracgpu_extender_dra_allocations_total",
                                                      {"outcome": outcome}) or 0.0

    def caught_up(self) -> bool:
        """Every allocation of ours is seen back through the claim watch."""
        return self.scheduler.stats().awaiting_watch == 0


def started(apiserver: FakeApiServer, config: SchedulerConfig | None = None) -> Iterator[DraCluster]:
    for rt in DRA_RESOURCES:
        apiserver.add_resource(rt)
    world = DraCluster(apiserver, config)
    world.cache.start()
    assert world.cache.synced.wait(5)
    try:
        yield world
    finally:
        world.cache.stop()
