"""RBAC against recorded sessions: each component's own kube-facing code runs against the fake API
server (tests/fakes/apiserver.py), and every request it makes must be allowed by that component's
roles in manifests/ — and, the other way, every rule must be used by some request, except the
grants listed in AHEAD_OF_CODE (rules for code that DESIGN asks for and that is not written yet).

The sessions drive the real adapter classes (KubeApiServer, ClusterCache, ControllerWriter,
KubeLeaseStore, the reflectors each main() starts) rather than a copy of their calls, so a new
API call in one of them fails here until the manifests grant it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from fracgpu.api.v1beta1 import names
from fracgpu.kube.client import Transport
from fracgpu.kube.reflector import Reflector, WatchEvent
from fracgpu.kube.resources import LEASES, NODES, PODS
from fracgpu.kube.writer import KubeWriter
from tests.fakes.apiserver import FakeApiServer
from tests.manifests.rbac import Access, authorized, granted

NS = names.DEFAULT_NAMESPACE
NODE = "gpu-1"

# (service account, (group, resource, verb)) granted for code that is not there yet; each names why.
AHEAD_OF_CODE: dict[str, dict[tuple[str, str, str], str]] = {
    "fracgpu-device-plugin": {
        ("", "nodes", "get"): "read its Node back (inventory compare-before-write)",
        ("", "pods", "get"): "read one pod at Allocate",
    },
    "fracgpu-extender": {
        ("", "nodes", "get"): "direct reads outside the cache",
        ("", "namespaces", "get"): "direct reads outside the cache",
        ("", "pods", "get"): "idempotent re-bind reads the pod (KubeWriter.bind_pod on 409)",
        # a synthetic subresource: the API server checks it on status writes that set allocation or
        # reservedFor (1.36+, DRAResourceClaimGranularStatusAuthorization); no request names it
        ("resource.k8s.io", "resourceclaims/binding", "update"): "the allocator's claim status writes",
    },
    "fracgpu-controller": {
        ("", "pods", "get"): "direct reads outside the cache",
    },
}

Session = Callable[[FakeApiServer, KubeWriter], None]


def _clock() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


def _reader(server: FakeApiServer) -> Transport:
    """A connection pool of its own for reflectors: a watch cut by stop() must not leave a dead
    connection in the pool the writes use (urllib3 would wait out its read timeout on it)."""
    return Transport(server.api_client())


def _sync(*reflectors: Reflector) -> None:
    for r in reflectors:
        r.start()
    try:
        for r in reflectors:
            assert r.wait_synced(10), r
    finally:
        for r in reflectors:
            r.stop()


def _world(server: FakeApiServer) -> None:
    server.seed(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {names.LABEL_ENABLED: "true"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "bound", "namespace": "team-a",
                      "annotations": {names.ANN_ASSIGNED: "{}", names.ANN_PHASE: names.PHASE_ALLOCATING}},
         "spec": {"nodeName": NODE, "schedulerName": names.SCHEDULER_NAME,
                  "containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "pending", "namespace": "team-a"},
         "spec": {"schedulerName": names.SCHEDULER_NAME, "containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "team-a"},
         "spec": {"namespaceSelector": {"matchLabels": {names.LABEL_TENANT: "team-a"}},
                  "hard": {names.RESOURCE_MEMORY: "64Gi"}}},
    )


def device_plugin_session(server: FakeApiServer, writer: KubeWriter) -> None:
    from fracgpu.deviceplugin.apiserver import PodEvent
    from fracgpu.deviceplugin.kubeapiserver import KubeApiServer
    from fracgpu.deviceplugin.quotawatch import KubeTenantQuotas

    # the quota re-check's reflectors (TenantQuotas, Namespaces, fracgpu pods cluster-wide)
    quota = KubeTenantQuotas(_reader(server))
    quota.start()
    try:
        assert quota.wait_synced(10)
    finally:
        quota.stop()
    cluster = KubeApiServer(writer, NODE, namespace=NS)
    cluster.start(timeout_s=10)
    try:
        cluster.refresh()
        cluster.publish_node({names.ANN_INVENTORY: "[]"}, {names.LABEL_GPU_COUNT: "0"})
        cluster.patch_pod_annotations("team-a", "bound", {names.ANN_PHASE: names.PHASE_ALLOCATED})
        cluster.pod_event(PodEvent("team-a", "bound", "", "FracgpuAllocateRefused", "test"))
        cluster.renew_lease()  # creates the Lease
        cluster.renew_lease()  # renews it
    finally:
        cluster.stop()


def extender_session(server: FakeApiServer, writer: KubeWriter) -> None:
    from fracgpu.extender.cache import ClusterCache
    from fracgpu.extender.leader import CacheFence, LeaderConfig, Leadership
    from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
    from fracgpu.kube.leader import KubeLeaseStore, LeaderElector, SystemClock

    reader = _reader(server)
    scheduler = Scheduler(SchedulerConfig(heartbeat_stale_s=0), lambda: 0.0, wall=lambda: 0.0)
    cache = ClusterCache(reader, scheduler, namespace=NS)
    cache.start()
    try:
        assert cache.synced.wait(10)
    finally:
        cache.stop()
    # the leader election and cache fence `fracgpu extender` runs: create, renew, release the Lease
    cfg = LeaderConfig(NS, "extender-0")
    elector = LeaderElector(KubeLeaseStore(writer, NS, cfg.lease), NS, cfg.lease, cfg.identity, cfg.timing,
                            SystemClock())
    lead = Leadership(cache.synced.is_set, elector, CacheFence(_reader(server), scheduler), cfg)
    assert lead.tick() and lead.tick()
    lead.release()
    writer.bind_pod("team-a", "pending", NODE, annotations={names.ANN_ASSIGNED: "{}"})
    writer.update_tenant_quota_status("team-a", {"pending": 0})
    dra_session(server, writer)


def dra_session(server: FakeApiServer, writer: KubeWriter) -> None:
    """The extender with --dra on: its cache reads slices, templates and claims; the allocator writes a
    claim's finalizer and allocation, rolls one back, and tells a pod it cannot place."""
    from fracgpu.extender.cache import ClusterCache
    from fracgpu.extender.draallocator import Allocator
    from fracgpu.extender.dracache import DraView
    from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
    from tests.extender.draworld import DRA_RESOURCES, claim_pod, dra_node, gpus, pool, share_template

    for rt in DRA_RESOURCES:
        server.add_resource(rt)
    server.seed(dra_node("dra-1"), *pool("dra-1", gpus("dra-1", 1)), share_template("half", 50, "1Gi", "team-a"),
                share_template("vague", 50, None, "team-a"))
    for name, tpl in (("share", "half"), ("vague", "vague")):
        pod = server.seed(claim_pod(name, [tpl], namespace="team-a"))[0]
        claim = server.seed({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                             "metadata": {"name": f"{name}-c0", "namespace": "team-a"},
                             "spec": server.get_object("resourceclaimtemplates", tpl, "team-a")["spec"]["spec"]})[0]  # type: ignore[index]
        server.patch_object("pods", name, {"status": {"resourceClaimStatuses": [
            {"name": "c0", "resourceClaimName": claim["metadata"]["name"]}]}}, "team-a")
        assert pod
    scheduler = Scheduler(SchedulerConfig(heartbeat_stale_s=0, refresh_s=0), lambda: 0.0, wall=lambda: 0.0)
    view = DraView(scheduler, lambda: 0.0)
    cache = ClusterCache(_reader(server), scheduler, namespace=NS, dra=view)
    cache.start()
    try:
        assert cache.synced.wait(10)
        deadline = 100
        while len(view.waiting()) < 2 and deadline:
            deadline -= 1
            cache.synced.wait(0.05)
        assert Allocator(scheduler, view, writer, clock=lambda: 0.0).run_once() == 1
    finally:
        cache.stop()
    allocated = server.get_object("resourceclaims", "share-c0", "team-a")
    assert allocated is not None and allocated["status"]["allocation"]
    writer.deallocate_claim(allocated)


