"""Filter refusals: the metric's reason label is a closed set of kinds, and a node whose only GPUs with
room are unhealthy says so (the same text on every node)."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_NS_CORE_QUOTA, ZONE_SAME, ZONE_SPREAD
from fracgpu.core import confusable, fit, records, zone
from fracgpu.core.pod import decode_pod
from fracgpu.core.quota import PendingPod, PodKey, QuotaLedger, Usage, refusal
from fracgpu.core.records import pod_record
from fracgpu.core.request import GpuRequest, parse_pod_request
from fracgpu.core.tenant import Limits, QuotaError
from fracgpu.extender.decide import NOT_READY, UNKNOWN_NODE, reason_already_reserved, reason_retry_allocating
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.reasons import ReasonKind, reason_kind
from tests.extender.builders import GI, bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, build_world


def request(cores: int, memory: str | None = "8Gi") -> GpuRequest:
    req = parse_pod_request(decode_pod(pod_obj("p", cores, memory)))
    assert req is not None
    return req


def queue_refusal() -> str:
    """The ledger's own "waiting behind" text: a higher-ranked pod that fits holds a lower one back."""
    ledger = QuotaLedger(lambda tenant: Limits(cores=100))
    head = PendingPod(PodKey("ns", "head"), "ns/ns", Usage.for_pod(60, 8 * GI), priority=5)
    ledger.enqueue(head)
    out = ledger.admissible(PendingPod(PodKey("ns", "low"), "ns/ns", Usage.for_pod(60, 8 * GI)), 0.0,
                            lambda key: True)
    assert not out.ok
    return out.reason


# Every refusal the extender can answer, built by the function that builds it in production.
BUILT: list[tuple[ReasonKind, Callable[[], str]]] = [
    (ReasonKind.CACHE_NOT_SYNCED, lambda: NOT_READY),
    (ReasonKind.NODE_NOT_IN_CACHE, lambda: UNKNOWN_NODE),
    (ReasonKind.INVALID_REQUEST, lambda: "invalid GPU request: vgpu-core 150 is neither 1-100 nor a multiple of 100"),
    (ReasonKind.NODE_NOT_OPTED_IN, lambda: records.NODE_NOT_OPTED_IN),
    (ReasonKind.NODE_TAINTED, lambda: records.node_tainted("fracgpu.io/gpu-failed")),
    (ReasonKind.NODE_INVENTORY, lambda: records.NODE_NO_INVENTORY),
    (ReasonKind.NODE_INVENTORY, lambda: records.NODE_BAD_INVENTORY),
    (ReasonKind.NODE_GPUS_UNREACHABLE, lambda: records.NODE_GPUS_UNREACHABLE),
    (ReasonKind.NODE_HEARTBEAT, lambda: records.NODE_NO_HEARTBEAT),
    (ReasonKind.NODE_HEARTBEAT, lambda: records.NODE_STALE_HEARTBEAT),
    (ReasonKind.NODE_UNREADABLE_RESERVATION, lambda: records.node_unreadable_reservation(["ns/a", "ns/b"])),
    (ReasonKind.NO_GPUS, lambda: fit.NO_GPUS),
    (ReasonKind.GPU_MODEL, lambda: fit.reason_model(parse_pod_request(decode_pod(pod_obj(
        "p", 50, annotations={"fracgpu.io/gpu-model": "A100*"}))) or request(50))),
    (ReasonKind.NO_HEALTHY_GPU, lambda: fit.NO_HEALTHY),
    (ReasonKind.UNHEALTHY_ROOM, lambda: fit.reason_unhealthy_room(request(100, None))),
    (ReasonKind.CAPACITY, lambda: fit.reason_capacity(request(40))),
    (ReasonKind.CAPACITY, lambda: fit.reason_capacity(request(100, None))),
    (ReasonKind.CAPACITY, lambda: fit.reason_capacity(request(300, None))),
    (ReasonKind.PODS_PER_GPU, lambda: fit.reason_pod_limit(4)),
    (ReasonKind.TOPOLOGY, lambda: fit.reason_topology(request(200, None))),
    (ReasonKind.HOST_CPU, lambda: fit.reason_cpu(request(50))),
    (ReasonKind.HOST_MEMORY, lambda: fit.reason_memory(request(50))),
    (ReasonKind.ZONE_POLICY, lambda: zone.reason_same(zone.ZoneRule(ZONE_SAME, "g", same_zone="a"))),
    (ReasonKind.ZONE_POLICY, lambda: zone.reason_spread(zone.ZoneRule(ZONE_SPREAD, "g", counts={"a": 1}))),
    (ReasonKind.TENANT_ZONES, lambda: zone.allowed_zones_refusal("tq/team-a", ["a", "b"])),
    (ReasonKind.STILL_ALLOCATING, lambda: confusable.reason_confusable([50])),
    (ReasonKind.STILL_ALLOCATING, lambda: reason_retry_allocating({"n2": fit.reason_capacity(request(50))},
                                                                  {"n1": confusable.reason_confusable([50])})),
    (ReasonKind.QUOTA_EXCEEDED, lambda: refusal("tq/team-a", Usage(60 * GI, 60), Limits(64 * GI, 100),
                                                Usage(8 * GI, 50)) or ""),
    (ReasonKind.QUOTA_INVALID, lambda: QuotaError("ns/x", "namespace x: fracgpu.io/vgpu-core-quota 'lots'").reason),
    (ReasonKind.QUOTA_QUEUE, queue_refusal),
    (ReasonKind.ALREADY_RESERVED, lambda: reason_already_reserved("ns/p", "n1")),
    (ReasonKind.OTHER, lambda: "something no fracgpu refusal says"),
]


