"""Tenant quota in filter and bind, over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_GPU_MODEL, ANN_NS_MEMORY_QUOTA
from fracgpu.core.records import pod_record
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
    # the namespace (and its quota annotation) deleted: nothing limits what is left of it
    world.scheduler.delete_namespace("team-a")
    out = await (await client.post("/filter", json=filter_args(pods[2], ["n1", "n2"]))).json()
    assert len(out["NodeNames"]) == 1 and out["FailedAndUnresolvableNodes"] == {}, out


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
    # the TenantQuota deleted: its limit and its zones no longer apply to the namespace
    world.scheduler.delete_tenant_quota("team")
    out = await (await client.post("/filter", json=filter_args(pods[1], ["in-z1", "in-z2"]))).json()
    assert len(out["NodeNames"]) == 1 and out["FailedAndUnresolvableNodes"] == {}, out
    assert world.scheduler.quota_status_writes({}) == []


# ---- the tenant's queue: a lower-ranked pod does not overtake a waiting one that fits ----------------

def ranked(name: str, priority: int, *, cores: int = 10, memory: str = "8Gi", model: str = "") -> dict[str, Any]:
    """A team-a pod with a priority (and a GPU model rule)."""
    pod = pod_obj(name, cores, memory, namespace="team-a", annotations={ANN_GPU_MODEL: model} if model else None)
    pod["spec"]["priority"] = priority
    return pod


def waiting_behind(name: str, priority: int) -> str:
    return f"waiting behind team-a/{name} (priority {priority}) in tenant ns/team-a's queue"


async def _filter(client: Any, pod: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = await (await client.post("/filter", json=filter_args(pod, nodes))).json()
    assert out["Error"] == "", out
    return out


@pytest.mark.parametrize(("high", "low_kept"), [
    (ranked("high", 10, memory="12Gi"), []),  # it fits n1: the low one waits behind it
    (ranked("high", 10, memory="12Gi", model="H100*"), ["n1"]),  # it fits no node (no H100): the low one goes
], ids=["the waiting pod fits a node", "the waiting pod fits no node"])
async def test_a_lower_ranked_pod_does_not_overtake_one_that_fits(serve: ClientFactory, high: dict[str, Any],
                                                                  low_kept: list[str]) -> None:
    """team-a may hold 16Gi; `old` holds all of it while `high` (priority 10) asks 12Gi: high joins
    the queue. Once old is gone, `low` (priority 0, 12Gi: the quota holds one of them) may take the
    quota only if high could not use it."""
    old, low = ranked("old", 0, memory="16Gi"), ranked("low", 0, memory="12Gi")
    world = build_world([namespace("team-a", "16Gi"), node_obj("n1", 1), old, high, low])
    client = await serve(world)
    assert await _bind(client, old) == ""
    out = await _filter(client, high, ["n1"])
    assert "16Gi of 16Gi used" in out["FailedAndUnresolvableNodes"]["n1"], out  # queued
    world.scheduler.delete_pod("team-a/old")
    out = await _filter(client, low, ["n1"])
    assert out["NodeNames"] == low_kept, out
    if not low_kept:
        assert out["FailedAndUnresolvableNodes"] == {"n1": waiting_behind("high", 10)}
        assert await _bind(client, high) == ""  # high takes the quota; low is refused by the quota itself
        out = await _filter(client, low, ["n1"])
        assert out["FailedAndUnresolvableNodes"] == {"n1": "tenant ns/team-a: vgpu-memory 12Gi of 16Gi used, pod asks 12Gi"}


async def test_whether_the_waiting_pod_fits_is_judged_on_the_cluster_of_now(serve: ClientFactory) -> None:
    """`high` waits for quota while no node has room for it; `low` is not held back then. When a node
    frees up, high holds low back (for at most the queue's head wait, 60 s, then low goes)."""
    big = [pod_obj(f"big-{n}", 100, None, namespace="team-b") for n in ("n1", "n2")]
    old, high, low = ranked("old", 0, cores=100), ranked("high", 10, cores=100), ranked("low", 0, cores=100)
    world = build_world([namespace("team-a", "8Gi"), namespace("team-b"), node_obj("n1", 1), node_obj("n2", 1),
                         *big, old, high, low])
    client = await serve(world)
    assert await _bind(client, big[0], "n1") == "" and await _bind(client, old, "n2") == ""
    out = await _filter(client, high, ["n1", "n2"])  # no room, and 8 of 8Gi used: queued
    assert "8Gi of 8Gi used" in out["FailedAndUnresolvableNodes"]["n1"], out
    world.scheduler.delete_pod("team-a/old")  # the quota is free, n2 too ...
    assert await _bind(client, big[1], "n2") == ""  # ... until team-b takes n2: no node for high
    out = await _filter(client, low, ["n1", "n2"])
    assert out["FailedAndUnresolvableNodes"] == {}, out  # low is not held back by quota (only by capacity)
    world.scheduler.delete_pod("team-b/big-n1")  # n1 frees up: high fits it now
    out = await _filter(client, low, ["n1", "n2"])
    assert out["NodeNames"] == [] and out["FailedAndUnresolvableNodes"]["n1"] == waiting_behind("high", 10), out
    world.clock.advance(59)
    assert (await _filter(client, low, ["n1", "n2"]))["NodeNames"] == []
    world.clock.advance(2)  # high has held the queue for longer than the head wait: low goes
    assert (await _filter(client, low, ["n1", "n2"]))["NodeNames"] == ["n1"]
