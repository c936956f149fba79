"""The fake API server speaks the real wire format: checked with the official client, unmodified.

The official client's typed models are used as a user would (attribute access on optional
fields), so the client handles here are ``Any`` for mypy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes import watch as _watch
from kubernetes.client.exceptions import ApiException

from tests.fakes.apiserver import FakeApiServer, iter_watch_events, json_patch, merge_patch

Obj = dict[str, Any]
Watch: Any = _watch.Watch


@pytest.fixture
def core(apiserver: FakeApiServer) -> Any:
    return kubernetes.client.CoreV1Api(apiserver.api_client())


def node(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": dict(labels)}}


def pod(name: str, namespace: str = "default", node_name: str | None = None, phase: str = "Running",
        grace: int | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": "busybox"}]}
    if node_name:
        spec["nodeName"] = node_name
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": spec, "status": {"phase": phase}}


def raw_watch(core: Any, **kwargs: Any) -> Iterator[Obj]:
    response = core.list_node(watch=True, _preload_content=False, **kwargs)
    try:
        yield from iter_watch_events(response)
    finally:
        response.release_conn()


def test_typed_client_round_trip(apiserver: FakeApiServer, core: Any) -> None:
    created = core.create_node(node("n1", zone="a"))
    assert created.metadata.resource_version == "1"
    assert created.metadata.uid

    listed = core.list_node(label_selector="zone=a")
    assert [n.metadata.name for n in listed.items] == ["n1"]
    assert listed.metadata.resource_version == "1"

    with pytest.raises(ApiException) as caught:
        core.create_node(node("n1"))
    assert caught.value.status == 409
    assert '"reason": "AlreadyExists"' in str(caught.value.body)

    with pytest.raises(ApiException) as caught:
        core.read_node("missing")
    assert caught.value.status == 404


def test_list_items_of_builtin_resources_have_no_kind(apiserver: FakeApiServer) -> None:
    apiserver.seed(node("n1"), {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "t"}})
    api = apiserver.api_client()
    core: Any = kubernetes.client.CoreV1Api(api)
    custom: Any = kubernetes.client.CustomObjectsApi(api)
    core_list = core.list_node(_preload_content=False).json()
    custom_list = custom.list_cluster_custom_object("fracgpu.io", "v1beta1", "tenantquotas")
    assert "kind" not in core_list["items"][0]
    assert core_list["kind"] == "NodeList"
    assert custom_list["items"][0]["kind"] == "TenantQuota"


@pytest.mark.parametrize(("selector", "names"), [
    ("zone=a", ["n1", "n3"]),
    ("zone==a", ["n1", "n3"]),
    ("zone!=a", ["n2", "n4"]),
    ("zone in (a, b)", ["n1", "n2", "n3"]),
    ("zone notin (a)", ["n2", "n4"]),
    ("gpu", ["n1", "n2"]),
    ("!gpu", ["n3", "n4"]),
    ("zone=a,gpu", ["n1"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_label_selectors(apiserver: FakeApiServer, core: Any, selector: str,
                         names: list[str]) -> None:
    apiserver.seed(node("n1", zone="a", gpu="1"), node("n2", zone="b", gpu="1"), node("n3", zone="a"), node("n4"))
    assert [n.metadata.name for n in core.list_node(label_selector=selector).items] == names


def test_field_selectors(apiserver: FakeApiServer, core: Any) -> None:
    apiserver.seed(pod("a", node_name="n1"), pod("b", node_name="n2"), pod("c", namespace="x", node_name="n1"),
                   pod("d", phase="Pending"))
    names = [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1").items]
    assert names == ["a", "c"]
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=").items] == ["d"]
    assert [p.metadata.name for p in core.list_namespaced_pod("default", field_selector="metadata.name=b").items] == [
        "b"]
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces(
        field_selector="status.phase!=Pending,spec.nodeName=n1").items] == ["a", "c"]


def test_watch_from_resource_version_replays_history(apiserver: FakeApiServer,
                                                     core: Any) -> None:
    apiserver.seed(node("n1"))
    core.patch_node("n1", {"metadata": {"labels": {"x": "1"}}}, _content_type="application/merge-patch+json")
    core.delete_node("n1")

    events = [(e["type"], e["object"].metadata.resource_version)
              for e in Watch().stream(core.list_node, resource_version="0", timeout_seconds=0)]
    assert events == []  # rv 0: the current state (empty), then nothing new before the timeout

    events = [(e["type"], e["raw_object"]["metadata"]["resourceVersion"])
              for e in Watch().stream(core.list_node, resource_version="1", timeout_seconds=0)]
    assert events == [("MODIFIED", "2"), ("DELETED", "3")]


def test_watch_older_than_compaction_answers_410_expired(apiserver: FakeApiServer,
                                                         core: Any) -> None:
    apiserver.seed(node("n1"), node("n2"))
    apiserver.compact()

    [event] = raw_watch(core, resource_version="1")

    assert event["type"] == "ERROR"
    assert event["object"] == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": "too old resource version: 1 (2)", "reason": "Expired", "code": 410}
    with pytest.raises(ApiException) as caught:  # the official Watch raises on it, as against a real server
        list(Watch().stream(core.list_node, resource_version="1", timeout_seconds=1))
    assert caught.value.status == 410


def test_watch_bookmark_at_timeout(apiserver: FakeApiServer, core: Any) -> None:
    apiserver.seed(node("n1"))
    events = list(raw_watch(core, resource_version="1", allow_watch_bookmarks=True, timeout_seconds=0))
    assert events == [{"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
                                                      "metadata": {"resourceVersion": "1"}}}]


def test_merge_patch_json_patch_and_strategic_patch(apiserver: FakeApiServer,
                                                    core: Any) -> None:
    apiserver.seed({**node("n1"), "metadata": {"name": "n1", "labels": {"a": "1", "b": "2"}}})

    out = core.patch_node("n1", {"metadata": {"labels": {"a": None, "c": "3"}}},
                          _content_type="application/merge-patch+json")
    assert out.metadata.labels == {"b": "2", "c": "3"}
    out = core.patch_node("n1", {"metadata": {"annotations": {"x": "y"}}})  # the client picks strategic merge
    assert out.metadata.annotations == {"x": "y"}
    out = core.patch_node("n1", [{"op": "add", "path": "/metadata/labels/fracgpu.io~1enabled", "value": "true"},
                                 {"op": "remove", "path": "/metadata/labels/b"}])
    assert out.metadata.labels == {"c": "3", "fracgpu.io/enabled": "true"}

    with pytest.raises(ApiException) as caught:
        core.patch_node("n1", [{"op": "test", "path": "/metadata/labels/c", "value": "nope"}])
    assert caught.value.status == 422


def test_patch_with_a_stale_resource_version_conflicts(apiserver: FakeApiServer,
                                                       core: Any) -> None:
    apiserver.seed(node("n1"))
    core.patch_node("n1", {"metadata": {"labels": {"a": "1"}}}, _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as caught:
        core.patch_node("n1", {"metadata": {"resourceVersion": "1", "labels": {"a": "2"}}},
                        _content_type="application/merge-patch+json")
    assert caught.value.status == 409


def test_noop_patch_keeps_the_resource_version(apiserver: FakeApiServer, core: Any) -> None:
    apiserver.seed(node("n1", a="1"))
    out = core.patch_node("n1", {"metadata": {"labels": {"a": "1"}}}, _content_type="application/merge-patch+json")
    assert out.metadata.resource_version == "1"


def test_update_with_a_stale_resource_version_conflicts(apiserver: FakeApiServer,
                                                        core: Any) -> None:
    apiserver.seed(node("n1"))
    current = core.read_node("n1")
    current.metadata.labels = {"a": "1"}
    core.replace_node("n1", current)
    current.metadata.labels = {"a": "2"}
    with pytest.raises(ApiException) as caught:
        core.replace_node("n1", current)
    assert caught.value.status == 409
    assert "the object has been modified" in str(caught.value.body)


def test_status_subresource_rules(apiserver: FakeApiServer, core: Any) -> None:
    apiserver.seed({**node("n1"), "status": {"capacity": {"cpu": "4"}}})

    out = core.patch_node("n1", {"metadata": {"labels": {"l": "1"}}, "status": {"capacity": {"cpu": "8"}}},
                          _content_type="application/merge-patch+json")
    assert out.status.capacity == {"cpu": "4"}  # the main resource ignores status
    out = core.patch_node_status("n1", {"metadata": {"labels": {"m": "1"}}, "status": {"capacity": {"cpu": "8"}}},
                                 _content_type="application/merge-patch+json")
    assert out.status.capacity == {"cpu": "8"}
    assert out.metadata.labels == {"l": "1"}  # /status ignores everything else


def test_created_pods_start_pending_and_node_name_needs_a_binding(apiserver: FakeApiServer,
                                                                   core: Any) -> None:
    created = core.create_namespaced_pod("default", pod("p", phase="Running"))
    assert created.status.phase == "Pending"
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_pod("p", "default", {"spec": {"nodeName": "n1"}},
                                  _content_type="application/merge-patch+json")
    assert caught.value.status == 422

    core.create_namespaced_binding("default", {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                                               "target": {"kind": "Node", "name": "n1"}}, _preload_content=False)
    bound = core.read_namespaced_pod("p", "default")
    assert bound.spec.node_name == "n1"
    assert [(c.type, c.status) for c in bound.status.conditions] == [("PodScheduled", "True")]


@pytest.mark.parametrize(("bound", "phase", "options", "terminating"), [
    (True, "Running", {}, True),
    (True, "Running", {"grace_period_seconds": 0}, False),
    (False, "Pending", {}, False),
    (True, "Succeeded", {}, False),
], ids=["bound-running", "grace-0", "unbound", "terminal"])
def test_pod_deletion_grace(apiserver: FakeApiServer, core: Any, bound: bool, phase: str,
                            options: dict[str, int], terminating: bool) -> None:
    apiserver.seed(pod("p", node_name="n1" if bound else None, phase=phase))
    core.delete_namespaced_pod("p", "default", **options)
    left = apiserver.get_object("pods", "p", "default")
    assert (left is not None) == terminating
    if left is not None:
        assert left["metadata"]["deletionTimestamp"]
        assert left["metadata"]["deletionGracePeriodSeconds"] == 30
        assert apiserver.finalize_deletions() == 1
        assert apiserver.get_object("pods", "p", "default") is None


def test_finalizers_hold_deletion_until_removed(apiserver: FakeApiServer,
                                                core: Any) -> None:
    apiserver.seed({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "c", "namespace": "d", "finalizers": ["x/y"]}})
    core.delete_namespaced_config_map("c", "d")
    held = apiserver.get_object("configmaps", "c", "d")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    core.patch_namespaced_config_map("c", "d", {"metadata": {"finalizers": None}},
                                     _content_type="application/merge-patch+json")
    assert apiserver.get_object("configmaps", "c", "d") is None


def test_injected_failures_and_request_log(apiserver: FakeApiServer, core: Any) -> None:
    apiserver.seed(node("n1"))
    apiserver.fail_next("get", "nodes", 500, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            core.read_node("n1")
        assert caught.value.status == 500
    assert core.read_node("n1").metadata.name == "n1"

    records = [(r.method, r.verb, r.resource, r.subresource, r.namespace, r.name) for r in apiserver.requests]
    assert records == [("GET", "get", "nodes", "", "", "n1")] * 3


def test_leases_and_custom_objects(apiserver: FakeApiServer) -> None:
    api = apiserver.api_client()
    coordination: Any = kubernetes.client.CoordinationV1Api(api)
    coordination.create_namespaced_lease("fracgpu-system", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
        "spec": {"holderIdentity": "n1", "renewTime": "2026-01-02T03:04:05.000001Z"}})
    lease = coordination.read_namespaced_lease("l", "fracgpu-system")
    assert lease.spec.holder_identity == "n1"
    assert lease.spec.renew_time.microsecond == 1

    custom: Any = kubernetes.client.CustomObjectsApi(api)
    custom.create_cluster_custom_object("fracgpu.io", "v1beta1", "tenantquotas", {
        "apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "t"},
        "spec": {"hard": {}}, "status": {"pending": 9}})
    assert "status" not in custom.get_cluster_custom_object("fracgpu.io", "v1beta1", "tenantquotas", "t")
    custom.patch_cluster_custom_object_status("fracgpu.io", "v1beta1", "tenantquotas", "t", {"status": {"pending": 1}})
    assert custom.get_cluster_custom_object_status("fracgpu.io", "v1beta1", "tenantquotas", "t")["status"] == {
        "pending": 1}


def test_merge_and_json_patch_helpers() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == {
        "a": {"c": 2, "d": 3}, "l": [2]}
    doc = {"a": [1, 2], "b": {"c": 1}}
    assert json_patch(doc, [{"op": "add", "path": "/a/-", "value": 3}, {"op": "move", "from": "/b/c", "path": "/d"},
                            {"op": "copy", "from": "/d", "path": "/e"}, {"op": "replace", "path": "/a/0",
                                                                         "value": 0}]) == {
        "a": [0, 2, 3], "b": {}, "d": 1, "e": 1}
    assert doc == {"a": [1, 2], "b": {"c": 1}}  # not modified in place


def test_rbac_rules_from_the_request_log(apiserver: FakeApiServer, core: Any) -> None:
    apiserver.seed(pod("p"), node("n1"))
    core.read_node("n1")
    core.list_node()
    core.create_namespaced_pod_binding("p", "default", {"apiVersion": "v1", "kind": "Binding",
                                                        "metadata": {"name": "p"},
                                                        "target": {"kind": "Node", "name": "n1"}},
                                       _preload_content=False)
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "b"}}},
                              _content_type="application/merge-patch+json")
    assert apiserver.rbac_rules() == [("", "nodes", ("get", "list")), ("", "pods", ("patch",)),
                                      ("", "pods/binding", ("create",))]


def test_latency_delays_every_answer_but_keeps_them_correct(apiserver: FakeApiServer,
                                                            core: Any) -> None:
    apiserver.seed(node("n1"))
    apiserver.latency_s = 0.01
    assert core.read_node("n1").metadata.name == "n1"


def test_unknown_paths_are_404_status(apiserver: FakeApiServer) -> None:
    rest: Any = apiserver.api_client().rest_client
    response = rest.request("GET", f"{apiserver.url}/apis/apps/v1/namespaces/default/deployments")
    assert response.status == 404
    assert json.loads(response.read())["kind"] == "Status"


CLAIM_RULES = [
    ("reserved without an allocation", {"reservedFor": [{"resource": "pods", "name": "p", "uid": "u"}]},
     "may not be specified when `allocated` is not set"),
    ("a request the claim does not have", {"allocation": {"devices": {"results": [
        {"request": "other", "driver": "gpu.fracgpu.io", "pool": "n1", "device": "d"}]}}},
     "must be the name of a request in the claim"),
    ("a share ID that is not a UUID", {"allocation": {"devices": {"results": [
        {"request": "gpu", "driver": "gpu.fracgpu.io", "pool": "n1", "device": "d", "shareID": "s-1"}]}}},
     "must be a lowercase UUID"),
    ("a node selector without terms", {"allocation": {"devices": {"results": []},
                                                      "nodeSelector": {"nodeSelectorTerms": []}}},
     "must have at least one node selector term"),
]


@pytest.mark.parametrize(("name", "status", "message"), CLAIM_RULES, ids=[c[0] for c in CLAIM_RULES])
def test_claim_status_writes_follow_the_api_servers_rules(apiserver: FakeApiServer, name: str,
                                                          status: Obj, message: str) -> None:
    """What kube-apiserver refuses in a ResourceClaim status update, the fake refuses too (422), so a wrong
    allocation write fails in the tests as it would on a cluster; and a set allocation cannot change."""
    from tests.extender.draworld import DRA_RESOURCES

    for rt in DRA_RESOURCES:
        apiserver.add_resource(rt)
    claim = apiserver.seed({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                            "metadata": {"name": "c", "namespace": "default"},
                            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                                "deviceClassName": "vgpu.fracgpu.io"}}]}}})[0]
    api = kubernetes.client.CustomObjectsApi(apiserver.api_client())
    with pytest.raises(ApiException) as refused:
        api.replace_namespaced_custom_object_status("resource.k8s.io", "v1", "default", "resourceclaims", "c",
                                                    {**claim, "status": status})
    assert refused.value.status == 422 and message in str(refused.value.body)
    good = {"allocation": {"devices": {"results": [{"request": "gpu", "driver": "gpu.fracgpu.io", "pool": "n1",
                                                    "device": "d"}]}}}
    stored = api.replace_namespaced_custom_object_status("resource.k8s.io", "v1", "default", "resourceclaims", "c",
                                                         {**claim, "status": good})
    assert isinstance(stored, dict)
    changed = {"allocation": {"devices": {"results": [{"request": "gpu", "driver": "gpu.fracgpu.io", "pool": "n2",
                                                       "device": "d"}]}}}
    with pytest.raises(ApiException) as immutable:
        api.replace_namespaced_custom_object_status("resource.k8s.io", "v1", "default", "resourceclaims", "c",
                                                    {**stored, "status": changed})
    assert immutable.value.status == 422 and "immutable" in str(immutable.value.body)
