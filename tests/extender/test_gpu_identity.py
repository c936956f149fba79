"""A GPU is (node, uuid): nodes that publish the very same inventory (the documented simulated setup,
manifests/simulated: one gpus file on every node; a cloned VM image) are filled like any others.

Over the real paths: the fake API server, the extender's list+watch cache, its HTTP filter and bind
(the Binding written to the API server), the device plugin's part played by marking each pod
`allocated` once bound; the bookings are judged from the pods' annotations by `audit`.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_PHASE, PHASE_ALLOCATED
from fracgpu.core.fit import reason_capacity
from fracgpu.core.pod import decode_pod
from fracgpu.core.request import parse_pod_request
from fracgpu.extender.decide import RETRY_ALLOCATING
from tests.extender.builders import GI, bind_args, filter_args, node_obj, pod_obj
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually
from tests.reliability.harness import HttpClient, LiveExtender, audit, heartbeat_off

# what every node of a simulated fleet publishes: the same two GPUs, the same UUIDs
SHARED_INVENTORY = NodeInventoryDoc(gpus=tuple(
    GpuInfo(uuid=f"GPU-5a7e0000-0000-4000-8000-00000000000{i}", index=i, model="A100-SXM4-80GB", memory=80 * GI, numa=0)
    for i in range(2))).to_json()


def not_waiting(http: HttpClient, pod: dict[str, Any], names: list[str]) -> bool:
    """The filter no longer answers "waiting for a pod still allocating" (kube-scheduler's retry after
    that Error gets through): the cache has seen the previous pod `allocated`."""
    status, out = http.post_json("/filter", filter_args(pod, names))
    return status == 200 and not str(out["Error"]).startswith(RETRY_ALLOCATING)


@pytest.mark.parametrize("nodes", [2, 3])
def test_nodes_reporting_the_same_gpu_uuids_are_all_filled(apiserver: FakeApiServer, nodes: int) -> None:
    names = [f"sim-{i}" for i in range(nodes)]
    pods = [pod_obj(f"p{i}", 50, "8Gi") for i in range(2 * 2 * nodes)]  # two per GPU: every GPU full
    extra = pod_obj("extra", 50, "8Gi")
    apiserver.seed(*(node_obj(n, inv=SHARED_INVENTORY) for n in names), *pods, extra)
    ext = LiveExtender(apiserver, heartbeat_off()).start()
    try:
        with HttpClient(ext.url) as http:
            for pod in pods:
                eventually(functools.partial(not_waiting, http, pod, names), what="the previous pod allocated")
                status, out = http.post_json("/filter", filter_args(pod, names))
                assert status == 200 and out["Error"] == "" and len(out["NodeNames"]) == 1, out
                node = out["NodeNames"][0]
                status, out = http.post_json("/bind", bind_args(pod, node))
                assert (status, out) == (200, {"Error": ""}), f"bind refused what filter chose ({node}): {out}"
                # the device plugin admits it: no longer `allocating` (the confusable rule lets the next in)
                name = pod["metadata"]["name"]
                apiserver.patch_object("pods", name, {"metadata": {"annotations": {ANN_PHASE: PHASE_ALLOCATED}}},
                                       namespace="default")
            status, out = http.post_json("/filter", filter_args(extra, names))
        req = parse_pod_request(decode_pod(extra))
        assert req is not None
        assert out["NodeNames"] == [] and out["FailedNodes"] == {n: reason_capacity(req) for n in names}
    finally:
        ext.kill()
    result = audit(apiserver)
    assert not result.problems, result.problems
    assert result.placed == {f"default/{p['metadata']['name']}" for p in pods}
    used = {(b.node, g.uuid) for b in result.bookings for g in b.assignment.gpus}
    assert used == {(n, g.uuid) for n in names for g in NodeInventoryDoc.from_json(SHARED_INVENTORY).gpus}
