"""Every bad input to Allocate is refused with a gRPC error, a message, and an Event where a pod is known."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from fracgpu.api.v1beta1.deviceplugin.api_pb2 import AllocateRequest
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, PHASE_ALLOCATED
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import World, gpu_uuid


def ids(gpu: int, start: int, n: int) -> list[str]:
    return [f"{gpu_uuid(gpu)}::{k}" for k in range(start, start + n)]


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[World], None]  # pods the extender (or someone else) left
    request: Callable[[World], list[str]]  # the IDs the kubelet sends in one Allocate
    code: grpc.StatusCode
    message: str  # part of the error details
    event_on: str | None  # the pod that gets a FracgpuAllocateRefused event


def no_reservation(w: World) -> None:
    w.add_pod("p", [Container("main", 10)])  # bound without the extender: no fracgpu.io/assigned


def unparsable(w: World) -> None:
    w.add_pod("p", [Container("main", 10)], annotations={ANN_ASSIGNED: "{not json", ANN_PHASE: "allocating"})


def forged(field: str, value: object) -> Callable[[World], None]:
    def setup(w: World) -> None:
        obj = w.add_pod("p", [Container("main", 10)], [0])
        doc = json.loads(obj["metadata"]["annotations"][ANN_ASSIGNED])
        if field == "node":
            doc["node"] = value
        elif field == "uuid":
            doc["gpus"][0]["uuid"] = value
            doc["gpus"][0]["deviceIds"] = [f"{value}::{k}" for k in range(10)]
        elif field == "cores":
            doc["gpus"][0]["cores"] = value
            doc["gpus"][0]["deviceIds"] = doc["gpus"][0]["deviceIds"][:value]
        obj["metadata"]["annotations"][ANN_ASSIGNED] = json.dumps(doc)
        w.cluster.put_pod(obj)

    return setup


def reserved(w: World) -> None:
    w.add_pod("p", [Container("main", 10)], [0])


CASES = [
    Case("no reservation", no_reservation, lambda w: ids(0, 0, 10), grpc.StatusCode.FAILED_PRECONDITION,
         "annotation fracgpu.io/assigned is missing", "p"),
    Case("unparsable reservation", unparsable, lambda w: ids(0, 0, 10), grpc.StatusCode.FAILED_PRECONDITION,
         "fracgpu.io/assigned is not valid", "p"),
    Case("reservation for another node", forged("node", "node-b"), lambda w: ids(0, 0, 10),
         grpc.StatusCode.FAILED_PRECONDITION, "reservation is for node 'node-b'", "p"),
    Case("reservation on a GPU not on this node", forged("uuid", "GPU-forged"), lambda w: ids(0, 0, 10),
         grpc.StatusCode.FAILED_PRECONDITION, "reserved GPU GPU-forged is not on this node", "p"),
    Case("reservation smaller than the request", forged("cores", 5), lambda w: ids(0, 0, 10),
         grpc.StatusCode.FAILED_PRECONDITION, "reservation holds 5 vgpu-core, the pod asks for 10", "p"),
    Case("unknown device IDs", reserved, lambda w: ["GPU-nope::1", *ids(0, 0, 9)], grpc.StatusCode.INVALID_ARGUMENT,
         "unknown device IDs GPU-nope::1", None),
    Case("malformed device ID", reserved, lambda w: [f"{gpu_uuid(0)}::100", *ids(0, 0, 9)],
         grpc.StatusCode.INVALID_ARGUMENT, "unknown device IDs", None),
    Case("a device ID twice", reserved, lambda w: ids(0, 0, 9) + ids(0, 0, 1), grpc.StatusCode.INVALID_ARGUMENT,
         "appears twice", None),
    Case("wrong size", reserved, lambda w: ids(0, 0, 7), grpc.StatusCode.FAILED_PRECONDITION,
         "none of its waiting containers asks for 7 vgpu-core (they ask for 10)", "p"),
    Case("nobody waits", lambda w: None, lambda w: ids(0, 0, 10), grpc.StatusCode.FAILED_PRECONDITION,
         "no pod on node node-a waits for 10 vgpu-core", None),
    Case("a share spread over two GPUs", reserved, lambda w: ids(0, 0, 5) + ids(1, 0, 5),
         grpc.StatusCode.FAILED_PRECONDITION, "the devices span 2 GPUs, the pod reserved 1", "p"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused(node: World, case: Case) -> None:
    case.setup(node)
    with pytest.raises(grpc.RpcError) as err:
        node.kubelet.allocate_raw(case.request(node))
    assert err.value.code() == case.code
    assert case.message in (err.value.details() or ""), err.value.details()
    node.settle()
    refused = [e for e in node.cluster.events if e.reason == "FracgpuAllocateRefused"]
    assert [e.name for e in refused] == ([case.event_on] if case.event_on else [])
    assert sum(s.value for m in node.metrics.allocate_errors.collect() for s in m.samples
               if s.name.endswith("_total")) == 1  # counted


def test_a_refused_pod_is_marked_failed(node: World) -> None:
    reserved(node)
    with pytest.raises(grpc.RpcError):
        node.kubelet.allocate_raw(ids(0, 0, 7))
    node.settle()
    assert node.annotations("p")[ANN_PHASE].startswith("failed: pod default/p reserved these devices")


def test_the_same_devices_twice_are_refused_the_second_time(node: World) -> None:
    """The kubelet still holds them (PodResources): a stale or confused kubelet, not a lost checkpoint."""
    node.add_pod("p", [Container("main", 10)], [0])
    assert node.admit("p").error is None
    node.settle()
    with pytest.raises(grpc.RpcError) as err:
        node.kubelet.allocate_raw(sorted(node.assignment("p").device_ids))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"device {gpu_uuid(0)}::0 is held by pod default/p (the kubelet's PodResources)" in (
        err.value.details() or "")
    node.settle()
    assert node.annotations("p")[ANN_PHASE] == PHASE_ALLOCATED  # the running pod is not marked failed


def test_preferred_allocation_without_a_waiting_pod_avoids_reserved_ids(node: World) -> None:
    node.add_pod("p", [Container("main", 10)], [0])  # holds ::0..::9 of GPU 0
    offer = ids(0, 0, 30)
    answer = node.kubelet.preferred_raw(offer, [], 15)  # nobody waits for 15
    assert len(answer) == 15 and not set(answer) & set(ids(0, 0, 10))


def test_an_allocate_request_without_container_requests_is_invalid(node: World) -> None:
    stub = node.kubelet._stub
    assert stub is not None
    with pytest.raises(grpc.RpcError) as err:
        stub.Allocate(AllocateRequest(container_requests=[]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "fracgpu: AllocateRequest has no container requests"


def test_a_pod_refused_before_is_named_as_such(node: World) -> None:
    """Not the contradiction "none of its waiting containers asks for 10 vgpu-core (they ask for 10)"."""
    reserved(node)
    with pytest.raises(grpc.RpcError):
        node.kubelet.allocate_raw(ids(0, 0, 7))
    node.settle()
    first = node.annotations("p")[ANN_PHASE]
    with pytest.raises(grpc.RpcError) as err:
        node.kubelet.allocate_raw(sorted(node.assignment("p").device_ids))
    assert err.value.details() == f"fracgpu: pod default/p reserved these devices but was refused before ({ANN_PHASE} " \
                                  f"{first})"
    node.settle()
    assert node.annotations("p")[ANN_PHASE] == first  # not overwritten with a reason about itself


def test_a_refusal_the_kubelet_repeats_is_logged_once(node: World, caplog: pytest.LogCaptureFixture) -> None:
    """A kubelet that lost its checkpoint retries a container start (with back-off, for hours): the same
    refusal each time is counted each time, logged and evented once per quiet period."""
    p_ids = node.two_running_lookalikes_after_a_lost_checkpoint()
    caplog.set_level(logging.INFO, logger="fracgpu.deviceplugin.plugin")
    for _ in range(30):
        with pytest.raises(grpc.RpcError):
            node.kubelet.allocate_raw(p_ids)
    node.settle()
    refused = [r for r in caplog.records if r.getMessage().startswith("allocate refused")]
    assert len(refused) == 1
    assert sorted(e.name for e in node.cluster.events if e.reason == "FracgpuAllocateRefused") == ["p", "q"]
    assert node.metrics.registry.get_sample_value("fracgpu_deviceplugin_allocate_errors_total", {"code": "ambiguous"}) == 30
