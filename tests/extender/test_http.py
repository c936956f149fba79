"""The extender over real HTTP with kube-scheduler's captured request shapes."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE
from fracgpu.core.records import pod_record
from fracgpu.extender.scheduler import SchedulerConfig
from tests.extender.builders import (
    GI,
    bind_args,
    bound_annotations,
    filter_args,
    fixture,
    node_obj,
    pod_obj,
)
from tests.extender.conftest import ClientFactory, World, build_world
from tests.extender.probe import room, scheduler_filter, whole_gpus


def lab_world(**kw: Any) -> World:
    """The captured cluster: lab-node-1..3, each with 8 A100-80GB, and the captured pod pending."""
    pod = dict(fixture("filter-nodenames.json")["Pod"], kind="Pod", apiVersion="v1")
    return build_world([node_obj(f"lab-node-{i}") for i in (1, 2, 3)] + [pod], **kw)


@pytest.mark.parametrize("cache_capable", [True, False], ids=["NodeNames", "Nodes"])
async def test_captured_filter_keeps_best_node(serve: ClientFactory, cache_capable: bool) -> None:
    world = lab_world()
    client = await serve(world)
    body = fixture("filter-nodenames.json" if cache_capable else "filter-nodes.json")
    resp = await client.post("/filter", json=body)
    assert resp.status == 200
    out = await resp.json()
    sent = body["NodeNames"] if cache_capable else [n["metadata"]["name"] for n in body["Nodes"]["items"]]
    if cache_capable:
        assert out["Nodes"] is None
        kept = out["NodeNames"]
    else:
        assert out["NodeNames"] is None
        kept = [n["metadata"]["name"] for n in out["Nodes"]["items"]]
        # the very objects we were sent come back
        assert out["Nodes"]["items"][0] == next(n for n in body["Nodes"]["items"] if n["metadata"]["name"] == kept[0])
    assert len(kept) == 1 and set(kept) <= set(sent)
    assert out["Error"] == ""
    assert set(out["FailedNodes"]) | set(out["FailedAndUnresolvableNodes"]) <= set(sent)


async def test_filter_k2_then_prioritize_unique_top(serve: ClientFactory) -> None:
    world = lab_world(config=SchedulerConfig(k=2, heartbeat_stale_s=0))
    client = await serve(world)
    # charge lab-node-2 so that it is the binpack favourite
    a = await _reserve(world, pod_obj("warm", 50, "8Gi"), "lab-node-2")
    assert a.node == "lab-node-2"
    body = filter_args(fixture("filter-nodenames.json")["Pod"], ["lab-node-1", "lab-node-2", "lab-node-3"])
    out = await (await client.post("/filter", json=body)).json()
    assert len(out["NodeNames"]) == 2 and out["NodeNames"][0] == "lab-node-2"
    for cache_capable in (True, False):
        pbody = filter_args(body["Pod"], out["NodeNames"], cache_capable=cache_capable, verb="prioritize")
        resp = await client.post("/prioritize", json=pbody)
        scores = await resp.json()
        assert resp.status == 200
        assert {s["Host"] for s in scores} == set(out["NodeNames"])
        top = max(s["Score"] for s in scores)
        assert top == 10 and [s["Score"] for s in scores].count(10) == 1
        assert all(0 <= s["Score"] <= 10 for s in scores)
        assert next(s for s in scores if s["Score"] == 10)["Host"] == "lab-node-2"


async def _reserve(world: World, pod: dict[str, Any], node: str) -> Assignment:
    """Put a pending pod in the cache and bind it through the scheduler (no HTTP)."""
    from fracgpu.api.v1beta1.extender import ExtenderBindingArgs

    world.scheduler.apply_pod(pod_record(pod))
    a = world.scheduler.reserve(ExtenderBindingArgs.from_obj(bind_args(pod, node)))
    assert a is not None
    return a


async def test_captured_bind_writes_reservation_and_charges_at_once(serve: ClientFactory) -> None:
    world = lab_world()
    client = await serve(world)
    body = fixture("bind.json")
    resp = await client.post("/bind", json=body)
    assert resp.status == 200 and await resp.json() == {"Error": ""}
    [(ns, name, node, ann)] = world.binder.bindings
    assert (ns, name, node) == ("default", "vgpu-demo", "lab-node-2")
    assert ann[ANN_PHASE] == "allocating"
    a = Assignment.from_json(ann[ANN_ASSIGNED])
    assert a.node == "lab-node-2" and a.tenant == "ns/default"
    assert [(g.cores, g.memory, len(g.device_ids)) for g in a.gpus] == [(50, 8 * GI, 50)]
    assert [len(c.device_ids) for c in a.containers] == [50]
    # the share is charged before any watch event: the same bind again is idempotent (no second write)
    resp = await client.post("/bind", json=body)
    assert await resp.json() == {"Error": ""}
    assert len(world.binder.bindings) == 1
    # the watch's confirmation (the pod with the annotations) does not charge it twice: the node still
    # takes a whole GPU and seven whole GPUs, one GPU holds the 50
    ask = scheduler_filter(world.scheduler)
    assert (room(ask, "lab-node-2"), whole_gpus(ask, "lab-node-2")) == (100, 7)
    confirmed = copy.deepcopy(fixture("filter-nodenames.json")["Pod"])
    confirmed["spec"]["nodeName"] = "lab-node-2"
    confirmed["metadata"]["annotations"] = dict(ann)
    world.scheduler.apply_pod(pod_record(confirmed))
    assert (room(ask, "lab-node-2"), whole_gpus(ask, "lab-node-2")) == (100, 7)
    assert world.scheduler.stats().reservations == 1
    # with the seven whole GPUs taken, what is left is the share's GPU: 50 vgpu-core, not 0
    seven = pod_obj("seven", 700, None)
    await _reserve(world, seven, "lab-node-2")
    assert (room(ask, "lab-node-2"), whole_gpus(ask, "lab-node-2")) == (50, 0)


async def test_bind_to_another_node_after_bind_is_refused(serve: ClientFactory) -> None:
    world = lab_world()
    client = await serve(world)
    await client.post("/bind", json=fixture("bind.json"))
    other = dict(fixture("bind.json"), Node="lab-node-1")
    out = await (await client.post("/bind", json=other)).json()
    assert "already reserved on node lab-node-2" in out["Error"]


async def test_failed_binding_releases_the_reservation(serve: ClientFactory) -> None:
    world = lab_world()
    world.binder.fail_with = RuntimeError("apiserver said no")
    client = await serve(world)
    ask = scheduler_filter(world.scheduler)
    assert whole_gpus(ask, "lab-node-2") == 8
    out = await (await client.post("/bind", json=fixture("bind.json"))).json()
    assert "apiserver said no" in out["Error"]
    assert whole_gpus(ask, "lab-node-2") == 8  # the GPU share is back
    assert world.scheduler.stats().reservations == 0
    world.binder.fail_with = None
    out = await (await client.post("/bind", json=fixture("bind.json"))).json()
    assert out == {"Error": ""}
    # ... and so are its device IDs: the bind that lands takes the very same ones
    [(*_, ann)] = world.binder.bindings
    a = Assignment.from_json(ann[ANN_ASSIGNED])
    assert sorted(int(i.rsplit("::", 1)[1]) for i in a.device_ids) == list(range(50))


async def test_hundred_concurrent_binds_for_the_last_capacity(serve: ClientFactory) -> None:
    """One node, one 80Gi GPU: room for exactly two 50-core pods. 100 binds race; two win."""
    pods = [pod_obj(f"p{i}", 50, "8Gi") for i in range(100)]
    world = build_world([node_obj("only", 1), *pods])
    client = await serve(world)
    results = await asyncio.gather(*(client.post("/bind", json=bind_args(p, "only")) for p in pods))
    outs = [await r.json() for r in results]
    assert all(r.status == 200 for r in results)
    winners = [o for o in outs if o["Error"] == ""]
    assert len(winners) == 2
    assert len(world.binder.bindings) == 2
    ids = [i for *_, ann in world.binder.bindings for i in Assignment.from_json(ann[ANN_ASSIGNED]).device_ids]
    assert len(ids) == len(set(ids)) == 100
    assert room(scheduler_filter(world.scheduler), "only") == 0
    losers = {o["Error"] for o in outs if o["Error"]}
    assert losers == {"node only: no single GPU with 50 free vgpu-core and 8Gi free vgpu-memory"}


@dataclass(frozen=True)
class ConfusableCase:
    name: str
    cores: int
    memory: str
    kept: bool


CONFUSABLE = [
    # A (50 cores, 8Gi) is allocating on GPU 0 of node n (two GPUs, binpack fills GPU 0 next)
    ConfusableCase("identical reservation is interchangeable", 50, "8Gi", True),
    ConfusableCase("same count, other VRAM is confusable", 50, "4Gi", False),
    ConfusableCase("another count cannot be confused", 30, "8Gi", True),
]


@pytest.mark.parametrize("case", CONFUSABLE, ids=lambda c: c.name)
async def test_confusable_allocating_rule(serve: ClientFactory, case: ConfusableCase) -> None:
    world = build_world([node_obj("n", 2)])
    client = await serve(world)
    a = pod_obj("a", 50, "8Gi")
    world.scheduler.apply_pod(pod_record(a))
    assert (await (await client.post("/bind", json=bind_args(a, "n"))).json()) == {"Error": ""}
    b = pod_obj("b", case.cores, case.memory)
    out = await (await client.post("/filter", json=filter_args(b, ["n"]))).json()
    if case.kept:
        assert out["NodeNames"] == ["n"]
        return
    assert out["NodeNames"] == [] and out["FailedAndUnresolvableNodes"] == {}
    # the only node that fits waits for A: an Error, retried after kube-scheduler's backoff
    assert out["Error"].startswith("waiting for a pod still allocating: 0/1 nodes are available: 1 a pod with "
                                   "containers of the same vgpu-core count (50) is still allocating")
    # the plugin marks A allocated: B may come
    _, _, _, ann = world.binder.bindings[0]
    done = pod_obj("a", 50, "8Gi", node="n", phase="Running",
                   annotations=bound_annotations(ann[ANN_ASSIGNED], "allocated"))
    world.scheduler.apply_pod(pod_record(done))
    out = await (await client.post("/filter", json=filter_args(b, ["n"]))).json()
    assert out["NodeNames"] == ["n"]


async def test_stuck_allocating_pod_stops_blocking(serve: ClientFactory) -> None:
    world = build_world([node_obj("n", 2)], config=SchedulerConfig(heartbeat_stale_s=0, stuck_allocating_s=60))
    client = await serve(world)
    a = pod_obj("a", 50, "8Gi")
    world.scheduler.apply_pod(pod_record(a))
    await client.post("/bind", json=bind_args(a, "n"))
    b = pod_obj("b", 50, "4Gi")
    out = await (await client.post("/filter", json=filter_args(b, ["n"]))).json()
    assert out["NodeNames"] == []
    world.clock.advance(61)
    out = await (await client.post("/filter", json=filter_args(b, ["n"]))).json()
    assert out["NodeNames"] == ["n"]


async def test_identical_reasons_and_unknown_nodes(serve: ClientFactory) -> None:
    nodes = [node_obj(f"n{i}", 1) for i in range(4)]
    world = build_world([*nodes, node_obj("cpu-only", 0, enabled=False)])
    client = await serve(world)
    pod = pod_obj("big", 200, None)
    out = await (await client.post("/filter", json=filter_args(pod, ["n0", "n1", "n2", "n3", "cpu-only", "ghost"]))
                 ).json()
    assert out["NodeNames"] == []
    assert {out["FailedNodes"][f"n{i}"] for i in range(4)} == {"fewer than 2 whole free GPUs"}
    assert out["FailedNodes"]["ghost"] == "node is not in the fracgpu extender's cache yet"
    assert out["FailedAndUnresolvableNodes"]["cpu-only"].startswith("node is not opted in")


@dataclass(frozen=True)
class BadCase:
    name: str
    path: str
    body: bytes
    status: int
    error: str


def _j(o: Any) -> bytes:
    return json.dumps(o).encode()


_POD = pod_obj("p", 50, "8Gi")
BAD = [
    BadCase("not JSON", "/filter", b"{nope", 400, "not JSON"),
    BadCase("empty body", "/filter", b"", 400, "empty request body"),
    BadCase("JSON but not an object", "/filter", b"[1,2]", 400, "expected a JSON object"),
    BadCase("missing Pod", "/filter", _j({"NodeNames": ["n"]}), 400, "ExtenderArgs.Pod"),
    BadCase("no nodes at all", "/filter", _j({"Pod": _POD, "NodeNames": None, "Nodes": None}), 400,
            "neither NodeNames nor Nodes"),
    BadCase("NodeNames not a list", "/prioritize", _j({"Pod": _POD, "NodeNames": "n"}), 400, "NodeNames"),
    BadCase("node item without a name", "/filter", _j({"Pod": _POD, "Nodes": {"items": [{"metadata": {}}]}}), 400,
            "Nodes.items[0].metadata.name"),
    BadCase("bind without Node", "/bind", _j({"PodName": "p", "PodNamespace": "default", "PodUID": "u"}), 400,
            "ExtenderBindingArgs.Node"),
    BadCase("bind of an unknown pod", "/bind", _j({"PodName": "ghost", "PodNamespace": "default", "PodUID": "u",
                                                   "Node": "n"}), 200, "not a pending GPU pod"),
    BadCase("bind with the wrong uid", "/bind", _j({"PodName": "p", "PodNamespace": "default", "PodUID": "other",
                                                    "Node": "n"}), 200, "has uid"),
    BadCase("bind to an unknown node", "/bind", _j({"PodName": "p", "PodNamespace": "default",
                                                    "PodUID": "uid-default-p", "Node": "ghost"}), 200,
            "node ghost: node is not in the fracgpu extender's cache yet"),
    BadCase("absurd quantity", "/filter", _j(filter_args(pod_obj("x", "1e40", None), ["n"])), 200,
            "quantity out of range"),
    BadCase("absurd GPU count", "/filter", _j(filter_args(pod_obj("x", 100000, None), ["n"])), 200,
            "asks for more than 64 GPUs"),
    BadCase("neither a share nor whole GPUs", "/filter", _j(filter_args(pod_obj("x", 150, None), ["n"])), 200,
            "neither a share of one GPU"),
    BadCase("negative memory", "/filter", _j(filter_args(pod_obj("x", 50, "-1Gi"), ["n"])), 200,
            "must not be negative"),
    BadCase("body over the limit", "/filter", b" " * 5000, 413, "exceeds the limit"),
    BadCase("wrong method", "/filter", b"", 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
async def test_bad_input_is_answered_never_a_500(serve: ClientFactory, case: BadCase) -> None:
    world = build_world([node_obj("n", 1), _POD], body_limit=4096)
    client = await serve(world)
    if case.status == 405:
        resp = await client.get(case.path)
    else:
        resp = await client.post(case.path, data=case.body, headers={"Content-Type": "application/json"})
    assert resp.status == case.status
    out = await resp.json()
    text = out["Error"] or json.dumps(out)
    assert case.error in text


async def test_health_ready_and_metrics(serve: ClientFactory) -> None:
    world = build_world([node_obj("n", 1), _POD])
    client = await serve(world)
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await client.post("/filter", json=filter_args(pod_obj("x", 200, None), ["n"]))
    await client.post("/bind", json=bind_args(_POD, "n"))
    text = await (await client.get("/metrics")).text()
    assert 'fracgpu_extender_request_seconds_count{verb="filter"} 1.0' in text
    assert 'fracgpu_extender_filter_nodes_total{outcome="failed",reason="capacity"} 1.0' in text
    assert 'fracgpu_extender_cache_objects{kind="nodes"} 1.0' in text
    unsynced = await serve(build_world([node_obj("n", 1)], synced=False))
    assert (await unsynced.get("/readyz")).status == 503


async def test_a_pod_without_gpu_request_passes_through(serve: ClientFactory) -> None:
    world = build_world([node_obj("n", 1)])
    client = await serve(world)
    pod = pod_obj("cpu", 50, None)
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
    out = await (await client.post("/filter", json=filter_args(pod, ["n", "other"]))).json()
    assert out["NodeNames"] == ["n", "other"] and out["Error"] == ""