def controller_session(server: FakeApiServer, writer: KubeWriter) -> None:
    from fracgpu.controller.writer import ControllerWriter
    from fracgpu.kube.leader import KubeLeaseStore
    from fracgpu.kube.objects import ObjectRef

    def ignore(_: WatchEvent) -> None:
        return None

    # the reflectors fracgpu.controller.main starts (jobs only with --recovery-job: the component
    # manifests/recovery, tests/manifests/test_recovery_component.py)
    reader = _reader(server)
    _sync(
        Reflector(reader, NODES, ignore),
        Reflector(reader, PODS, ignore, field_selector=f"spec.schedulerName={names.SCHEDULER_NAME}"),
        Reflector(reader, LEASES, ignore, namespace=NS),
    )
    # with --dra on: main.watches adds the DRA kinds (and watches every pod)
    from fracgpu.controller.config import ControllerConfig
    from fracgpu.controller.loop import ClusterCache
    from fracgpu.controller.main import watches
    from tests.extender.draworld import DRA_RESOURCES

    for rt in DRA_RESOURCES:
        server.add_resource(rt)
    cfg = ControllerConfig()
    _sync(*watches(_reader(server), ClusterCache(cfg.taint_key, NS, dra=True), cfg, None))
    w = ControllerWriter(writer)
    w.add_taint(NODE, names.TAINT_GPU_FAILED, "NoSchedule")
    w.remove_taint(NODE, names.TAINT_GPU_FAILED)
    w.record_event(ObjectRef("Node", NODE), "Warning", "GpuFailed", "test")
    w.evict("team-a", "bound", "", None)
    store = KubeLeaseStore(writer, NS, "fracgpu-controller")
    assert store.get() is None
    lease = store.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                          "metadata": {"name": "fracgpu-controller", "namespace": NS},
                          "spec": {"holderIdentity": "a"}})
    store.replace(lease)


