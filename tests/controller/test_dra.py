"""The controller on the DRA path (docs/dra.md): a GPU the driver marks failed in its ResourceSlice gets the pods
whose claims hold it evicted through the Eviction API, as on the device-plugin path; a DRA node, which writes no
heartbeat Lease, is never reported stale. Fed by the real list+watch of the fake API server (`main.watches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import DRA_DEVICE_CLASS_SHARED, DRA_DRIVER
from fracgpu.controller import main as cmain
from fracgpu.controller.loop import ClusterCache, Controller
from fracgpu.controller.metrics import ControllerMetrics
from fracgpu.controller.reconcile import EV_HEARTBEAT_LOST
from fracgpu.controller.writer import ControllerWriter, KubeLeaseStore
from fracgpu.core.draslices import device_names
from fracgpu.kube.client import Transport, api_client_for_host
from fracgpu.kube.leader import LeaderElector, LeaseTiming
from fracgpu.kube.writer import KubeWriter
from tests.controller.clock import FakeClock
from tests.controller.conftest import CFG, NS
from tests.controller.test_self_heal import evictions
from tests.extender.draworld import DRA_RESOURCES, GI, dra_node, gpus, pool
from tests.fakes.apiserver import FakeApiServer
from tests.poll import wait_until as eventually

NODE = "dra-1"
INVENTORY = gpus(NODE, 2)
WAIT_S = 10.0  # bounds a failing test; never a timing assertion


def claim_on(name: str, gpu: GpuInfo) -> dict[str, Any]:
    """A claim allocated (by fracgpu or kube-scheduler alike) a 50-core share of `gpu`."""
    device = device_names(INVENTORY)[gpu.uuid]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": DRA_DEVICE_CLASS_SHARED,
                "capacity": {"requests": {"cores": "50", "memory": "10Gi"}}}}]}},
            "status": {"allocation": {"devices": {"results": [{
                "request": "gpu", "driver": DRA_DRIVER, "pool": NODE, "device": device, "shareID": f"s-{name}",
                "consumedCapacity": {"cores": "50", "memory": str(10 * GI)}}]}}}}


def claim_pod(name: str, claim: str, node: str = NODE) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main"}], "resourceClaims": [{"name": "gpu",
                                                                                  "resourceClaimName": claim}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ml"}, "spec": spec,
            "status": {"phase": "Running" if node else "Pending"}}


@dataclass
class DraHeal:
    server: FakeApiServer
    cache: ClusterCache
    controller: Controller
    clock: FakeClock

    def round(self) -> None:
        self.controller.elect()
        self.controller.step()


@pytest.fixture
def heal(apiserver: FakeApiServer) -> Iterator[DraHeal]:
    """A DRA node with two GPUs: pods a (GPU 0) and b (GPU 1) running on claims; pod waiting's claim allocated
    on GPU 0 but the pod not bound yet; the controller's watches with --dra on."""
    for rt in DRA_RESOURCES:
        apiserver.add_resource(rt)
    g0, g1 = INVENTORY
    apiserver.seed(dra_node(NODE), *pool(NODE, INVENTORY), claim_on("a-gpu", g0), claim_on("b-gpu", g1),
                   claim_on("w-gpu", g0), claim_pod("a", "a-gpu"), claim_pod("b", "b-gpu"),
                   claim_pod("waiting", "w-gpu", node=""))
    clock = FakeClock()
    transport = Transport(api_client_for_host(apiserver.url))
    kube = KubeWriter(transport, component="fracgpu-controller", instance="ctl", clock=clock.wall)
    cache = ClusterCache(CFG.taint_key, CFG.namespace, dra=True)
    reflectors = cmain.watches(transport, cache, CFG, cmain.Options(CFG, "ctl").pod_field_selector)
    elector = LeaderElector(KubeLeaseStore(kube, NS, CFG.leader_lease), NS, CFG.leader_lease, "ctl",
                            LeaseTiming(CFG.lease_duration, CFG.renew_deadline, CFG.retry_period), clock)
    controller = Controller(CFG, cache, ControllerWriter(kube), elector, clock, ControllerMetrics())
    for r in reflectors:
        r.start()
    try:
        assert eventually(lambda: all(r.synced for r in reflectors))
        assert eventually(lambda: {p.name for p in cache.world().pods} == {"a", "b"})
        yield DraHeal(apiserver, cache, controller, clock)
    finally:
        for r in reflectors:
            r.stop()
        transport.close()


def test_pods_on_a_gpu_the_driver_marks_failed_are_evicted(heal: DraHeal) -> None:
    heal.round()
    assert evictions(heal.server) == []  # all healthy
    failed = (replace(INVENTORY[0], healthy=False, reason="XID 79"), INVENTORY[1])
    heal.server.seed(*pool(NODE, failed, generation=2))  # what the driver writes when GPU 0 fails
    assert eventually(lambda: not heal.cache.world().nodes[NODE].inventory.gpus[0].healthy)  # type: ignore[union-attr]
    heal.round()
    assert evictions(heal.server) == ["ml/a"]  # b's GPU is fine; the unbound pod is not the controller's


def test_a_dra_node_is_never_reported_without_heartbeat(heal: DraHeal) -> None:
    heal.round()
    heal.clock.advance(CFG.heartbeat_grace * 3)
    heal.round()
    reasons = [e["reason"] for e in heal.server.list_objects("events")]
    assert EV_HEARTBEAT_LOST not in reasons
    assert heal.cache.world().nodes[NODE].dra
