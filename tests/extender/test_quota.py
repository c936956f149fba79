"""Tenant quota in filter and bind, over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_NS_MEMORY_QUOTA
from fracgpu.core.snapshot import pod_record
from tests.extender.builders import bind_args, bound_annotations, filter_args, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, World, build_world


def namespace(name: str, memory_quota: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    ann = {ANN_NS_MEMORY_QUOTA: memory_quota} if memory_quota else {}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": ann, "labels": labels or {}}}


def tenant_world(n_pending: int = 3) -> World:
    """Namespace team-a may hold 16Gi of VRAM; team-b is unlimited. Two nodes of 8 A100-80GB."""
    pods = [pod_obj(f"a{i}", 10, "8Gi", namespace="team-a") for i in range(n_pending)]
    return build_world([namespace("team-a", "16Gi"), namespace("team-b"), node_obj("n1"), node_obj("n2"), *pods])


async def _bind(client: Any, pod: dict[str, Any], node: str = "n1") -> str:
    out = await (await client.post("/bind", json=bind_args(pod, node))).json()
    return str(out["Error"])


async def test_tenant_at_its_limit_fails_every_node_unresolvably(serve: ClientFactory) -> None:
    world = tenant_world()
    client = await serve(world)
    pods = [pod_obj(f"a{i}", 10, "8Gi", namespace="team-a") for i in range(3)]
    assert await _bind(client, pods[0]) == ""
    assert await _bind(client, pods[1]) == ""
    out = await (await client.post("/filter", json=filter_args(pods[2], ["n1", "n2"]))).json()
    assert out["NodeNames"] == []
    reasons = set(out["FailedAndUnresolvableNodes"].values())
    assert len(reasons) == 1 and out["FailedNodes"] == {}
    (reason,) = reasons
    assert "ns/team-a" in reason and "16Gi" in reason and "8Gi" in reason
    # bind re-checks too
    assert "ns/team-a" in await _bind(client, pods[2])
    # another tenant is not affected
    b = pod_obj("b0", 10, "8Gi", namespace="team-b")
    world.scheduler.apply_pod(pod_record(b))
    out = await (await client.post("/filter", json=filter_args(b, ["n1", "n2"]))).json()
    assert len(out["NodeNames"]) == 1


async def test_terminating_pod_keeps_quota_until_it_ends(serve: ClientFactory) -> None:
    world = tenant_world()
    client = await serve(world)
    pods = [pod_obj(f"a{i}", 10, "8Gi", namespace="team-a") for i in range(3)]
    await _bind(client, pods[0])
    await _bind(client, pods[1])
    _, _, node, ann = world.binder.bindings[0]
    running = pod_obj("a0", 10, "8Gi", namespace="team-a", node=node, phase="Running",
                      annotations=bound_annotations(ann[ANN_ASSIGNED]))
    running["metadata"]["deletionTimestamp"] = "2026-11-22T23:00:00Z"
    world.scheduler.apply_pod(pod_record(running))
    out = await (await client.post("/filter", json=filter_args(pods[2], ["n1"]))).json()
    assert out["NodeNames"] == []  # still held through the grace period
    running["status"]["phase"] = "Succeeded"
    world.scheduler.apply_pod(pod_record(running))
    out = await (await client.post("/filter", json=filter_args(pods[2], ["n1"]))).json()
    assert out["NodeNames"] == ["n1"]


async def test_concurrent_binds_of_one_tenant_never_exceed_it(serve: ClientFactory) -> None:
    """64 pods of team-a race for a 16Gi quota: exactly two 8Gi binds win, across two nodes."""
    world = tenant_world(64)
    client = await serve(world)
    pods = [pod_obj(f"a{i}", 10, "8Gi", namespace="team-a") for i in range(64)]
    errors = await asyncio.gather(*(_bind(client, p, "n1" if i % 2 else "n2") for i, p in enumerate(pods)))
    assert errors.count("") == 2
    assert all("ns/team-a" in e for e in errors if e)
    used = world.deps.metrics.registry.get_sample_value(
        "fracgpu_tenant_used", {"tenant": "ns/team-a", "resource": "fracgpu.io/vgpu-memory"})
    assert used == 16 * 1024**3


def team_quota() -> dict[str, Any]:
    return {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota",
            "metadata": {"name": "team", "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1},
            "spec": {"namespaceSelector": {"matchLabels": {"fracgpu.io/tenant": "team"}},
                     "hard": {"fracgpu.io/vgpu-memory": "8Gi"}, "allowedZones": ["z1"]}}


async def test_tenantquota_zones_and_status_writes(serve: ClientFactory) -> None:
    pods = [pod_obj(f"t{i}", 10, "8Gi", namespace="team-ns") for i in range(2)]
    world = build_world([namespace("team-ns", labels={"fracgpu.io/tenant": "team"}), team_quota(),
                         node_obj("in-z1", zone="z1"), node_obj("in-z2", zone="z2"), *pods])
    client = await serve(world)
    out = await (await client.post("/filter", json=filter_args(pods[0], ["in-z1", "in-z2"]))).json()
    assert out["NodeNames"] == ["in-z1"]
    assert out["FailedAndUnresolvableNodes"] == {"in-z2": "tenant tq/team may use only zones z1"}
    assert await _bind(client, pods[0], "in-z1") == ""
    # the second pod waits: quota used up; it is queued for the status
    out = await (await client.post("/filter", json=filter_args(pods[1], ["in-z1"]))).json()
    assert "tq/team" in out["FailedAndUnresolvableNodes"]["in-z1"]
    writes = world.scheduler.quota_status_writes({})
    assert [name for name, _ in writes] == ["team"]
    status = writes[0][1]
    assert status["used"]["fracgpu.io/vgpu-memory"] == "8Gi" and status["pending"] == 1
    assert status["queue"] == ["team-ns/t1"]
    # written just now: rate-limited
    assert world.scheduler.quota_status_writes({"team": world.clock.t}) == []
