"""The cache against the in-process fake API server: list+watch, 410 Gone, dropped watches, bind."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.extender import ExtenderBindingArgs
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, DEFAULT_NAMESPACE, lease_name
from fracgpu.core.records import NODE_NO_HEARTBEAT, NODE_STALE_HEARTBEAT
from fracgpu.extender.app import Deps, make_app
from fracgpu.extender.cache import ClusterCache
from fracgpu.extender.decide import RETRY_ALLOCATING, UNKNOWN_NODE
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.kube.client import Transport
from fracgpu.kube.retry import Backoff
from fracgpu.kube.writer import KubeWriter
from tests.extender.builders import bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import FakeClock
from tests.extender.probe import room, scheduler_filter
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually


def lease(node: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(node), "namespace": DEFAULT_NAMESPACE},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40}}


class CacheWorld:
    def __init__(self, apiserver: FakeApiServer) -> None:
        self.apiserver = apiserver
        self.clock = FakeClock()
        self.scheduler = Scheduler(SchedulerConfig(heartbeat_stale_s=40, refresh_s=0), self.clock, wall=self.clock)
        self.transport = Transport(apiserver.api_client(), timeout_s=5)
        self.cache = ClusterCache(self.transport, self.scheduler, namespace=DEFAULT_NAMESPACE,
                                  backoff=Backoff(initial_s=0.01, cap_s=0.05), watch_timeout_s=30)

    def room(self, node: str) -> int:
        return room(scheduler_filter(self.scheduler), node)


@pytest.fixture
def cache_world(apiserver: FakeApiServer) -> Iterator[CacheWorld]:
    apiserver.seed(node_obj("n1", 1), node_obj("n2", 1), lease("n1"), lease("n2"),
                   pod_obj("pending", 50, "8Gi"),
                   {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    w = CacheWorld(apiserver)
    w.cache.start()
    assert w.cache.synced.wait(10)
    yield w
    w.cache.stop()


def test_first_sync_builds_the_state(cache_world: CacheWorld) -> None:
    s = cache_world.scheduler
    assert s.synced
    stats = s.stats()
    assert (stats.nodes, stats.pods) == (2, 1)
    out = s.filter(_args(["n1", "n2"]))  # both nodes usable: one kept, the other simply ranked lower
    assert (out.error, len(out.node_names), out.failed, out.unresolvable) == ("", 1, {}, {})
    # the pending pod is cached with its object: bind can reserve it
    a = s.reserve(ExtenderBindingArgs("pending", "default", "uid-default-pending", "n1"))
    assert a is not None and a.node == "n1"


def test_heartbeat_staleness_is_judged_by_receive_time(cache_world: CacheWorld) -> None:
    w = cache_world
    w.clock.advance(41)
    w.apiserver.patch_object("leases", lease_name("n2"), {"spec": {"renewTime": "2026-11-23T00:00:00.000000Z"}},
                             namespace=DEFAULT_NAMESPACE)
    # n2's renewal is seen at the extender's own time: only n1 is stale
    eventually(lambda: w.scheduler.filter(_args(["n1", "n2"])).unresolvable == {"n1": NODE_STALE_HEARTBEAT})
    w.apiserver.delete_object("leases", lease_name("n2"), namespace=DEFAULT_NAMESPACE)
    eventually(lambda: w.scheduler.filter(_args(["n1", "n2"])).unresolvable
               == {"n1": NODE_STALE_HEARTBEAT, "n2": NODE_NO_HEARTBEAT})


def _args(names: list[str], pod: dict[str, Any] | None = None) -> Any:
    from fracgpu.api.v1beta1.extender import ExtenderArgs

    return ExtenderArgs.from_obj(filter_args(pod or pod_obj("pending", 50, "8Gi"), names))


async def test_bind_through_the_api_is_assumed_then_confirmed_once(cache_world: CacheWorld, aiohttp_client: Any
                                                                   ) -> None:
    w = cache_world
    writer = KubeWriter(w.transport)
    deps = Deps(scheduler=w.scheduler, binder=writer, metrics=ExtenderMetrics(w.scheduler))
    client = await aiohttp_client(make_app(deps))
    assert w.room("n1") == 100
    out = await (await client.post("/bind", json=bind_args(pod_obj("pending", 50, "8Gi"), "n1"))).json()
    assert out == {"Error": ""}
    pod = w.apiserver.get_object("pods", "pending", namespace="default")
    assert pod is not None and pod["spec"]["nodeName"] == "n1"
    assert pod["metadata"]["annotations"][ANN_PHASE] == "allocating"
    a = Assignment.from_json(pod["metadata"]["annotations"][ANN_ASSIGNED])
    assert [(g.uuid, g.cores, len(g.device_ids)) for g in a.gpus] == [("GPU-n1-0", 50, 50)]
    # the watch brings the bound pod back: no longer awaited, charged once
    eventually(lambda: w.scheduler.stats().awaiting_watch == 0)
    assert w.scheduler.stats().assumed == 0 and w.room("n1") == 50
    # while it is allocating, a pod of the same vgpu-core count with another VRAM limit waits ...
    twin = pod_obj("twin", 50, "16Gi")
    assert w.scheduler.filter(_args(["n1"], twin)).error.startswith(RETRY_ALLOCATING)
    # ... until the plugin marks it allocated; later the pod ends: the share comes back
    w.apiserver.patch_object("pods", "pending", {"metadata": {"annotations": {ANN_PHASE: "allocated"}}},
                             namespace="default")
    eventually(lambda: w.scheduler.filter(_args(["n1"], twin)).node_names == ("n1",))
    w.apiserver.patch_object("pods", "pending", {"status": {"phase": "Succeeded"}}, namespace="default")
    eventually(lambda: w.room("n1") == 100)


def test_relist_after_410_gone(cache_world: CacheWorld) -> None:
    w = cache_world
    pods, nodes = w.cache.reflectors["pods"], w.cache.reflectors["nodes"]
    lists = (pods.lists, nodes.lists)
    assert w.apiserver.wait_for_watches(5)
    # every watch reopened from now on answers 410 Gone once: the reflectors must relist
    w.apiserver.fail_next("watch", "pods", 410)
    w.apiserver.fail_next("watch", "nodes", 410)
    w.apiserver.compact()
    w.apiserver.drop_watches()
    w.apiserver.seed(pod_obj("late", 30, None))
    w.apiserver.delete_object("nodes", "n2")
    eventually(lambda: pods.lists > lists[0] and nodes.lists > lists[1])
    eventually(lambda: w.scheduler.stats().pods == 2 and w.scheduler.stats().nodes == 1)
    assert w.scheduler.filter(_args(["n1", "n2"], pod_obj("late", 30, None))).failed == {"n2": UNKNOWN_NODE}


def test_dropped_watch_resumes(cache_world: CacheWorld) -> None:
    w = cache_world
    assert w.apiserver.wait_for_watches(5)
    w.apiserver.drop_watches()
    w.apiserver.seed(pod_obj("after-drop", 30, None))
    eventually(lambda: w.scheduler.stats().pods == 2)
    w.apiserver.delete_object("pods", "after-drop", namespace="default")
    eventually(lambda: w.scheduler.stats().pods == 1)


def test_not_ready_until_synced(apiserver: FakeApiServer) -> None:
    gate = threading.Event()
    w = CacheWorld(apiserver)
    apiserver.on_next("list", "nodes", lambda: gate.wait(5))
    w.cache.start()
    try:
        out = w.scheduler.filter(_args(["n1"]))
        # an Error, so that kube-scheduler retries after its backoff (docs/extender.md)
        assert (out.error, out.failed, out.unresolvable) == ("the fracgpu extender's cache is not synced yet", {}, {})
        gate.set()
        assert w.cache.synced.wait(10)
    finally:
        w.cache.stop()


async def test_a_relist_keeps_a_binding_of_unknown_outcome(cache_world: CacheWorld, aiohttp_client: Any) -> None:
    """A Binding whose connection dropped before an answer, then a 410 relist that shows the pod still
    pending: the reservation stays (the Binding may still land); the retry re-sends it and it lands."""
    w = cache_world
    writer = KubeWriter(Transport(w.apiserver.api_client(), timeout_s=5))
    client = await aiohttp_client(make_app(Deps(scheduler=w.scheduler, binder=writer, metrics=ExtenderMetrics(w.scheduler))))

    def drop() -> None:
        raise ConnectionResetError("injected")

    def rooms() -> tuple[int, int]:
        return w.room("n1"), w.room("n2")

    assert rooms() == (100, 100)
    w.apiserver.on_next("create", "pods/binding", drop)
    out = await (await client.post("/bind", json=bind_args(pod_obj("pending", 50, "8Gi"), "n1"))).json()
    assert "outcome unknown" in out["Error"], out
    pods = w.cache.reflectors["pods"]
    lists = pods.lists
    assert w.apiserver.wait_for_watches(5)
    w.apiserver.fail_next("watch", "pods", 410)
    w.apiserver.compact()
    w.apiserver.drop_watches()
    eventually(lambda: pods.lists > lists)
    assert w.scheduler.stats().assumed == 1 and rooms() == (50, 100)
    out = await (await client.post("/bind", json=bind_args(pod_obj("pending", 50, "8Gi"), "n1"))).json()
    assert out == {"Error": ""}
    eventually(lambda: w.scheduler.stats().awaiting_watch == 0)
    assert w.scheduler.stats().assumed == 0 and rooms() == (50, 100)