@pytest.mark.parametrize(("kind", "build"), BUILT, ids=lambda v: v if isinstance(v, str) else "")
def test_each_refusal_has_its_kind(kind: ReasonKind, build: Callable[[], str]) -> None:
    assert reason_kind(build()) == kind


def test_the_table_covers_the_closed_set() -> None:
    """Every kind is reachable from some real refusal, and nothing outside the enum is a label."""
    assert {k for k, _ in BUILT} == set(ReasonKind)
    assert all(isinstance(reason_kind(b()), ReasonKind) for _, b in BUILT)


def _letters(i: int) -> str:
    """A name without digits (the old label folded digits away, names must differ by letters)."""
    out = ""
    while True:
        i, r = divmod(i, 26)
        out = string.ascii_lowercase[r] + out
        if i == 0:
            return out


def filter_series(metrics: ExtenderMetrics) -> dict[tuple[str, str], float]:
    return {(s.labels["outcome"], s.labels["reason"]): s.value
            for family in metrics.registry.collect() if family.name == "fracgpu_extender_filter_nodes"
            for s in family.samples if s.name == "fracgpu_extender_filter_nodes_total"}


async def test_many_refused_pods_make_a_bounded_number_of_series(serve: ClientFactory) -> None:
    """120 tenants, each over its quota with its own name in the refusal: the filter metric keeps one
    series per (outcome, kind), read from the registry, not one per tenant or pod."""
    tenants = [f"team-{_letters(i)}" for i in range(120)]
    objects = [node_obj("n1"), node_obj("n2")]
    objects += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": t, "annotations": {ANN_NS_CORE_QUOTA: "40"}}}
                for t in tenants]
    pods = [pod_obj(f"pod-{_letters(i)}", 50, "8Gi", namespace=t) for i, t in enumerate(tenants)]
    world = build_world(objects + pods)
    client = await serve(world)
    for pod in pods:
        out = await (await client.post("/filter", json=filter_args(pod, ["n1", "n2"]))).json()
        assert out["NodeNames"] == [] and len(set(out["FailedAndUnresolvableNodes"].values())) == 1
    series = filter_series(world.deps.metrics)
    assert len(series) <= len(ReasonKind) + 1  # + the "kept" series
    assert series == {("kept", ""): 0.0, ("unresolvable", "quota_exceeded"): 240.0}
    registry = world.deps.metrics.registry
    assert registry.get_sample_value("fracgpu_extender_filter_nodes_total",
                                     {"outcome": "unresolvable", "reason": "quota_exceeded"}) == 240.0


def inventory(node: str, gpus: list[bool]) -> str:
    return NodeInventoryDoc(gpus=tuple(
        GpuInfo(uuid=f"GPU-{node}-{i}", index=i, model="A100-SXM4-80GB", memory=80 * GI, numa=0, healthy=ok,
                reason="" if ok else "XID 79 (GPU fell off the bus)")
        for i, ok in enumerate(gpus))).to_json()


@dataclass(frozen=True)
class UnhealthyCase:
    name: str
    cores: int
    reason: str


UNHEALTHY_ROOM = [
    UnhealthyCase("whole GPU", 100,
                  "the GPUs with room are unhealthy (no whole free GPU among the healthy ones)"),
    UnhealthyCase("share", 60, "the GPUs with room are unhealthy (no single GPU with 60 free vgpu-core "
                               "and 60% of its memory free among the healthy ones)"),
]


@pytest.mark.parametrize("case", UNHEALTHY_ROOM, ids=lambda c: c.name)
async def test_the_only_gpu_with_room_is_unhealthy(serve: ClientFactory, case: UnhealthyCase) -> None:
    """Two nodes, each: GPU 0 healthy and full, GPU 1 free but unhealthy. Both nodes answer the same
    text, naming the cause with the pod's numbers (not the node's GPUs)."""
    nodes = [node_obj(n, inv=inventory(n, [True, False])) for n in ("n1", "n2")]
    fillers = [pod_obj(f"fill-{n}", 100, None) for n in ("n1", "n2")]
    world = build_world([*nodes, *fillers])
    client = await serve(world)
    for pod, node in zip(fillers, ("n1", "n2"), strict=True):
        assert (await (await client.post("/bind", json=bind_args(pod, node))).json()) == {"Error": ""}
    pod = pod_obj("p", case.cores, None)
    world.scheduler.apply_pod(pod_record(pod))
    out = await (await client.post("/filter", json=filter_args(pod, ["n1", "n2"]))).json()
    assert out["NodeNames"] == [] and out["Error"] == ""
    assert out["FailedNodes"] == {"n1": case.reason, "n2": case.reason}
