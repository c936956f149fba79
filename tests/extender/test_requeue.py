"""How a refusal that clears within seconds goes on the wire, so that kube-scheduler retries in seconds.

kube-scheduler's rules (pkg/scheduler, read in the upstream source; docs/extender.md "Why a
still-allocating refusal is an error" has the whole account):
- schedule_one.go `findNodesThatFitPod`: when an extender filtered out nodes (FailedNodes *or*
  FailedAndUnresolvableNodes alike) and nothing is left, `framework.ExtenderName` joins the pod's
  UnschedulablePlugins; the queue (backend/queue/scheduling_queue.go `AddUnschedulableIfNotPresent`)
  then parks the pod in unschedulablePods until a cluster event moves it, or
  `flushUnschedulablePodsLeftover` (every 30 s) after podMaxInUnschedulablePodsDuration (5 min).
  Another pod's annotation changing is no such event (`AssignedPodUpdated` only moves pods with
  affinity terms matching it): that is the 60-90 s wait seen on a real cluster.
- extender.go `HTTPExtender.Filter`: a non-empty `Error` is returned as an error; schedule_one.go
  `schedulingCycle` answers it with an Error status (not a FitError), `handleSchedulingFailure`
  leaves UnschedulablePlugins empty (active_queue.go `pop` cleared them), and an unschedulable pod
  without rejector plugins goes to the backoff queue (`determineSchedulingHintForInFlightPod` /
  `addUnschedulableWithoutQueueingHint`): retried after 1 s doubling per attempt up to 10 s
  (`DefaultPodInitialBackoffDuration`, `DefaultPodMaxBackoffDuration`), flushed every 1 s.
So the only-nodes-wait-for-an-allocating-pod refusal and the not-synced cache answer `Error`; the
refusals that need a change in the cluster stay FailedNodes / FailedAndUnresolvableNodes.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from fracgpu.core import confusable
from fracgpu.core.fit import reason_capacity
from fracgpu.core.pod import decode_pod
from fracgpu.core.records import node_record, parse_list, pod_record
from fracgpu.core.request import parse_pod_request
from fracgpu.extender.decide import NOT_READY
from fracgpu.extender.snapshot import load_into
from tests.extender.builders import bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, World, build_world


async def _allocating_a(serve: ClientFactory, nodes: list[dict[str, Any]]) -> tuple[World, TestClient[Any, Any]]:
    world = build_world(nodes)
    client = await serve(world)
    a = pod_obj("a", 50, "8Gi")
    world.scheduler.apply_pod(pod_record(a))
    assert (await (await client.post("/bind", json=bind_args(a, "n1"))).json()) == {"Error": ""}  # A: allocating
    return world, client


async def test_only_fitting_node_waits_for_an_allocating_pod_answers_error(serve: ClientFactory) -> None:
    """n1 fits B but holds A `allocating` with another VRAM limit (confusable); n2's single GPU is
    too small. Wire answer: Error (-> kube-scheduler's backoff queue, retried in 1-10 s), carrying
    every node's reason grouped as kube-scheduler groups them; no FailedNodes entries. Once another
    node (n3) takes B, that node is the answer and the waiting one is only reported."""
    world, client = await _allocating_a(serve, [node_obj("n1", 2), node_obj("n2", 1)])
    filler = pod_obj("filler", 60, "8Gi")
    world.scheduler.apply_pod(pod_record(filler))
    assert (await client.post("/bind", json=bind_args(filler, "n2"))).status == 200
    b = pod_obj("b", 50, "4Gi")
    resp = await client.post("/filter", json=filter_args(b, ["n1", "n2"]))
    assert resp.status == 200
    req = parse_pod_request(decode_pod(b))
    assert req is not None
    assert await resp.json() == {
        "Nodes": None, "NodeNames": [], "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
        "Error": f"waiting for a pod still allocating: 0/2 nodes are available: "
                 f"1 {confusable.reason_confusable([50])}, 1 {reason_capacity(req)}",
    }
    world.scheduler.apply_node(node_record(node_obj("n3", 2)))
    out = await (await client.post("/filter", json=filter_args(b, ["n1", "n2", "n3"]))).json()
    assert out["Error"] == "" and out["NodeNames"] == ["n3"]
    assert out["FailedAndUnresolvableNodes"] == {"n1": confusable.reason_confusable([50])}
    assert out["FailedNodes"] == {"n2": reason_capacity(req)}


async def test_a_cache_not_synced_answers_error(serve: ClientFactory) -> None:
    """Right after a start (or a hand-over) the cache syncs in seconds: Error, not failed nodes. A
    refusal that needs a cluster change (capacity: a pod must end, an event kube-scheduler acts on)
    stays a failed node."""
    world = build_world([node_obj("n1", 1)], synced=False)
    client = await serve(world)
    big = pod_obj("big", 200, None)
    out = await (await client.post("/filter", json=filter_args(big, ["n1"]))).json()
    assert out == {"Nodes": None, "NodeNames": [], "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
                   "Error": NOT_READY}
    load_into(world.scheduler, parse_list({"kind": "List", "items": [node_obj("n1", 1)]}))
    req = parse_pod_request(decode_pod(big))
    assert req is not None
    out = await (await client.post("/filter", json=filter_args(big, ["n1"]))).json()
    assert out["Error"] == "" and out["FailedNodes"] == {"n1": reason_capacity(req)}
