"""KubeWriter against the fake API server, over real HTTP."""

from __future__ import annotations

import threading

import pytest

from fracgpu.kube import client, errors, objects
from fracgpu.kube.objects import Obj, ObjectRef
from fracgpu.kube.resources import CONFIGMAPS, JOBS, PODS
from fracgpu.kube.writer import KubeWriter
from tests.fakes.apiserver import FakeApiServer


def node(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": dict(labels)}}


def pod(name: str, namespace: str = "default", node_name: str | None = None, phase: str = "Pending",
        **labels: str) -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": "busybox"}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": spec, "status": {"phase": phase}}


def test_patch_node_metadata_sets_and_deletes_keys(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed({**node("n1", keep="1", drop="2"),
                    "metadata": {"name": "n1", "labels": {"keep": "1", "drop": "2"}, "annotations": {"old": "x"}}})

    out = kube_writer.patch_node_metadata("n1", annotations={"fracgpu.io/gpu-inventory": "{}", "old": None},
                                          labels={"drop": None, "fracgpu.io/gpu-count": "8"})

    assert objects.annotations(out) == {"fracgpu.io/gpu-inventory": "{}"}
    assert objects.labels(out) == {"keep": "1", "fracgpu.io/gpu-count": "8"}
    patches = [r for r in apiserver.requests if r.verb == "patch"]
    assert len(patches) == 1  # one write for annotations and labels


def test_bind_copies_annotations_in_the_same_write(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(node("n1"), pod("p1"))
    rv_before = apiserver.resource_version

    kube_writer.bind_pod("default", "p1", "n1", annotations={"fracgpu.io/assigned": "{}",
                                                            "fracgpu.io/phase": "allocating"})

    bound = kube_writer.get_pod("default", "p1")
    assert bound["spec"]["nodeName"] == "n1"
    assert objects.annotations(bound) == {"fracgpu.io/assigned": "{}", "fracgpu.io/phase": "allocating"}
    assert apiserver.resource_version == rv_before + 1  # nodeName and annotations: one write
    binds = [r for r in apiserver.requests if r.subresource == "binding"]
    assert [(b.verb, b.resource, b.namespace, b.name) for b in binds] == [("create", "pods", "default", "p1")]


def test_bind_to_another_node_is_a_conflict(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(node("n1"), node("n2"), pod("p1"))
    kube_writer.bind_pod("default", "p1", "n1", annotations={"fracgpu.io/phase": "allocating"})

    with pytest.raises(errors.Conflict) as caught:
        kube_writer.bind_pod("default", "p1", "n2", annotations={"fracgpu.io/phase": "allocating"})

    assert caught.value.status == 409
    assert "already assigned" in caught.value.message
    assert kube_writer.get_pod("default", "p1")["spec"]["nodeName"] == "n1"


def test_repeated_bind_to_the_same_node_is_idempotent(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(node("n1"), pod("p1"))
    kube_writer.bind_pod("default", "p1", "n1", annotations={"fracgpu.io/phase": "allocating"})
    kube_writer.bind_pod("default", "p1", "n1", annotations={"fracgpu.io/phase": "allocating"})

    with pytest.raises(errors.Conflict):  # same node, other reservation: not the same bind
        kube_writer.bind_pod("default", "p1", "n1", annotations={"fracgpu.io/phase": "failed: x"})


def test_bind_with_a_stale_uid_is_a_conflict(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(node("n1"), pod("p1"))
    with pytest.raises(errors.Conflict):
        kube_writer.bind_pod("default", "p1", "n1", uid="not-the-pods-uid")
    assert "nodeName" not in kube_writer.get_pod("default", "p1")["spec"]


def test_bind_of_a_missing_pod_is_not_found(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    with pytest.raises(errors.NotFound):
        kube_writer.bind_pod("default", "ghost", "n1")


def test_taint_add_retries_on_conflict(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(node("n1"))
    apiserver.fail_next("update", "nodes", 409, times=2)

    out = kube_writer.add_node_taint("n1", "fracgpu.io/gpu-failed", effect="NoSchedule", value="xid-79")

    assert out["spec"]["taints"] == [{"key": "fracgpu.io/gpu-failed", "effect": "NoSchedule", "value": "xid-79",
                                      "timeAdded": "2026-01-02T03:04:05Z"}]
    updates = [r for r in apiserver.requests if r.verb == "update"]
    assert len(updates) == 3


def test_taint_update_after_a_concurrent_write_keeps_the_other_writer(apiserver: FakeApiServer,
                                                                      kube_writer: KubeWriter) -> None:
    """A real conflict: the node changes between our GET and PUT; the retry re-reads and keeps it."""
    apiserver.seed(node("n1"))
    apiserver.on_next("update", "nodes", lambda: apiserver.patch_object(
        "nodes", "n1", {"metadata": {"labels": {"other": "writer"}}}))

    out = kube_writer.add_node_taint("n1", "t")

    assert objects.labels(out)["other"] == "writer"
    assert [t["key"] for t in out["spec"]["taints"]] == ["t"]
    assert [r.verb for r in apiserver.requests] == ["get", "update", "get", "update"]


def test_taint_conflicts_beyond_the_retry_budget_surface(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(node("n1"))
    apiserver.fail_next("update", "nodes", 409, times=kube_writer.conflict_retries + 1)
    with pytest.raises(errors.Conflict):
        kube_writer.add_node_taint("n1", "t")


def test_taint_add_is_idempotent_and_remove_removes(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed({**node("n1"), "spec": {"taints": [{"key": "other", "effect": "NoExecute"}]}})
    kube_writer.add_node_taint("n1", "t")
    rv = apiserver.resource_version
    kube_writer.add_node_taint("n1", "t")
    assert apiserver.resource_version == rv  # already there: no write

    out = kube_writer.remove_node_taint("n1", "t")
    assert out["spec"]["taints"] == [{"key": "other", "effect": "NoExecute"}]
    out = kube_writer.remove_node_taint("n1", "other")
    assert "taints" not in out["spec"]


def test_eviction_refused_by_a_pdb_is_too_many_requests(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(pod("p1", node_name="n1", phase="Running", app="a"),
                   {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": {"name": "pdb", "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"app": "a"}}, "minAvailable": 1}})

    with pytest.raises(errors.TooManyRequests) as caught:
        kube_writer.evict_pod("default", "p1")

    assert caught.value.message == "Cannot evict pod as it would violate the pod's disruption budget."
    assert caught.value.details["causes"] == [{"reason": "DisruptionBudget", "message":
                                               "The disruption budget pdb needs 1 healthy pods and has 1 currently"}]
    assert caught.value.retryable
    assert apiserver.get_object("pods", "p1", "default") is not None


def test_eviction_injected_429_carries_the_message(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(pod("p1", node_name="n1", phase="Running"))
    apiserver.fail_next("create", "pods/eviction", 429, message="slow down", retry_after_s=3)
    with pytest.raises(errors.TooManyRequests, match="slow down") as caught:
        kube_writer.evict_pod("default", "p1")
    assert caught.value.retry_after_s == 3.0


def test_eviction_allowed_starts_graceful_deletion(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(pod("p1", node_name="n1", phase="Running", app="a"),
                   pod("p2", node_name="n1", phase="Running", app="a"),
                   {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": {"name": "pdb", "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"app": "a"}}, "maxUnavailable": 1}})

    kube_writer.evict_pod("default", "p1")

    terminating = apiserver.get_object("pods", "p1", "default")
    assert terminating is not None and objects.deletion_timestamp(terminating)
    assert apiserver.finalize_pod("default", "p1")
    assert apiserver.get_object("pods", "p1", "default") is None


def test_lease_created_then_renewed(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    first = kube_writer.renew_lease("fracgpu-system", "fracgpu-node-n1", holder="n1", duration_s=40)
    assert first["spec"] == {"holderIdentity": "n1", "leaseDurationSeconds": 40, "leaseTransitions": 0,
                             "acquireTime": "2026-01-02T03:04:05.678901Z",
                             "renewTime": "2026-01-02T03:04:05.678901Z"}

    second = kube_writer.renew_lease("fracgpu-system", "fracgpu-node-n1", holder="other", duration_s=40)
    assert second["spec"]["holderIdentity"] == "other"
    assert second["spec"]["leaseTransitions"] == 1
    assert int(objects.resource_version(second)) > int(objects.resource_version(first))
    assert kube_writer.get_lease("fracgpu-system", "fracgpu-node-n1") == second


def test_lease_renew_retries_on_conflict(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    kube_writer.renew_lease("ns", "l", holder="n1", duration_s=10)
    apiserver.fail_next("update", "leases", 409)
    out = kube_writer.renew_lease("ns", "l", holder="n1", duration_s=10)
    assert out["spec"]["holderIdentity"] == "n1"


def test_a_lease_created_by_another_writer_first_is_read_and_renewed(apiserver: FakeApiServer,
                                                                    kube_writer: KubeWriter) -> None:
    """Two writers create the same Lease at once: ours gets AlreadyExists, reads theirs and takes it over."""
    theirs = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "ns"},
              "spec": {"holderIdentity": "n2", "leaseDurationSeconds": 10, "leaseTransitions": 0}}
    apiserver.on_next("create", "leases", lambda: apiserver.seed(theirs))
    out = kube_writer.renew_lease("ns", "l", holder="n1", duration_s=10)
    assert (out["spec"]["holderIdentity"], out["spec"]["leaseTransitions"]) == ("n1", 1)
    assert [r.verb for r in apiserver.requests if "leases" in r.path] == ["get", "create", "get", "update"]


def test_get_missing_lease_is_not_found(kube_writer: KubeWriter) -> None:
    with pytest.raises(errors.NotFound):
        kube_writer.get_lease("ns", "nope")


def test_patch_pod_annotations_with_a_stale_resource_version_conflicts(apiserver: FakeApiServer,
                                                                       kube_writer: KubeWriter) -> None:
    [seeded] = apiserver.seed({**pod("p1"), "metadata": {"name": "p1", "namespace": "default",
                                                         "annotations": {"a": "1", "b": "2"}}})
    out = kube_writer.patch_pod_annotations("default", "p1", {"a": None, "fracgpu.io/phase": "allocated"},
                                            resource_version=objects.resource_version(seeded))
    assert objects.annotations(out) == {"b": "2", "fracgpu.io/phase": "allocated"}

    with pytest.raises(errors.Conflict):
        kube_writer.patch_pod_annotations("default", "p1", {"b": None},
                                          resource_version=objects.resource_version(seeded))


def test_list_pods_by_node_uses_a_field_selector(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(pod("a", node_name="n1"), pod("b", node_name="n2"), pod("c", namespace="x", node_name="n1"),
                   pod("d"))

    on_n1 = kube_writer.list_pods(node_name="n1")

    assert sorted(objects.key(p) for p in on_n1) == [("default", "a"), ("x", "c")]
    assert all(p["kind"] == "Pod" and p["apiVersion"] == "v1" for p in on_n1)
    [listed] = [r for r in apiserver.requests if r.verb == "list"]
    assert "fieldSelector=spec.nodeName%3Dn1" in listed.query
    assert [objects.name(p) for p in kube_writer.list_pods(namespace="x")] == ["c"]


def test_lists_are_paginated(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(*(node(f"n{i:04d}") for i in range(1203)))
    nodes = kube_writer.list_nodes()
    assert [objects.name(n) for n in nodes] == [f"n{i:04d}" for i in range(1203)]
    assert len([r for r in apiserver.requests if r.verb == "list"]) == 3


def test_create_event_about_a_pod(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    [p] = apiserver.seed(pod("p1", namespace="team"))
    kube_writer.create_event(ObjectRef.of(p), reason="QuotaExceeded", message="tenant ns/team over quota",
                             type="Warning")

    [event] = apiserver.list_objects("events", "team")
    assert event["involvedObject"] == {"kind": "Pod", "apiVersion": "v1", "name": "p1", "namespace": "team",
                                       "uid": objects.uid(p)}
    assert (event["reason"], event["type"], event["reportingComponent"], event["reportingInstance"]) == (
        "QuotaExceeded", "Warning", "fracgpu-test", "test-host")
    assert event["firstTimestamp"] == "2026-01-02T03:04:05Z"


def test_node_events_go_to_the_default_namespace(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    kube_writer.create_event(ObjectRef(kind="Node", name="n1"), reason="GpuUnhealthy", message="xid 79")
    assert [e["involvedObject"]["name"] for e in apiserver.list_objects("events", "default")] == ["n1"]


def test_tenant_quota_status_update(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed({"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "team-a"},
                    "spec": {"hard": {"fracgpu.io/vgpu-core": "400"}}})
    status = {"used": {"fracgpu.io/vgpu-core": "150"}, "pending": 3, "queue": ["ns-a/pod-7"]}

    out = kube_writer.update_tenant_quota_status("team-a", status)

    assert out["status"] == status
    assert out["spec"] == {"hard": {"fracgpu.io/vgpu-core": "400"}}
    [put] = [r for r in apiserver.requests if r.verb == "update"]
    assert (put.group, put.resource, put.subresource) == ("fracgpu.io", "tenantquotas", "status")
    assert kube_writer.get_tenant_quota("team-a")["status"] == status
    assert [objects.name(q) for q in kube_writer.list_tenant_quotas()] == ["team-a"]


def test_tenant_quota_status_conditional_update_conflicts(apiserver: FakeApiServer,
                                                          kube_writer: KubeWriter) -> None:
    [tq] = apiserver.seed({"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota",
                           "metadata": {"name": "team-a"}, "spec": {}})
    kube_writer.update_tenant_quota_status("team-a", {"pending": 1},
                                           resource_version=objects.resource_version(tq))
    with pytest.raises(errors.Conflict):
        kube_writer.update_tenant_quota_status("team-a", {"pending": 2},
                                               resource_version=objects.resource_version(tq))


def test_tenant_quota_status_retries_without_resource_version(apiserver: FakeApiServer,
                                                               kube_writer: KubeWriter) -> None:
    apiserver.seed({"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "t"}})
    apiserver.fail_next("update", "tenantquotas/status", 409)
    assert kube_writer.update_tenant_quota_status("t", {"pending": 0})["status"] == {"pending": 0}


def test_list_namespaces_by_label(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(*({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": lb}}
                     for n, lb in [("a", {"fracgpu.io/tenant": "t"}), ("b", {}), ("c", {"fracgpu.io/tenant": "u"})]))
    assert [objects.name(n) for n in kube_writer.list_namespaces()] == ["a", "b", "c"]
    assert [objects.name(n) for n in kube_writer.list_namespaces(label_selector="fracgpu.io/tenant=t")] == ["a"]
    assert [objects.name(n) for n in kube_writer.list_namespaces(label_selector="fracgpu.io/tenant")] == ["a", "c"]


@pytest.mark.parametrize(("code", "error"), [
    (400, errors.BadRequest), (403, errors.Forbidden), (404, errors.NotFound), (409, errors.Conflict),
    (410, errors.Expired), (422, errors.BadRequest), (429, errors.TooManyRequests), (500, errors.ServerError),
    (503, errors.ServerError),
], ids=str)
def test_http_errors_map_to_the_hierarchy(apiserver: FakeApiServer, kube_writer: KubeWriter, code: int,
                                          error: type[errors.KubeAPIError]) -> None:
    apiserver.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}})
    apiserver.fail_next("get", "configmaps", code, message="injected")
    with pytest.raises(error) as caught:
        kube_writer.get_object(CONFIGMAPS, "c", "d")
    assert (caught.value.status, caught.value.message) == (code, "injected")


def test_create_twice_is_already_exists(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    kube_writer.transport.request("POST", CONFIGMAPS.path("d"), body=body)
    with pytest.raises(errors.AlreadyExists):
        kube_writer.transport.request("POST", CONFIGMAPS.path("d"), body=body)


def test_unreachable_server_is_unavailable(kube_writer: KubeWriter, apiserver: FakeApiServer) -> None:
    apiserver.stop()
    with pytest.raises(errors.Unavailable):
        kube_writer.get_node("n1")


def test_eviction_with_a_stale_uid_is_a_conflict(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    """A pod recreated under the same name is not the one we meant to evict."""
    apiserver.seed(pod("p1", node_name="n1", phase="Running"))
    with pytest.raises(errors.Conflict):
        kube_writer.evict_pod("default", "p1", uid="uid-of-a-predecessor")
    [current] = apiserver.list_objects("pods", "default")
    kube_writer.evict_pod("default", "p1", uid=objects.uid(current), grace_period_s=0)
    assert apiserver.get_object("pods", "p1", "default") is None


def test_generic_create_replace_delete(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    created = kube_writer.create_object(JOBS, {"apiVersion": "batch/v1", "kind": "Job",
                                               "metadata": {"name": "j"}, "spec": {"x": 1}}, namespace="ns")
    with pytest.raises(errors.AlreadyExists):
        kube_writer.create_object(JOBS, created, namespace="ns")

    replaced = kube_writer.replace_object(JOBS, {**created, "spec": {"x": 2}}, namespace="ns")
    assert replaced["spec"] == {"x": 2}
    with pytest.raises(errors.Conflict):  # created's resourceVersion is stale now
        kube_writer.replace_object(JOBS, {**created, "spec": {"x": 3}}, namespace="ns")

    with pytest.raises(errors.Conflict):
        kube_writer.delete_object(JOBS, "j", namespace="ns", uid="someone-else")
    kube_writer.delete_object(JOBS, "j", namespace="ns", uid=objects.uid(created))
    assert apiserver.list_objects("jobs") == []


def test_delete_pod_with_grace_only_marks_it(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(pod("p1", node_name="n1", phase="Running"))
    out = kube_writer.delete_object(PODS, "p1", namespace="default")
    assert objects.deletion_timestamp(out)
    kube_writer.delete_object(PODS, "p1", namespace="default", grace_period_s=0)
    assert apiserver.get_object("pods", "p1", "default") is None


def test_pdb_status_budget_is_spent_by_evictions(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(pod("p1", node_name="n1", phase="Running", app="a"),
                   pod("p2", node_name="n1", phase="Running", app="a"),
                   {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": {"name": "pdb", "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"app": "a"}}},
                    "status": {"disruptionsAllowed": 1, "desiredHealthy": 1, "currentHealthy": 2}})
    kube_writer.evict_pod("default", "p1")
    with pytest.raises(errors.TooManyRequests):
        kube_writer.evict_pod("default", "p2")
    budget = apiserver.get_object("poddisruptionbudgets", "pdb", "default")
    assert budget is not None and budget["status"]["disruptionsAllowed"] == 0


def test_pending_pods_ignore_pdbs(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    apiserver.seed(pod("p1", app="a"), {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                        "metadata": {"name": "pdb", "namespace": "default"},
                                        "spec": {"selector": {"matchLabels": {"app": "a"}}, "minAvailable": 5}})
    kube_writer.evict_pod("default", "p1")
    assert apiserver.get_object("pods", "p1", "default") is None


def test_missing_namespace_when_required() -> None:
    with FakeApiServer(require_namespaces=True) as strict:
        transport = client.Transport(client.api_client_for_host(strict.url))
        try:
            w = KubeWriter(transport)
            with pytest.raises(errors.NotFound, match='namespaces "ghost" not found'):
                w.create_object(CONFIGMAPS, {"metadata": {"name": "c"}}, namespace="ghost")
            strict.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ghost"}})
            assert objects.namespace(w.create_object(CONFIGMAPS, {"metadata": {"name": "c"}},
                                                     namespace="ghost")) == "ghost"
        finally:
            transport.close()


def test_parallel_binds_of_one_pod_let_exactly_one_win(apiserver: FakeApiServer, kube_writer: KubeWriter) -> None:
    """kube-scheduler binds in parallel: the API server serialises, one Binding wins, the rest get 409."""
    apiserver.seed(pod("p1"), *(node(f"n{i}") for i in range(8)))
    outcomes: dict[str, str] = {}

    def bind(target: str) -> None:
        try:
            kube_writer.bind_pod("default", "p1", target, annotations={"fracgpu.io/assigned": target})
            outcomes[target] = "bound"
        except errors.Conflict:
            outcomes[target] = "conflict"

    threads = [threading.Thread(target=bind, args=(f"n{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    winners = [n for n, o in outcomes.items() if o == "bound"]
    assert len(outcomes) == 8 and len(winners) == 1
    bound = kube_writer.get_pod("default", "p1")
    assert bound["spec"]["nodeName"] == winners[0]
    assert objects.annotations(bound)["fracgpu.io/assigned"] == winners[0]
