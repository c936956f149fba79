"""A pod's tenant and the quota that tenant has. Pure: the caller passes namespaces and TenantQuotas.

Rules (docs/quotas.md has the full text):

- The tenant of a pod is the tenant of its namespace: `tq/<name>` when a TenantQuota's
  namespaceSelector matches the namespace's labels, else `ns/<namespace>`.
- A namespace selected by several TenantQuotas is a configuration error, reported as a
  `Conflict` (the extender writes it into every involved TenantQuota's status and an Event).
  Meanwhile the oldest TenantQuota (metadata.creationTimestamp) wins, ties broken by name, so the
  outcome never depends on watch order; creating a newer, overlapping TenantQuota cannot steal a
  namespace from a running tenant.
- Limits, per resource, strongest first: the TenantQuota's spec.hard (for `tq/` tenants), else
  the namespace annotations fracgpu.io/vgpu-memory-quota / fracgpu.io/vgpu-core-quota (for `ns/`
  tenants), else the configured cluster default (each tenant gets that much, it is not a shared
  pool), else unlimited.
- A value that cannot be used (a bad annotation, a fractional byte count) gives a `QuotaError`
  instead of limits; the ledger refuses the tenant's new pods with its message (fail closed: a
  typo must not grant unlimited GPU memory). Running pods are not touched.
- So does a TenantQuota whose namespaceSelector uses a label a tenant may edit (anything but
  fracgpu.io/ labels and kubernetes.io/metadata.name, `names.protected_namespace_label`): its
  tenants could walk out of it or into a richer one. The CRD refuses such selectors; this catches
  objects stored before that rule.

Build one `Tenants` index per change of the namespace or TenantQuota cache; it is immutable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fracgpu.api import rfc3339
from fracgpu.api.v1beta1.names import (
    ANN_NS_CORE_QUOTA,
    ANN_NS_MEMORY_QUOTA,
    RESOURCE_CORE,
    RESOURCE_MEMORY,
    TENANT_NS_PREFIX,
    TENANT_TQ_PREFIX,
    protected_namespace_label,
)
from fracgpu.api.v1beta1.tenantquota import (
    CONDITION_NAMESPACE_CONFLICT,
    CONDITION_QUOTA_VALID,
    Condition,
    TenantQuota,
)
from fracgpu.core.quantity import QuantityError, parse_bytes, parse_count

SOURCE_TENANTQUOTA = "TenantQuota"
SOURCE_NAMESPACE = "namespace annotation"
SOURCE_DEFAULT = "cluster default"
SOURCE_NONE = "unlimited"


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """The slim Namespace record the extender keeps."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's hard budgets; None = unlimited. `*_source` says where each number came from."""

    memory: int | None = None  # VRAM bytes, summed over every GPU the tenant's pods use
    cores: int | None = None  # vgpu-core units (100 = one whole GPU)
    memory_source: str = SOURCE_NONE
    cores_source: str = SOURCE_NONE


UNLIMITED = Limits()


@dataclass(frozen=True, slots=True)
class QuotaError:
    """A tenant's quota cannot be read; `message` names the object, the field and the value."""

    tenant: str
    message: str
    condition_reason: str = "InvalidQuantity"  # the reason of the TenantQuota's QuotaValid=False

    @property
    def reason(self) -> str:
        return f"tenant {self.tenant}: quota unusable, {self.message}"


@dataclass(frozen=True, slots=True)
class Conflict:
    """A namespace that several TenantQuotas select; `quotas` in rule order, the winner first."""

    namespace: str
    quotas: tuple[str, ...]

    @property
    def winner(self) -> str:
        return self.quotas[0]

    @property
    def message(self) -> str:
        return (
            f"namespace {self.namespace} is selected by TenantQuotas {', '.join(self.quotas)}; "
            f"{self.winner} applies (oldest creationTimestamp, then name)"
        )


def ns_tenant(namespace: str) -> str:
    return f"{TENANT_NS_PREFIX}{namespace}"


def tq_tenant(quota_name: str) -> str:
    return f"{TENANT_TQ_PREFIX}{quota_name}"


