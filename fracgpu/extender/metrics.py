"""The extender's Prometheus registry (`ExtenderMetrics`: request latency, filter outcomes per reason kind,
bind failures, cache objects, leadership, the DRA allocator's outcomes) and the per-tenant quota gauges
(`TenantCollector`), read from the Scheduler's quota ledger at scrape time:

- `fracgpu_tenant_used{tenant,resource}`: what the tenant's bound pods hold (vgpu-memory in bytes,
  vgpu-core in units; the same numbers as TenantQuota status.used);
- `fracgpu_tenant_hard{tenant,resource}`: its limit, for each resource that has one (no series for
  an unlimited resource, nor for a quota that cannot be read: see the QuotaValid condition);
- `fracgpu_tenant_pending{tenant}`: pods waiting in the tenant's quota queue.

Tenants listed: every TenantQuota's tenant, every namespace tenant with a quota annotation, and any
other tenant that holds something or has pods waiting — not every namespace of the cluster, so
the series count stays bounded by what is configured or used.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fracgpu.api.v1beta1.names import RESOURCE_CORE, RESOURCE_MEMORY
from fracgpu.core.tenant import Limits
from fracgpu.extender.leader import Leadership
from fracgpu.extender.scheduler import Scheduler


class TenantCollector(Collector):
    """A prometheus_client collector over a Scheduler (no state of its own)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # the series depend on the cache; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily("fracgpu_tenant_used", "GPU quota a tenant's bound pods hold "
                                 "(vgpu-memory in bytes, vgpu-core in units)", labels=["tenant", "resource"])
        hard = GaugeMetricFamily("fracgpu_tenant_hard", "A tenant's quota limit, per limited resource "
                                 "(vgpu-memory in bytes, vgpu-core in units)", labels=["tenant", "resource"])
        pending = GaugeMetricFamily("fracgpu_tenant_pending", "Pods waiting in a tenant's quota queue",
                                    labels=["tenant"])
        for use in self.scheduler.tenant_usage():
            used.add_metric([use.tenant, RESOURCE_MEMORY], use.used.memory)
            used.add_metric([use.tenant, RESOURCE_CORE], use.used.cores)
            if isinstance(use.limits, Limits):
                if use.limits.memory is not None:
                    hard.add_metric([use.tenant, RESOURCE_MEMORY], use.limits.memory)
                if use.limits.cores is not None:
                    hard.add_metric([use.tenant, RESOURCE_CORE], use.limits.cores)
            pending.add_metric([use.tenant], use.pending)
        yield used
        yield hard
        yield pending


class ExtenderMetrics:
    """The extender's own Prometheus registry (no process-global state)."""

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "fracgpu_extender_request_seconds", "Extender request latency by verb", ["verb"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=self.registry,
        )
        self.filter_outcomes = Counter(
            "fracgpu_extender_filter_nodes_total", "Nodes per filter outcome (kept, failed, unresolvable, "
            "error) and reason kind (fracgpu.extender.reasons.ReasonKind)", ["outcome", "reason"],
            registry=self.registry,
        )
        self.bind_failures = Counter(
            "fracgpu_extender_bind_failures_total", "Binds that failed, by stage", ["stage"], registry=self.registry,
        )
        self.bad_requests = Counter(
            "fracgpu_extender_bad_requests_total", "Requests refused as malformed", ["verb"], registry=self.registry,
        )
        self.cache = Gauge("fracgpu_extender_cache_objects", "Objects in the extender's cache", ["kind"],
                           registry=self.registry)
        self.is_leader = Gauge("fracgpu_extender_is_leader",
                               "1 while this replica may bind (holds the Lease, cache fenced)", registry=self.registry)
        self.refused_clients = Counter(
            "fracgpu_extender_refused_clients_total", "Verb requests refused for want of an allowed client "
            "certificate", ["verb"], registry=self.registry,
        )
        self.dra_allocations = Counter(
            "fracgpu_extender_dra_allocations_total", "Pods whose DRA claims the allocator handled, by outcome "
            "(allocated; refused: told to the pod; unreadable: claims fracgpu cannot place; write_failed)",
            ["outcome"], registry=self.registry,
        )
        self.dra_waiting = Gauge("fracgpu_extender_dra_waiting_pods",
                                 "Pods whose fracgpu claims wait for an allocation, at the last pass",
                                 registry=self.registry)
        self.dra_pass = Histogram(
            "fracgpu_extender_dra_pass_seconds", "Duration of one allocator pass over the waiting pods",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0), registry=self.registry,
        )
        self._scheduler = scheduler
        if scheduler is not None:
            self.registry.register(TenantCollector(scheduler))

    def refresh(self, leadership: Leadership | None = None) -> None:
        self.is_leader.set(1 if leadership is None or leadership.can_bind() else 0)
        if self._scheduler is None:
            return
        s = self._scheduler.stats()
        self.cache.labels("nodes").set(s.nodes)
        self.cache.labels("pods").set(s.pods)
        self.cache.labels("reservations").set(s.reservations)
        self.cache.labels("assumed").set(s.assumed)
