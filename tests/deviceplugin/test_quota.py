"""The tenant-quota re-check at Allocate (issue 5), over the real socket and the fake API server's REST wire.

The plugin watches TenantQuotas, Namespaces and every live fracgpu pod of the cluster; pods of the
same tenant on other nodes ("remote") count. The pod being admitted was charged at bind already: it
is refused only when its tenant's use including it is over the limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from fracgpu.api.v1beta1.assignment import Assignment, GpuShare
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_NS_CORE_QUOTA,
    ANN_NS_MEMORY_QUOTA,
    ANN_PHASE,
    LABEL_TENANT,
    PHASE_ALLOCATED,
    PHASE_FAILED_PREFIX,
    RESOURCE_CORE,
    RESOURCE_MEMORY,
    SCHEDULER_NAME,
)
from fracgpu.core.quota import Usage
from fracgpu.core.tenant import UNLIMITED, Limits, default_limits
from fracgpu.deviceplugin.kubeapiserver import KubeApiServer
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.deviceplugin.quotawatch import KubeTenantQuotas
from fracgpu.kube import client, writer
from tests.deviceplugin.kubelet import Admission, Container
from tests.deviceplugin.world import NODE, World
from tests.fakes.apiserver import FakeApiServer
from tests.poll import wait_until

GiB = 1024**3


def namespace(name: str, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {}), "annotations": dict(annotations or {})}}


def tenant_quota(name: str, memory: str | None = None, cores: str | None = None) -> dict[str, Any]:
    hard = {k: v for k, v in ((RESOURCE_MEMORY, memory), (RESOURCE_CORE, cores)) if v is not None}
    return {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota",
            "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"namespaceSelector": {"matchLabels": {LABEL_TENANT: name}}, "hard": hard}}


def remote_pod(name: str, ns: str, tenant: str, memory_gib: int, cores: int = 50,
               phase: str = "Running") -> dict[str, Any]:
    """A pod the extender placed on another node, with its reservation."""
    uuid = f"GPU-remote-{ns}-{name}"
    a = Assignment(node="node-b", tenant=tenant, assigned_at="2026-01-01T00:00:00Z",
                   gpus=(GpuShare(uuid=uuid, cores=cores, memory=memory_gib * GiB,
                                  device_ids=tuple(f"{uuid}::{k}" for k in range(cores))),),
                   containers=())
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}",
                         "annotations": {ANN_ASSIGNED: a.to_json(), ANN_PHASE: PHASE_ALLOCATED}},
            "spec": {"nodeName": "node-b", "schedulerName": SCHEDULER_NAME,
                     "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase}}


TEAM_A = [namespace("team-a-1", {LABEL_TENANT: "team-a"}), namespace("team-a-2", {LABEL_TENANT: "team-a"})]


@dataclass
class QuotaWorld:
    """The node's plugin with the quota re-check, against the fake API server."""

    world: World
    api: FakeApiServer
    quota: KubeTenantQuotas | None = None
    cluster: KubeApiServer | None = None
    metrics: PluginMetrics = field(default_factory=PluginMetrics)

    def start(self, *objects: dict[str, Any], default: Limits = UNLIMITED, synced: bool = True) -> KubeTenantQuotas:
        self.api.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}, *objects)
        self.quota = KubeTenantQuotas(client.Transport(self.api.api_client()), default=default, metrics=self.metrics)
        self.quota.start()
        if synced:
            assert self.quota.wait_synced(10)
        self.cluster = KubeApiServer(writer.KubeWriter(client.Transport(self.api.api_client())), NODE)
        self.cluster.start(timeout_s=5)
        self.world.quota = self.quota
        self.world.start_plugin(cluster=self.cluster)
        self.world.kubelet.wait_connected()
        return self.quota

    def stop(self) -> None:
        self.world.stop_plugin()
        if self.cluster is not None:
            self.cluster.stop()
        if self.quota is not None:
            self.quota.stop()

    def local_pod(self, name: str, ns: str, memory_gib: int = 8, cores: int = 10, tenant: str | None = None,
                  gpu: int = 0) -> None:
        """A pod bound to this node (reservation on GPU `gpu`), waiting for the kubelet to admit it."""
        self.api.seed(self.world.add_pod(name, [Container("main", cores)], [gpu], memory=memory_gib * GiB,
                                         namespace=ns, tenant=tenant))

    def admit(self, name: str, ns: str) -> Admission:
        return self.world.admit(name, namespace=ns)

    def checks(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value("fracgpu_deviceplugin_quota_checks_total", {"outcome": outcome}) or 0.0

    def events(self, name: str, ns: str) -> list[dict[str, Any]]:
        return [e for e in self.api.list_objects("events", ns) if e["involvedObject"]["name"] == name]


@pytest.fixture
def qw(world: World, apiserver: FakeApiServer) -> Iterator[QuotaWorld]:
    """`world` plus the fake API server; `qw.start(objects...)` seeds them and starts the plugin."""
    q = QuotaWorld(world, apiserver)
    try:
        yield q
    finally:
        q.stop()


def refused(adm: Admission) -> str:
    assert adm.error is not None, "admitted, expected a refusal"
    assert adm.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    return adm.error.details() or ""


@dataclass(frozen=True)
class Case:
    name: str
    objects: list[dict[str, Any]]  # namespaces, TenantQuotas, pods on other nodes
    ns: str  # the admitted pod's namespace
    memory_gib: int = 8
    cores: int = 10
    tenant: str | None = None  # what its reservation charges (default: the namespace's tenant)
    default: Limits = UNLIMITED
    refusal: str | None = None  # None: admitted


CASES = [
    Case("within its TenantQuota", [*TEAM_A, tenant_quota("team-a", "64Gi"),
                                    remote_pod("r1", "team-a-2", "tq/team-a", 40)],
         "team-a-1", tenant="tq/team-a"),
    Case("exactly at its TenantQuota", [*TEAM_A, tenant_quota("team-a", "64Gi"),
                                        remote_pod("r1", "team-a-2", "tq/team-a", 56)],
         "team-a-1", tenant="tq/team-a"),
    Case("over its TenantQuota (lowered since the bind)",
         [*TEAM_A, tenant_quota("team-a", "60Gi"), remote_pod("r1", "team-a-2", "tq/team-a", 40),
          remote_pod("r2", "team-a-1", "tq/team-a", 16)],
         "team-a-1", tenant="tq/team-a", refusal="tenant tq/team-a: vgpu-memory 56Gi of 60Gi used, pod asks 8Gi"),
    Case("over its TenantQuota's cores", [*TEAM_A, tenant_quota("team-a", cores="100"),
                                          remote_pod("r1", "team-a-2", "tq/team-a", 1, cores=95)],
         "team-a-1", tenant="tq/team-a", refusal="tenant tq/team-a: vgpu-core 95 of 100 used, pod asks 10"),
    Case("namespace annotation quota, within", [namespace("solo", annotations={ANN_NS_MEMORY_QUOTA: "16Gi"}),
                                                remote_pod("r1", "solo", "ns/solo", 8)], "solo"),
    Case("namespace annotation quota, over", [namespace("solo", annotations={ANN_NS_MEMORY_QUOTA: "16Gi"}),
                                              remote_pod("r1", "solo", "ns/solo", 12)],
         "solo", refusal="tenant ns/solo: vgpu-memory 12Gi of 16Gi used, pod asks 8Gi"),
    Case("namespace core annotation, over", [namespace("solo", annotations={ANN_NS_CORE_QUOTA: "20"}),
                                             remote_pod("r1", "solo", "ns/solo", 1, cores=15)],
         "solo", refusal="tenant ns/solo: vgpu-core 15 of 20 used, pod asks 10"),
    Case("a TenantQuota wins over the namespace annotation",
         [namespace("team-a-1", {LABEL_TENANT: "team-a"}, {ANN_NS_MEMORY_QUOTA: "1Gi"}),
          tenant_quota("team-a", "64Gi")], "team-a-1", tenant="tq/team-a"),
    Case("cluster default quota", [namespace("plain"), remote_pod("r1", "plain", "ns/plain", 12)],
         "plain", default=default_limits("16Gi", None),
         refusal="tenant ns/plain: vgpu-memory 12Gi of 16Gi used, pod asks 8Gi"),
    Case("unusable quota fails closed", [namespace("typo", annotations={ANN_NS_MEMORY_QUOTA: "lots"})], "typo",
         refusal="tenant ns/typo: quota unusable, annotation fracgpu.io/vgpu-memory-quota on namespace typo"),
    Case("no quota anywhere", [namespace("plain"), remote_pod("r1", "plain", "ns/plain", 500)], "plain"),
    Case("a reservation charging another namespace's tenant", [namespace("plain"), namespace("rich")],
         "plain", tenant="ns/rich",
         refusal="reservation charges tenant ns/rich, but the pod is in namespace plain"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_quota_recheck(qw: QuotaWorld, case: Case) -> None:
    qw.start(*case.objects, default=case.default)
    qw.local_pod("p", case.ns, memory_gib=case.memory_gib, cores=case.cores, tenant=case.tenant)
    adm = qw.admit("p", case.ns)
    qw.world.settle()
    if case.refusal is None:
        assert adm.error is None, adm.error
        assert qw.checks("allowed") == 1 and qw.checks("refused") == 0
        return
    details = refused(adm)
    assert details.startswith("fracgpu: ") and case.refusal in details, details
    assert qw.checks("refused") == 1 and qw.checks("allowed") == 0
    events = qw.events("p", case.ns)
    assert [e["reason"] for e in events] == ["FracgpuAllocateRefused"]
    assert case.refusal in events[0]["message"]
    pod = qw.api.get_object("pods", "p", case.ns)
    assert pod is not None and pod["metadata"]["annotations"][ANN_PHASE].startswith(PHASE_FAILED_PREFIX)


def test_a_lowered_tenantquota_refuses_the_next_pod_and_leaves_other_tenants_alone(qw: QuotaWorld) -> None:
    quota = qw.start(*TEAM_A, namespace("other"), tenant_quota("team-a", "64Gi"),
                     remote_pod("r1", "team-a-2", "tq/team-a", 40), remote_pod("r2", "other", "ns/other", 70))
    # different sizes: the extender never leaves two confusable pods waiting on one node
    qw.local_pod("first", "team-a-1", tenant="tq/team-a", cores=10, gpu=0)
    qw.local_pod("second", "team-a-1", tenant="tq/team-a", cores=20, gpu=1)
    qw.local_pod("neighbour", "other", cores=30, gpu=2)
    assert qw.admit("first", "team-a-1").error is None  # 40 + 8 (itself) of 64Gi
    # an admin lowers the quota below what the tenant holds (first and second were bound before)
    qw.api.patch_object("tenantquotas", "team-a", {"spec": {"hard": {RESOURCE_MEMORY: "50Gi"}}})
    assert wait_until(lambda: quota.limits("tq/team-a") == Limits(memory=50 * GiB,
                                                                 memory_source="TenantQuota team-a"))
    # r1 + first + second: cluster-wide, and the bound pods of this node count as soon as the watch shows them
    assert wait_until(lambda: quota.used("tq/team-a").memory == 56 * GiB)
    details = refused(qw.admit("second", "team-a-1"))
    assert "tenant tq/team-a: vgpu-memory 48Gi of 50Gi used, pod asks 8Gi" in details
    # another tenant on the same node is not affected (ns/other holds 70Gi, no limit)
    assert qw.admit("neighbour", "other").error is None
    qw.world.settle()
    assert [e["reason"] for e in qw.events("second", "team-a-1")] == ["FracgpuAllocateRefused"]
    assert qw.events("first", "team-a-1") == [] and qw.events("neighbour", "other") == []
    assert (qw.checks("allowed"), qw.checks("refused")) == (2, 1)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pods_do_not_count(qw: QuotaWorld, phase: str) -> None:
    quota = qw.start(*TEAM_A, tenant_quota("team-a", "64Gi"),
                     remote_pod("done", "team-a-2", "tq/team-a", 60, phase=phase),
                     remote_pod("big", "team-a-2", "tq/team-a", 50),
                     remote_pod("small", "team-a-2", "tq/team-a", 4))
    assert quota.used("tq/team-a") == Usage(memory=54 * GiB, cores=100)  # "done" is not there
    qw.api.patch_object("pods", "big", {"status": {"phase": phase}}, "team-a-2")  # leaves the field selector
    assert wait_until(lambda: quota.used("tq/team-a") == Usage(memory=4 * GiB, cores=50))
    qw.local_pod("p", "team-a-1", memory_gib=60, tenant="tq/team-a")
    assert qw.admit("p", "team-a-1").error is None  # 4 + 60 of 64Gi
    # the cache keeps only the slim pods (name, node, phase, reservation), not whole objects
    pods = quota.reflectors[2].items()
    assert pods and all(set(p["spec"]) == {"nodeName"} and "containers" not in p["spec"] for p in pods)


def test_a_terminating_pod_still_counts(qw: QuotaWorld) -> None:
    quota = qw.start(*TEAM_A, tenant_quota("team-a", "64Gi"), remote_pod("r1", "team-a-2", "tq/team-a", 60))
    qw.api.patch_object("pods", "r1", {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}, "team-a-2")
    qw.local_pod("p", "team-a-1", tenant="tq/team-a")
    assert wait_until(lambda: quota.used("tq/team-a").memory == 68 * GiB)  # r1 (terminating) + p
    assert "vgpu-memory 60Gi of 64Gi used, pod asks 8Gi" in refused(qw.admit("p", "team-a-1"))
    # gone for good: its quota comes back
    qw.api.delete_object("pods", "r1", "team-a-2")
    assert wait_until(lambda: quota.used("tq/team-a").memory == 8 * GiB)


def test_before_the_caches_sync_pods_pass_unchecked_and_are_counted(qw: QuotaWorld) -> None:
    gate = threading.Event()
    qw.api.on_next("list", "tenantquotas", lambda: gate.wait(10))  # the TenantQuota list hangs
    try:
        quota = qw.start(*TEAM_A, tenant_quota("team-a", "1Gi"), remote_pod("r1", "team-a-2", "tq/team-a", 40),
                         synced=False)
        assert not quota.synced
        qw.local_pod("p", "team-a-1", tenant="tq/team-a")
        assert qw.admit("p", "team-a-1").error is None  # fail open: a refusal would be final
        assert qw.checks("unchecked") == 1 and qw.checks("refused") == 0
        assert qw.metrics.registry.get_sample_value("fracgpu_deviceplugin_quota_synced") == 0
    finally:
        gate.set()  # the list answers: the check is enforced from then on
    assert quota.wait_synced(10)
    assert qw.metrics.registry.get_sample_value("fracgpu_deviceplugin_quota_synced") == 1
    qw.local_pod("q", "team-a-1", tenant="tq/team-a", cores=20, gpu=1)
    assert "tenant tq/team-a: vgpu-memory 48Gi of 1Gi used, pod asks 8Gi" in refused(qw.admit("q", "team-a-1"))


TRANSITIONS: list[tuple[str, Callable[[FakeApiServer], object], Usage]] = [
    ("namespace relabelled into team-a", lambda api: api.patch_object(
        "namespaces", "plain", {"metadata": {"labels": {LABEL_TENANT: "team-a"}}}), Usage(8 * GiB, 50)),
    ("TenantQuota deleted", lambda api: api.delete_object("tenantquotas", "team-a"), Usage(8 * GiB, 50)),
]


@pytest.mark.parametrize(("name", "change", "used"), TRANSITIONS, ids=[t[0] for t in TRANSITIONS])
def test_pods_stay_charged_to_the_tenant_recorded_at_bind(qw: QuotaWorld, name: str,
                                                          change: Callable[[FakeApiServer], object],
                                                          used: Usage) -> None:
    quota = qw.start(*TEAM_A, namespace("plain"), tenant_quota("team-a", "64Gi"),
                     remote_pod("r1", "team-a-2", "tq/team-a", 8), remote_pod("r2", "plain", "ns/plain", 30))
    change(qw.api)
    assert wait_until(lambda: quota.tenant_of("plain") == "tq/team-a" or quota.limits("tq/team-a") == UNLIMITED)
    assert quota.used("tq/team-a") == used
    assert quota.used("ns/plain") == Usage(30 * GiB, 50)
