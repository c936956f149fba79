"""The extender's /metrics over real HTTP: per-tenant used / hard / pending from the quota ledger."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fracgpu.api.v1beta1.names import (
    ANN_NS_CORE_QUOTA,
    ANN_NS_MEMORY_QUOTA,
    LABEL_TENANT,
    RESOURCE_CORE,
    RESOURCE_MEMORY,
)
from fracgpu.core.records import pod_record
from fracgpu.extender.leader import Leadership
from tests.extender.builders import GI, bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, World, build_world

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def namespace(name: str, annotations: dict[str, str] | None = None,
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}}}


def tenant_quota(name: str, memory: str, cores: str) -> dict[str, Any]:
    return {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota",
            "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1},
            "spec": {"namespaceSelector": {"matchLabels": {LABEL_TENANT: name}},
                     "hard": {RESOURCE_MEMORY: memory, RESOURCE_CORE: cores}}}


def quota_world() -> World:
    """TenantQuota team-a (16Gi, 100 cores) over namespace a1; namespace b with a 32Gi annotation;
    namespace free without any quota; one node of 8 A100-80GB."""
    return build_world([
        namespace("a1", labels={LABEL_TENANT: "team-a"}),
        namespace("b", {ANN_NS_MEMORY_QUOTA: "32Gi"}),
        namespace("free"),
        namespace("broken", {ANN_NS_CORE_QUOTA: "lots"}),
        tenant_quota("team-a", "16Gi", "100"),
        node_obj("n1"),
        pod_obj("p1", 50, "8Gi", namespace="a1"),
        pod_obj("p2", 60, "4Gi", namespace="a1"),
    ])


async def scrape(client: Any) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def tenant_series(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0].startswith("fracgpu_tenant_")}


def used(tenant: str, resource: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "fracgpu_tenant_used", (("resource", resource), ("tenant", tenant))


def hard(tenant: str, resource: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "fracgpu_tenant_hard", (("resource", resource), ("tenant", tenant))


def pending(tenant: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "fracgpu_tenant_pending", (("tenant", tenant),)


async def test_configured_tenants_are_listed_with_their_limits_before_any_use(serve: ClientFactory) -> None:
    client = await serve(quota_world())
    assert tenant_series(await scrape(client)) == {
        used("ns/b", RESOURCE_MEMORY): 0, used("ns/b", RESOURCE_CORE): 0,
        hard("ns/b", RESOURCE_MEMORY): 32 * GI, pending("ns/b"): 0,
        # a quota that cannot be read: listed (its use counts), but no limit to show
        used("ns/broken", RESOURCE_MEMORY): 0, used("ns/broken", RESOURCE_CORE): 0, pending("ns/broken"): 0,
        used("tq/team-a", RESOURCE_MEMORY): 0, used("tq/team-a", RESOURCE_CORE): 0,
        hard("tq/team-a", RESOURCE_MEMORY): 16 * GI, hard("tq/team-a", RESOURCE_CORE): 100,
        pending("tq/team-a"): 0,
    }  # namespace `free` has no quota and holds nothing: no series


async def test_used_and_pending_follow_binds_and_the_quota_queue(serve: ClientFactory) -> None:
    world = quota_world()
    client = await serve(world)
    p1, p2 = pod_obj("p1", 50, "8Gi", namespace="a1"), pod_obj("p2", 60, "4Gi", namespace="a1")
    out = await (await client.post("/bind", json=bind_args(p1, "n1"))).json()
    assert out["Error"] == ""
    # p2 asks 60 vgpu-core next to 50 held of 100: refused and queued
    out = await (await client.post("/filter", json=filter_args(p2, ["n1"]))).json()
    assert out["NodeNames"] == [] and "tq/team-a" in next(iter(out["FailedAndUnresolvableNodes"].values()))
    # a pod of a namespace without quota shows up once it holds something
    free = pod_obj("f1", 100, None, namespace="free")
    world.scheduler.apply_pod(pod_record(free))
    assert (await (await client.post("/bind", json=bind_args(free, "n1"))).json())["Error"] == ""
    samples = await scrape(client)
    assert samples[used("tq/team-a", RESOURCE_CORE)] == 50
    assert samples[used("tq/team-a", RESOURCE_MEMORY)] == 8 * GI
    assert samples[hard("tq/team-a", RESOURCE_CORE)] == 100
    assert samples[pending("tq/team-a")] == 1
    assert samples[used("ns/free", RESOURCE_CORE)] == 100
    assert samples[used("ns/free", RESOURCE_MEMORY)] == 80 * GI  # a whole GPU's memory by default
    assert samples[pending("ns/free")] == 0
    assert hard("ns/free", RESOURCE_CORE) not in samples  # unlimited: no limit series
    # the rest of /metrics is still there
    assert samples[("fracgpu_extender_cache_objects", (("kind", "reservations"),))] == 2


async def test_is_leader_follows_the_leadership(serve: ClientFactory) -> None:
    world = quota_world()
    client = await serve(world)
    assert (await scrape(client))[("fracgpu_extender_is_leader", ())] == 1  # alone: it binds
    world.deps.leadership = Leadership(lambda: False)  # a replica whose cache has not synced
    assert (await scrape(client))[("fracgpu_extender_is_leader", ())] == 0