def rule_order(quotas: Iterable[TenantQuota]) -> list[TenantQuota]:
    """TenantQuotas in conflict-rule order: oldest creationTimestamp first, then name."""
    return sorted(quotas, key=lambda q: (q.created, q.name))


def parse_limits(
    memory: str | int | None,
    cores: str | int | None,
    *,
    tenant: str,
    source: str,
    where_memory: str,
    where_cores: str,
    fallback: Limits = UNLIMITED,
) -> Limits | QuotaError:
    """Limits from wire values; a resource given as None takes `fallback`'s value and source."""
    try:
        mem = fallback.memory if memory is None else _amount(parse_bytes, memory, where_memory)
        cor = fallback.cores if cores is None else _amount(parse_count, cores, where_cores)
    except QuantityError as e:
        return QuotaError(tenant=tenant, message=str(e))
    return Limits(
        memory=mem,
        cores=cor,
        memory_source=fallback.memory_source if memory is None else source,
        cores_source=fallback.cores_source if cores is None else source,
    )


def _amount(parse: Callable[..., int], value: str | int, where: str) -> int:
    """parse(value); every error message starts with `where`."""
    try:
        return parse(value, what=where)
    except QuantityError as e:
        text = str(e)
        raise QuantityError(text if text.startswith(where) else f"{where}: {text}") from None


def unprotected_selector_keys(quota: TenantQuota) -> tuple[str, ...]:
    """The label keys of the quota's namespaceSelector that a tenant may write on her namespace."""
    sel = quota.spec.namespace_selector
    keys = {k for k, _ in sel.match_labels} | {e.key for e in sel.match_expressions}
    return tuple(sorted(k for k in keys if not protected_namespace_label(k)))


def default_limits(memory: str | int | None, cores: str | int | None) -> Limits:
    """The cluster default from configuration; raises QuantityError (a config error, at start)."""
    return Limits(
        memory=None if memory is None else parse_bytes(memory, what="default vgpu-memory quota"),
        cores=None if cores is None else parse_count(cores, what="default vgpu-core quota"),
        memory_source=SOURCE_NONE if memory is None else SOURCE_DEFAULT,
        cores_source=SOURCE_NONE if cores is None else SOURCE_DEFAULT,
    )


