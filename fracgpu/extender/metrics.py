"""Per-tenant quota gauges, read from the Scheduler's quota ledger at scrape time.

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

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fracgpu.api.v1beta1.names import RESOURCE_CORE, RESOURCE_MEMORY
from fracgpu.core.quota import TenantSnapshot
from fracgpu.core.tenant import SOURCE_DEFAULT, SOURCE_NONE, Limits
from fracgpu.extender.scheduler import Scheduler


def tenant_snapshots(scheduler: Scheduler) -> list[TenantSnapshot]:
    """One consistent view (under the Scheduler's lock) of every tenant worth a series, sorted."""
    with scheduler.lock:
        tenants = scheduler.tenants()
        ledger = scheduler.ledger
        names = set(ledger.tenants())
        for t in tenants.known_tenants():
            limits = tenants.limits(t)
            # tenants whose limit is only the cluster default are listed once they hold or wait
            if not isinstance(limits, Limits) or _own_limit(limits):
                names.add(t)
        return [ledger.snapshot(t) for t in sorted(names)]


def _own_limit(limits: Limits) -> bool:
    return any(src not in (SOURCE_NONE, SOURCE_DEFAULT) and value is not None
               for src, value in ((limits.memory_source, limits.memory), (limits.cores_source, limits.cores)))


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
        for snap in tenant_snapshots(self.scheduler):
            used.add_metric([snap.tenant, RESOURCE_MEMORY], snap.used.memory)
            used.add_metric([snap.tenant, RESOURCE_CORE], snap.used.cores)
            if isinstance(snap.limits, Limits):
                if snap.limits.memory is not None:
                    hard.add_metric([snap.tenant, RESOURCE_MEMORY], snap.limits.memory)
                if snap.limits.cores is not None:
                    hard.add_metric([snap.tenant, RESOURCE_CORE], snap.limits.cores)
            pending.add_metric([snap.tenant], snap.pending)
        yield used
        yield hard
        yield pending
