"""Tenants and their quota in the extender: the Namespaces and TenantQuotas the watches deliver, who
is whose tenant (`core.tenant.Tenants`, rebuilt when either changes), the quota ledger, and the
TenantQuota status writes it leads to. Lock held by the caller (the Scheduler)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.quota import (
    PodKey,
    QuotaConfig,
    QuotaLedger,
    TenantSummary,
)
from fracgpu.core.quotastatus import merge_conditions, should_write_status
from fracgpu.core.records import NamespaceRecord
from fracgpu.core.tenant import SOURCE_DEFAULT, SOURCE_NONE, Limits, NamespaceInfo, Tenants, tq_tenant


def pod_key(key: str) -> PodKey:
    namespace, _, name = key.partition("/")
    return PodKey(namespace, name)


class TenantBook:
    def __init__(self, quota: QuotaConfig, default_limits: Limits) -> None:
        self._config = quota
        self._default_limits = default_limits
        self.namespaces: dict[str, NamespaceRecord] = {}
        self.quotas: dict[str, TenantQuota] = {}
        # bound pods whose reservation cannot be read: what their tenants are charged (their
        # requests); re-charged when tenants change, since the tenant comes from the namespace
        # here, not from a reservation written at bind
        self._unreadable: dict[str, tuple[int, int]] = {}  # pod key -> (cores, memory)
        self._tenants = self._build()
        self.ledger = QuotaLedger(self._tenants.limits, quota)
        self._stale = False

    def _build(self) -> Tenants:
        infos = [NamespaceInfo(n.name, n.labels, n.annotations) for n in self.namespaces.values()]
        return Tenants(infos, self.quotas.values(), self._default_limits)

    def tenants(self) -> Tenants:
        if self._stale:
            self._stale = False
            self._tenants = self._build()
            self.ledger.set_limits(self._tenants.limits)
            for key, (cores, memory) in self._unreadable.items():
                pk = pod_key(key)
                self.ledger.charge(pk, self._tenants.tenant_of(pk.namespace), cores, memory)
        return self._tenants

    def apply_namespace(self, rec: NamespaceRecord) -> None:
        self.namespaces[rec.name] = rec
        self._stale = True

    def delete_namespace(self, name: str) -> None:
        self.namespaces.pop(name, None)
        self._stale = True

    def apply_quota(self, quota: TenantQuota) -> None:
        self.quotas[quota.name] = quota
        self._stale = True

    def delete_quota(self, name: str) -> None:
        self.quotas.pop(name, None)
        self._stale = True

    # ---- charges of bound pods --------------------------------------------------------------------
    def charge(self, pk: PodKey, tenant: str, cores: int, memory: int) -> None:
        """A bound pod holds this (from its reservation); it waits for quota no longer."""
        self.ledger.charge(pk, tenant, cores, memory)
        self.ledger.dequeue(pk)

    def charge_unreadable(self, key: str, cores: int, memory: int) -> None:
        """A bound pod whose reservation cannot be read: its namespace's tenant is charged its request."""
        pk = pod_key(key)
        self._unreadable[key] = (cores, memory)
        self.charge(pk, self.tenants().tenant_of(pk.namespace), cores, memory)

    def readable_again(self, key: str) -> None:
        self._unreadable.pop(key, None)

    def release(self, key: str) -> None:
        self.ledger.release(pod_key(key))

    # ---- what the quota looks like from outside ----------------------------------------------------
    def status_writes(self, last_write: Mapping[str, float], now: float, wall: float
                      ) -> list[tuple[str, dict[str, Any]]]:
        """TenantQuota statuses due for a write: changed, and not written in the last min interval
        (`last_write`, `now`: the monotonic clock; `wall` stamps a condition's lastTransitionTime)."""
        tenants = self.tenants()
        out: list[tuple[str, dict[str, Any]]] = []
        for name, quota in sorted(self.quotas.items()):
            old = quota.status
            conditions = merge_conditions(old.conditions if old is not None else (),
                                          tenants.conditions(name, wall, quota.generation))
            new = self.ledger.status(tq_tenant(name), conditions)
            if should_write_status(old, new, last_write.get(name), now, self._config.status_min_interval):
                out.append((name, new.to_dict()))
        return out

    def usage(self) -> list[TenantSummary]:
        """Every tenant worth a metric series, sorted: those that hold something or have pods
        waiting, and those with a limit of their own (a tenant whose limit is only the cluster
        default is listed once it holds or waits)."""
        tenants = self.tenants()
        names = set(self.ledger.tenants())
        for t in tenants.known_tenants():
            limits = tenants.limits(t)
            if not isinstance(limits, Limits) or _own_limit(limits):
                names.add(t)
        return [self.ledger.summary(t) for t in sorted(names)]


def _own_limit(limits: Limits) -> bool:
    return any(src not in (SOURCE_NONE, SOURCE_DEFAULT) and value is not None
               for src, value in ((limits.memory_source, limits.memory), (limits.cores_source, limits.cores)))