class Tenants:
    """Immutable index: namespace -> tenant, tenant -> limits / zones, and the conflicts found."""

    __slots__ = ("_conflicts", "_default", "_namespaces", "_quotas", "_tenant_of")

    def __init__(
        self,
        namespaces: Iterable[NamespaceInfo],
        quotas: Iterable[TenantQuota],
        default: Limits = UNLIMITED,
    ) -> None:
        self._default = default
        self._namespaces = {n.name: n for n in namespaces}
        ordered = rule_order(quotas)
        self._quotas = {q.name: q for q in ordered}
        self._tenant_of: dict[str, str] = {}
        conflicts: list[Conflict] = []
        for ns in sorted(self._namespaces.values(), key=lambda n: n.name):
            selecting = [q.name for q in ordered if q.spec.namespace_selector.matches(ns.labels)]
            if selecting:
                self._tenant_of[ns.name] = tq_tenant(selecting[0])
            if len(selecting) > 1:
                conflicts.append(Conflict(namespace=ns.name, quotas=tuple(selecting)))
        self._conflicts = tuple(conflicts)

    def tenant_of(self, namespace: str) -> str:
        """`tq/<name>` or `ns/<namespace>`; a namespace not (yet) in the cache is its own tenant."""
        return self._tenant_of.get(namespace, ns_tenant(namespace))

    @property
    def conflicts(self) -> tuple[Conflict, ...]:
        """Every namespace selected by more than one TenantQuota, by namespace name."""
        return self._conflicts

    def conflicts_of(self, quota_name: str) -> tuple[Conflict, ...]:
        """The conflicts a TenantQuota takes part in (winner or not): report them on each."""
        return tuple(c for c in self._conflicts if quota_name in c.quotas)

    def quota(self, name: str) -> TenantQuota | None:
        return self._quotas.get(name)

    def known_tenants(self) -> tuple[str, ...]:
        """Every `tq/` tenant and the `ns/` tenant of every namespace no TenantQuota selects, sorted."""
        found = {tq_tenant(n) for n in self._quotas} | {self.tenant_of(n) for n in self._namespaces}
        return tuple(sorted(found))

    def limits(self, tenant: str) -> Limits | QuotaError:
        """The tenant's limits (see the module rules), or why they cannot be used."""
        if tenant.startswith(TENANT_TQ_PREFIX):
            name = tenant[len(TENANT_TQ_PREFIX) :]
            quota = self._quotas.get(name)
            if quota is None:
                # Its pods were charged while it existed; with the object gone the tenant has no limit
                # of its own, only the cluster default.
                return self._default
            editable = unprotected_selector_keys(quota)
            if editable:
                return QuotaError(
                    tenant=tenant,
                    message=f"TenantQuota {name} spec.namespaceSelector selects on {', '.join(editable)}, "
                    "a label tenants may edit on their namespaces; select on fracgpu.io/ labels or "
                    "kubernetes.io/metadata.name",
                    condition_reason="EditableSelector",
                )
            where = f"TenantQuota {name} spec.hard"
            return parse_limits(
                quota.spec.hard.memory,
                quota.spec.hard.cores,
                tenant=tenant,
                source=f"{SOURCE_TENANTQUOTA} {name}",
                where_memory=f"{where}[{RESOURCE_MEMORY}]",
                where_cores=f"{where}[{RESOURCE_CORE}]",
                fallback=self._default,
            )
        namespace = tenant[len(TENANT_NS_PREFIX) :] if tenant.startswith(TENANT_NS_PREFIX) else tenant
        info = self._namespaces.get(namespace)
        annotations = info.annotations if info is not None else {}
        where = f"annotation {{}} on namespace {namespace}"
        return parse_limits(
            annotations.get(ANN_NS_MEMORY_QUOTA),
            annotations.get(ANN_NS_CORE_QUOTA),
            tenant=tenant,
            source=SOURCE_NAMESPACE,
            where_memory=where.format(ANN_NS_MEMORY_QUOTA),
            where_cores=where.format(ANN_NS_CORE_QUOTA),
            fallback=self._default,
        )

    def allowed_zones(self, tenant: str) -> tuple[str, ...] | None:
        """The zones a `tq/` tenant is restricted to; None = any zone."""
        if not tenant.startswith(TENANT_TQ_PREFIX):
            return None
        quota = self._quotas.get(tenant[len(TENANT_TQ_PREFIX) :])
        return None if quota is None else quota.spec.allowed_zones

    def conditions(self, quota_name: str, now: float, generation: int = 0) -> tuple[Condition, ...]:
        """The NamespaceConflict and QuotaValid conditions for a TenantQuota's status.

        lastTransitionTime is `now`; merge with the stored ones (quotastatus.merge_conditions) so that it
        only moves when a condition's status changes.
        """
        stamp = rfc3339.format_time(now)
        def condition(kind: str, status: str, reason: str, message: str) -> Condition:
            return Condition(type=kind, status=status, reason=reason, message=message, last_transition_time=stamp,
                             observed_generation=generation)

        mine = self.conflicts_of(quota_name)
        if mine:
            conflict = condition(CONDITION_NAMESPACE_CONFLICT, "True", "NamespaceSelectedTwice",
                                 "; ".join(c.message for c in mine))
        else:
            conflict = condition(CONDITION_NAMESPACE_CONFLICT, "False", "NoConflict",
                                 "no namespace it selects is selected by another TenantQuota")
        limits = self.limits(tq_tenant(quota_name))
        if isinstance(limits, QuotaError):
            valid = condition(CONDITION_QUOTA_VALID, "False", limits.condition_reason,
                              f"{limits.message}; new pods of {limits.tenant} are refused until it is fixed")
        else:
            valid = condition(CONDITION_QUOTA_VALID, "True", "Valid", "spec.hard is in force")
        return (conflict, valid)
