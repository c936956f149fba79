"""Worlds for the controller tests: a fake API server with GPU nodes, pods on their GPUs, and controllers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, DEFAULT_NAMESPACE, device_id, lease_name
from fracgpu.controller.config import ControllerConfig
from fracgpu.controller.loop import ClusterCache, Controller
from fracgpu.controller.metrics import ControllerMetrics
from fracgpu.controller.reconcile import Plan
from fracgpu.controller.writer import JOBS, ControllerWriter, KubeLeaseStore
from fracgpu.kube.client import Transport, api_client_for_host
from fracgpu.kube.leader import LeaderElector, LeaseTiming
from fracgpu.kube.resources import LEASES
from fracgpu.kube.writer import KubeWriter
from tests.controller.clock import FakeClock
from tests.fakes.apiserver import FakeApiServer

NS = DEFAULT_NAMESPACE
CFG = ControllerConfig(taint_hold=60.0, max_evictions_per_node=10, heartbeat_grace=40.0)


def inventory(*health: bool | str, node_ok: bool = True) -> str:
    """GPU-0, GPU-1, ...: True = healthy, a string = unhealthy with that reason."""
    gpus = tuple(
        GpuInfo(f"GPU-{i}", i, "A100-SXM4-80GB", 80 << 30, 0, healthy=h is True, reason="" if h is True else str(h))
        for i, h in enumerate(health)
    )
    return NodeInventoryDoc(gpus, node_healthy=node_ok, node_reason="" if node_ok else "NVML unreachable").to_json()


def node_obj(name: str, inv: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": {ANN_INVENTORY: inv}}}


def pod_obj(name: str, node: str, *gpus: int, app: str = "", namespace: str = "ml") -> dict[str, Any]:
    shares = tuple(GpuShare(f"GPU-{g}", 50, 40 << 30, tuple(device_id(f"GPU-{g}", k) for k in range(50))) for g in gpus)
    ids = tuple(i for s in shares for i in s.device_ids)
    assigned = Assignment(
        node, f"ns/{namespace}", "2026-01-01T00:00:00Z", shares, (ContainerShare("main", "app", ids),)
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": app or name},
            "annotations": {ANN_ASSIGNED: assigned.to_json()},
        },
        "spec": {"nodeName": node, "schedulerName": "fracgpu-scheduler", "containers": [{"name": "main"}]},
        "status": {"phase": "Running"},
    }


def lease_obj(node: str, renew: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": lease_name(node), "namespace": NS},
        "spec": {"holderIdentity": f"plugin-{node}", "leaseDurationSeconds": 40, "renewTime": renew},
    }


def pdb_obj(name: str, app: str, min_available: int, namespace: str = "ml") -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }


class Replica:
    """One controller replica against the fake server, with its own clock and a deterministic round."""

    def __init__(self, server: FakeApiServer, identity: str, clock: FakeClock, cfg: ControllerConfig = CFG) -> None:
        self.server = server
        self.clock = clock
        self.transport = Transport(api_client_for_host(server.url))
        self.kube = KubeWriter(self.transport, component="fracgpu-controller", instance=identity, clock=clock.wall)
        self.cache = ClusterCache(cfg.taint_key, cfg.namespace)
        timing = LeaseTiming(cfg.lease_duration, cfg.renew_deadline, cfg.retry_period)
        store = KubeLeaseStore(self.kube, cfg.namespace, cfg.leader_lease)
        self.elector = LeaderElector(store, cfg.namespace, cfg.leader_lease, identity, timing, clock)
        self.metrics = ControllerMetrics()
        self.controller = Controller(cfg, self.cache, ControllerWriter(self.kube), self.elector, clock, self.metrics)

    def sync(self) -> None:
        """What the watches would have delivered by now: a fresh list of each kind (real HTTP)."""
        self.cache.replace("nodes", list(self.kube.list_nodes()))
        self.cache.replace("pods", list(self.kube.list_pods()))
        self.cache.replace("leases", list(self.kube.list_objects(LEASES, namespace=NS)))
        if self.controller.cfg.recovery_job is not None:
            self.cache.replace("jobs", list(self.kube.list_objects(JOBS, namespace=self.controller.cfg.recovery_namespace)))

    def round(self) -> Plan | None:
        self.sync()
        self.controller.elect()
        return self.controller.step()

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeReplica = Callable[..., Replica]


@pytest.fixture
def make_replica(apiserver: FakeApiServer, clock: FakeClock) -> Iterator[MakeReplica]:
    """``make_replica(identity="ctl-a", cfg=CFG, clock=<the test's clock>)``: replicas closed after the test."""
    made: list[Replica] = []

    def make(identity: str = "ctl-a", cfg: ControllerConfig = CFG, clock_: FakeClock | None = None) -> Replica:
        replica = Replica(apiserver, identity, clock_ or clock, cfg)
        made.append(replica)
        return replica

    yield make
    for r in made:
        r.close()


@pytest.fixture
def one_node_two_gpus(apiserver: FakeApiServer) -> FakeApiServer:
    """Node n1 with GPU-0 and GPU-1 healthy, its plugin heartbeating; pods a (GPU-0), b and c (GPU-1),
    d (both); node n2 with GPU-0 healthy and pod e on it (same uuid names on another node)."""
    apiserver.seed(
        node_obj("n1", inventory(True, True)),
        node_obj("n2", inventory(True)),
        lease_obj("n1", "2026-01-01T00:00:00.000000Z"),
        lease_obj("n2", "2026-01-01T00:00:00.000000Z"),
        pod_obj("a", "n1", 0),
        pod_obj("b", "n1", 1),
        pod_obj("c", "n1", 1),
        pod_obj("d", "n1", 0, 1),
        pod_obj("e", "n2", 0),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cpu-only", "namespace": "ml"},
         "spec": {"nodeName": "n1", "containers": [{"name": "main"}]}, "status": {"phase": "Running"}},
    )  # fmt: skip
    return apiserver


def with_cfg(**kwargs: Any) -> ControllerConfig:
    return replace(CFG, **kwargs)