SESSIONS: dict[str, Session] = {
    "fracgpu-device-plugin": device_plugin_session,
    "fracgpu-extender": extender_session,
    "fracgpu-controller": controller_session,
}


def record(account: str, apiserver: FakeApiServer) -> list[Access]:
    _world(apiserver)
    apiserver.clear_requests()
    writer = KubeWriter(Transport(apiserver.api_client()), component=account, clock=_clock)
    SESSIONS[account](apiserver, writer)
    return [Access(r.verb, r.group, r.resource, r.subresource, r.namespace, r.name) for r in apiserver.requests]


@pytest.mark.parametrize("account", sorted(SESSIONS))
def test_every_request_of_a_component_is_allowed_and_every_rule_used(account: str, apiserver: FakeApiServer) -> None:
    accesses = record(account, apiserver)
    assert accesses
    denied = sorted({(a.verb, a.group, a.resource, a.subresource, a.namespace) for a in accesses
                     if not authorized(account, a)})
    assert denied == [], f"{account} makes requests its RBAC does not allow"
    used = {(a.group, f"{a.resource}/{a.subresource}" if a.subresource else a.resource, a.verb) for a in accesses}
    ahead = set(AHEAD_OF_CODE.get(account, {}))
    unused = sorted(granted(account) - used - ahead)
    assert unused == [], f"{account} holds rules no request of its session uses (remove, or list in AHEAD_OF_CODE)"
    assert not (ahead & used), f"now used, drop from AHEAD_OF_CODE: {sorted(ahead & used)}"


