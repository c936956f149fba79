"""Load: a burst of pending share pods through the extender over the fake API server, real HTTP,
kube-scheduler's call pattern (filter, then bind with several binds in flight).

Checked from the API server's pods, independently of the extender's cache: no GPU oversubscribed,
no device ID handed out twice, every reservation on the node its pod is bound to, and every pod left
pending has, by the API server's own books, no GPU that could take it. Small here (fast); the full
2,000 pods / 200 nodes is bench/bench_load.py, figures in docs/reliability.md.
"""

from __future__ import annotations

import json
from typing import Any

from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_INVENTORY, ANN_PHASE, PHASE_ALLOCATED
from tests.extender.builders import node_obj
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually
from tests.reliability.harness import LiveExtender, audit, heartbeat_off
from tests.reliability.load import GPUS_PER_NODE, burst, node_names, room_for, share_pods


def seed_cluster(apiserver: FakeApiServer, nodes: int, pods: int, seed: int) -> tuple[list[str], list[dict[str, Any]]]:
    names = node_names(nodes)
    apiserver.seed(*(node_obj(n, GPUS_PER_NODE) for n in names))
    burst_pods = share_pods(pods, seed)
    apiserver.seed(*burst_pods)
    return names, burst_pods


def mark_allocated(apiserver: FakeApiServer, pod: dict[str, Any]) -> None:
    """The plugin's part once the kubelet admitted the pod."""
    meta = pod["metadata"]
    apiserver.patch_object("pods", meta["name"], {"metadata": {"annotations": {ANN_PHASE: PHASE_ALLOCATED}}},
                           namespace=meta["namespace"])


def inventory_of(apiserver: FakeApiServer) -> dict[str, tuple[str, int]]:
    out = {}
    for n in apiserver.list_objects("nodes"):
        for g in NodeInventoryDoc.from_json(n["metadata"]["annotations"][ANN_INVENTORY]).gpus:
            out[g.uuid] = (n["metadata"]["name"], g.memory)
    return out


async def run_burst(apiserver: FakeApiServer, nodes: int, pods: int, seed: int, in_flight: int) -> dict[str, Any]:
    names, burst_pods = seed_cluster(apiserver, nodes, pods, seed)
    with LiveExtender(apiserver, heartbeat_off()) as ext:
        eventually(lambda: ext.scheduler.stats().pods == pods, what="pods cached")
        report = await burst(ext.url, burst_pods, names, binds_in_flight=in_flight,
                             on_bound=lambda pod, node: mark_allocated(apiserver, pod))
        # every Binding answered (nothing assumed) and the watch showed every bound pod
        eventually(lambda: ext.scheduler.stats().assumed == 0 and ext.scheduler.stats().awaiting_watch == 0,
                   what="binds confirmed by the watch")
    assert not report.errors, report.errors[:5]
    a = audit(apiserver)
    assert not a.problems, a.problems[:10]
    assert len(a.placed) == report.placed
    gpus = inventory_of(apiserver)
    left = [p for p in burst_pods if f"load/{p['metadata']['name']}" not in a.placed]
    for p in left:  # a pod left pending really has no room anywhere
        assert not room_for(a, gpus, p), (p["metadata"]["name"], room_for(a, gpus, p))
    return {**report.summary(), "left_pending": len(left)}


async def test_burst_that_fits_is_placed_in_full(apiserver: FakeApiServer) -> None:
    """300 pods (~60 % of the vgpu-core of 30 nodes x 8 GPUs), 8 binds in flight: all placed."""
    summary = await run_burst(apiserver, nodes=30, pods=300, seed=7, in_flight=8)
    print("load", json.dumps(summary))
    assert summary["placed"] == 300 and summary["left_pending"] == 0, summary


async def test_burst_over_capacity_oversubscribes_nothing(apiserver: FakeApiServer) -> None:
    """200 pods on 6 nodes (~1.7x their vgpu-core): what fits is placed, the rest has no room, nothing doubled."""
    summary = await run_burst(apiserver, nodes=6, pods=200, seed=11, in_flight=16)
    print("overload", json.dumps(summary))
    assert 0 < summary["placed"] < 200 and summary["left_pending"] == 200 - summary["placed"], summary
