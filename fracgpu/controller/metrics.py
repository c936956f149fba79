"""The controller's Prometheus metrics, on their own registry (built in main, passed in; no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from fracgpu.controller.reconcile import Gauges

PREFIX = "fracgpu_controller_"


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.evictions = Counter(
            PREFIX + "evictions",
            "Eviction requests for pods on unhealthy GPUs, by result (evicted, blocked, gone, error).",
            ["result"],
            registry=r,
        )
        self.taints = Counter(PREFIX + "node_taints", "Nodes tainted because their GPUs broke as a whole.", registry=r)
        self.recoveries = Counter(
            PREFIX + "node_recoveries", "Taints removed after the node stayed healthy for the hold time.", registry=r
        )
        self.recovery_jobs = Counter(
            PREFIX + "recovery_jobs", "Recovery Jobs started for broken nodes, by result (created, error).",
            ["result"], registry=r,
        )  # fmt: skip
        self.events = Counter(PREFIX + "events", "Events recorded, by reason.", ["reason"], registry=r)
        self.errors = Counter(PREFIX + "api_errors", "Failed API writes, by action.", ["action"], registry=r)
        self.is_leader = Gauge(PREFIX + "is_leader", "1 while this replica holds the leader Lease.", registry=r)
        self.unhealthy_gpus = Gauge(PREFIX + "unhealthy_gpus", "GPUs marked unhealthy in node inventories.", registry=r)
        self.broken_nodes = Gauge(PREFIX + "broken_nodes", "Nodes whose GPUs are broken as a whole.", registry=r)
        self.tainted_nodes = Gauge(PREFIX + "tainted_nodes", "Nodes carrying the gpu-failed taint.", registry=r)
        self.stale_nodes = Gauge(PREFIX + "stale_nodes", "Nodes whose plugin stopped heartbeating.", registry=r)
        self.blocked_evictions = Gauge(
            PREFIX + "blocked_evictions", "Pods whose eviction a disruption budget refuses now.", registry=r
        )
        for result in ("evicted", "blocked", "gone", "error"):
            self.evictions.labels(result)

    def set_gauges(self, g: Gauges) -> None:
        self.unhealthy_gpus.set(g.unhealthy_gpus)
        self.broken_nodes.set(g.broken_nodes)
        self.tainted_nodes.set(g.tainted_nodes)
        self.stale_nodes.set(g.stale_nodes)
        self.blocked_evictions.set(g.blocked_evictions)