@pytest.mark.parametrize(
    ("account", "access"),
    [
        ("fracgpu-device-plugin", Access("delete", "", "pods", namespace="team-a", name="x")),
        ("fracgpu-device-plugin", Access("create", "", "pods", "binding", namespace="team-a", name="x")),
        ("fracgpu-device-plugin", Access("update", "coordination.k8s.io", "leases", namespace="kube-system",
                                         name=f"fracgpu-node-{NODE}")),
        ("fracgpu-device-plugin", Access("get", "", "secrets", namespace=NS, name="fracgpu-webhook-tls")),
        ("fracgpu-extender", Access("patch", "", "nodes", name=NODE)),
        ("fracgpu-extender", Access("update", "coordination.k8s.io", "leases", namespace=NS,
                                    name="fracgpu-controller")),
        ("fracgpu-extender", Access("update", "coordination.k8s.io", "leases", namespace=NS,
                                    name=f"fracgpu-node-{NODE}")),
        ("fracgpu-controller", Access("update", "coordination.k8s.io", "leases", namespace=NS,
                                      name="fracgpu-extender")),
        ("fracgpu-extender", Access("update", "fracgpu.io", "tenantquotas", name="team-a")),
        # DRA: it allocates claims; the devices are the drivers', the claims and classes their owners'
        ("fracgpu-extender", Access("create", "resource.k8s.io", "resourceslices")),
        ("fracgpu-extender", Access("delete", "resource.k8s.io", "resourceslices", name=f"{NODE}-gpu.fracgpu.io")),
        ("fracgpu-extender", Access("create", "resource.k8s.io", "resourceclaims", namespace="team-a")),
        ("fracgpu-extender", Access("delete", "resource.k8s.io", "resourceclaims", namespace="team-a", name="c")),
        ("fracgpu-extender", Access("update", "resource.k8s.io", "deviceclasses", name="vgpu.fracgpu.io")),
        ("fracgpu-extender", Access("update", "resource.k8s.io", "resourceclaims", "driver", namespace="team-a",
                                    name="c")),
        ("fracgpu-controller", Access("delete", "", "pods", namespace="team-a", name="x")),
        ("fracgpu-controller", Access("create", "", "pods", "binding", namespace="team-a", name="x")),
        ("fracgpu-controller", Access("create", "batch", "jobs", namespace="team-a")),
        # fracgpu-system is Pod Security privileged: no Jobs there, recovery or not
        ("fracgpu-controller", Access("create", "batch", "jobs", namespace=NS)),
        ("fracgpu-controller", Access("create", "", "pods", namespace=NS)),
        ("fracgpu-webhook", Access("get", "", "pods", namespace="team-a", name="x")),
        ("fracgpu-scheduler", Access("update", "coordination.k8s.io", "leases", namespace="kube-system",
                                     name="kube-scheduler")),
        ("fracgpu-scheduler", Access("get", "", "secrets", namespace="kube-system", name="x")),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{v.verb} {v.resource}/{v.subresource} {v.namespace}/{v.name}",
)
def test_what_a_component_may_not_do(account: str, access: Access) -> None:
    assert not authorized(account, access)


# The one grant the recorded session cannot show: the API server checks update on the synthetic subresource
# resourceclaims/binding when a status write sets allocation or reservedFor (Kubernetes 1.36+,
# DRAResourceClaimGranularStatusAuthorization; kubernetes.io/docs/tasks/administer-cluster/hardening-dra/).
def test_the_extender_may_write_a_claims_allocation() -> None:
    assert authorized("fracgpu-extender", Access("update", "resource.k8s.io", "resourceclaims", "binding",
                                                 namespace="team-a", name="c"))
    assert authorized("fracgpu-extender", Access("update", "resource.k8s.io", "resourceclaims", "status",
                                                 namespace="team-a", name="c"))


def test_the_scheduler_may_hold_only_its_own_lease() -> None:
    own = Access("update", "coordination.k8s.io", "leases", namespace=NS, name=names.SCHEDULER_NAME)
    assert authorized("fracgpu-scheduler", own)
    assert authorized("fracgpu-scheduler", Access("create", "", "pods", "binding", namespace="team-a", name="x"))
