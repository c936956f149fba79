"""Per-tenant GPU quota: the ledger of what each tenant holds, and each tenant's waiting queue.

Pure: no clock reads (every time is passed in as `now`, Unix or monotonic seconds, as long as the
caller is consistent), no I/O, no locks. Atomicity is the caller's: the extender calls
`try_reserve` under the same short in-memory lock as its GPU reservation.

How the extender uses it::

    tenants = tenant.Tenants(namespaces, tenant_quotas, default)      # rebuilt on cache changes
    ledger = QuotaLedger(tenants.limits, QuotaConfig(max_head_wait=60))
    ledger.set_limits(new_tenants.limits)                               # after a rebuild

    # restart / list: every pod with a fracgpu.io/assigned annotation that still holds quota
    if not pod_finished(pod_phase):                                     # core.pod
        ledger.charge(key, a.tenant, *charge_of(a))                     # cores, memory
    # watch: pod Succeeded/Failed, or its DELETE event (not its deletionTimestamp)
    ledger.release(key); ledger.dequeue(key)

    # filter (once per pod, not per node): quota, then queue order; enqueues the pod when refused
    out = ledger.admit(PendingPod(key, tenant, Usage.for_pod(cores, mem_per_gpu), prio, created),
                       now, fits_somewhere=lambda k: <some node fits k's GPU request now>)
    if not out.ok: every node fails with out.reason (FailedAndUnresolvableNodes)

    # bind, under the reservation lock
    r = ledger.try_reserve(key, tenant, cores, memory)    # checks and charges; dequeues the pod
    if not r.ok: return r.reason

    # TenantQuota status, rate-limited, skipped when unchanged (core.quotastatus)
    new = ledger.status(tenant, merge_conditions(old.conditions, tenants.conditions(name, now)))
    if should_write_status(old, new, last_write, now, config.status_min_interval): patch(new.to_dict())

Units: `cores` are vgpu-core units summed over the pod's GPUs (a 3-GPU pod: 300); `memory` is
the VRAM charged, i.e. the VRAM per GPU x the number of GPUs (`Usage.for_pod` computes it). A pod
without vgpu-memory asks a share of the chosen GPU's memory: check it once per distinct GPU size.

A pod holds quota from the bind (the ledger charge) until it is Succeeded/Failed or its object
is gone, NOT from its deletionTimestamp: the kubelet keeps its devices through the grace period.
See `core.pod.pod_finished`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fracgpu.api import rfc3339
from fracgpu.api.v1beta1.tenantquota import Condition, QuotaAmounts, TenantQuotaStatus
from fracgpu.core.charge import OK, Outcome, PodKey, Usage, charge_of, refusal
from fracgpu.core.quantity import format_bytes
from fracgpu.core.tenant import Limits, QuotaError

# A pod's charge (core.charge) is in this module's interface; importable from here too.
__all__ = [
    "OK", "LimitsLookup", "Outcome", "PendingPod", "PodKey", "QuotaConfig", "QuotaLedger", "TenantSummary", "Usage",
    "charge_of", "queue_time", "refusal",
]

LimitsLookup = Callable[[str], Limits | QuotaError]


def queue_time(creation_timestamp: str) -> float:
    """A pod's `metadata.creationTimestamp` as the quota queue orders it (`PendingPod.created`): seconds since
    the epoch; an unreadable one reads 0.0, the oldest."""
    return rfc3339.parse_or_zero(creation_timestamp)


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A pod waiting for (or asking for) quota: what it asks and where it ranks."""

    key: PodKey
    tenant: str
    ask: Usage
    priority: int = 0
    created: float = 0.0  # metadata.creationTimestamp, seconds

    @property
    def rank(self) -> tuple[int, float, str, str]:
        """Admission order, smallest first: priority (high first), then creation, then namespace/name."""
        return (-self.priority, self.created, self.key.namespace, self.key.name)


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    # How long a higher-ranked pod that fits quota and some node may hold back the pods behind it.
    max_head_wait: float = 60.0
    # How many queued pods status.queue lists.
    status_queue_length: int = 10
    # Least time between two status writes of one TenantQuota.
    status_min_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.max_head_wait < 0 or self.status_min_interval < 0 or self.status_queue_length < 0:
            raise ValueError("QuotaConfig: max_head_wait, status_min_interval, status_queue_length must be >= 0")


@dataclass(frozen=True, slots=True)
class TenantSummary:
    """One tenant's numbers for status, metrics and `fracgpu inspect`."""

    tenant: str
    used: Usage
    limits: Limits | QuotaError
    pending: int
    queue: tuple[PodKey, ...]  # first `status_queue_length`, admission order


@dataclass(frozen=True, slots=True)
class _Charge:
    tenant: str
    usage: Usage


class QuotaLedger:
    """What each tenant holds (charges by pod) and who waits (queues by tenant). Mutable; `clone()`."""

    __slots__ = ("_blocking_since", "_charges", "_config", "_limits", "_queued", "_queues", "_used")

    def __init__(self, limits: LimitsLookup, config: QuotaConfig | None = None) -> None:
        self._limits = limits
        self._config = config or QuotaConfig()
        self._charges: dict[PodKey, _Charge] = {}
        self._used: dict[str, Usage] = {}
        self._queues: dict[str, list[PendingPod]] = {}  # sorted by rank
        self._queued: dict[PodKey, PendingPod] = {}
        self._blocking_since: dict[PodKey, float] = {}

    @property
    def config(self) -> QuotaConfig:
        return self._config

    def set_limits(self, limits: LimitsLookup) -> None:
        """Use a new limits lookup (after namespaces or TenantQuotas changed); charges stay."""
        self._limits = limits

    def clone(self) -> QuotaLedger:
        other = QuotaLedger(self._limits, self._config)
        other._charges = dict(self._charges)
        other._used = dict(self._used)
        other._queues = {t: list(q) for t, q in self._queues.items()}
        other._queued = dict(self._queued)
        other._blocking_since = dict(self._blocking_since)
        return other

    # -- accounting -------------------------------------------------------------------------

    def charge(self, pod: PodKey, tenant: str, cores: int, memory: int) -> bool:
        """Charge a bound pod to a tenant (memory = VRAM over all its GPUs). Idempotent.

        Charging a pod again replaces its charge (same values: nothing changes). The tenant is the
        one recorded at bind: a namespace that later moves to another tenant keeps its running
        pods charged where they were. Returns whether anything changed.
        """
        if cores < 0 or memory < 0:
            raise ValueError(f"charge {pod}: negative amounts ({cores} cores, {memory} bytes)")
        new = _Charge(tenant, Usage(memory=memory, cores=cores))
        old = self._charges.get(pod)
        if old == new:
            return False
        if old is not None:
            self._add(old.tenant, Usage() - old.usage)
        self._charges[pod] = new
        self._add(tenant, new.usage)
        return True

    def release(self, pod: PodKey) -> bool:
        """Give a pod's charge back. Idempotent; returns whether it held one."""
        old = self._charges.pop(pod, None)
        if old is None:
            return False
        self._add(old.tenant, Usage() - old.usage)
        return True

    def _add(self, tenant: str, delta: Usage) -> None:
        total = self._used.get(tenant, Usage()) + delta
        if total == Usage():
            self._used.pop(tenant, None)
        else:
            self._used[tenant] = total

    def used(self, tenant: str) -> Usage:
        return self._used.get(tenant, Usage())

    def charged(self, pod: PodKey) -> tuple[str, Usage] | None:
        """(tenant, usage) a pod is charged, or None."""
        c = self._charges.get(pod)
        return None if c is None else (c.tenant, c.usage)

    def tenants(self) -> tuple[str, ...]:
        """Tenants that hold something or have pods waiting, sorted."""
        return tuple(sorted(set(self._used) | {t for t, q in self._queues.items() if q}))

    # -- what-if ----------------------------------------------------------------------------

    def fits(self, tenant: str, cores: int, memory: int, *, pod: PodKey | None = None) -> Outcome:
        """Would charging (cores, memory) keep the tenant within its quota? Changes nothing.

        With `pod`, that pod's current charge to the same tenant is not counted twice (a repeated
        bind of an already charged pod fits).
        """
        limits = self._limits(tenant)
        if isinstance(limits, QuotaError):
            return Outcome(ok=False, reason=limits.reason)
        used = self.used(tenant)
        if pod is not None:
            current = self._charges.get(pod)
            if current is not None and current.tenant == tenant:
                used = used - current.usage
        why = refusal(tenant, used, limits, Usage(memory=memory, cores=cores))
        return OK if why is None else Outcome(ok=False, reason=why)

    def try_reserve(self, pod: PodKey, tenant: str, cores: int, memory: int) -> Outcome:
        """Check and charge in one call; on success the pod also leaves its tenant's queue.
        Refused: nothing changes."""
        outcome = self.fits(tenant, cores, memory, pod=pod)
        if outcome.ok:
            self.charge(pod, tenant, cores, memory)
            self.dequeue(pod)
        return outcome

    # -- queue ------------------------------------------------------------------------------

    def enqueue(self, pod: PendingPod) -> None:
        """Put a pod held back by quota (or by its queue) in its tenant's queue. Idempotent;
        a changed ask, priority or tenant replaces the old entry."""
        existing = self._find(pod.key)
        if existing == pod:
            return
        if existing is not None:
            self._remove(existing)
        self._insert(pod)

    def dequeue(self, key: PodKey) -> bool:
        """The pod was bound, deleted, or no longer asks: take it out. Idempotent."""
        self._blocking_since.pop(key, None)
        existing = self._find(key)
        if existing is None:
            return False
        self._remove(existing)
        return True

    def queue(self, tenant: str) -> tuple[PendingPod, ...]:
        """The tenant's waiting pods in admission order."""
        return tuple(self._queues.get(tenant, ()))

    def _find(self, key: PodKey) -> PendingPod | None:
        return self._queued.get(key)

    def _insert(self, pod: PendingPod) -> None:
        q = self._queues.setdefault(pod.tenant, [])
        q.insert(bisect.bisect([p.rank for p in q], pod.rank), pod)
        self._queued[pod.key] = pod

    def _remove(self, pod: PendingPod) -> None:
        q = self._queues[pod.tenant]
        q.remove(pod)
        del self._queued[pod.key]
        if not q:
            del self._queues[pod.tenant]

    def admissible(self, pod: PendingPod, now: float, fits_somewhere: Callable[[PodKey], bool]) -> Outcome:
        """May `pod` take quota now, given its tenant's queue? Only pods of the same tenant count.

        A higher-ranked queued pod H holds `pod` back when H fits the quota and some node now
        (`fits_somewhere(H.key)`) and the quota would not hold both H (and the other such pods
        above `pod`) and `pod`. H holds pods back for at most `max_head_wait` seconds from the
        first call that found it fitting; the window starts again after H stops fitting (e.g.
        the quota was used up), so an unplaceable H cannot block its tenant forever.

        Records when each H started to fit (the only state it changes).
        """
        limits = self._limits(pod.tenant)
        if isinstance(limits, QuotaError):
            return Outcome(ok=False, reason=limits.reason)
        used = self.used(pod.tenant)
        held = Usage()
        first: PendingPod | None = None
        for higher in self._queues.get(pod.tenant, ()):
            if higher.rank >= pod.rank:
                break
            if higher.key == pod.key:
                continue
            if refusal(pod.tenant, used + held, limits, higher.ask) is None and fits_somewhere(higher.key):
                since = self._blocking_since.setdefault(higher.key, now)
                if now - since < self._config.max_head_wait:
                    held = held + higher.ask
                    first = first or higher
            else:
                self._blocking_since.pop(higher.key, None)
        if first is None or refusal(pod.tenant, used + held, limits, pod.ask) is None:
            return OK
        return Outcome(
            ok=False,
            reason=f"waiting behind {first.key} (priority {first.priority}) in tenant {pod.tenant}'s queue",
        )

    def admit(self, pod: PendingPod, now: float, fits_somewhere: Callable[[PodKey], bool]) -> Outcome:
        """The filter's quota check: quota first, then queue order. A refused pod is enqueued
        (it waits for quota); an admitted one stays where it is until bind or dequeue."""
        outcome = self.fits(pod.tenant, pod.ask.cores, pod.ask.memory, pod=pod.key)
        if outcome.ok:
            outcome = self.admissible(pod, now, fits_somewhere)
        if not outcome.ok:
            self.enqueue(pod)
        return outcome

    # -- status -----------------------------------------------------------------------------

    def summary(self, tenant: str) -> TenantSummary:
        q = self._queues.get(tenant, [])
        return TenantSummary(
            tenant=tenant,
            used=self.used(tenant),
            limits=self._limits(tenant),
            pending=len(q),
            queue=tuple(p.key for p in q[: self._config.status_queue_length]),
        )

    def status(self, tenant: str, conditions: Sequence[Condition] = ()) -> TenantQuotaStatus:
        """The TenantQuota `status` for a tenant (exact quantities, so unchanged use compares equal)."""
        snap = self.summary(tenant)
        return TenantQuotaStatus(
            used=QuotaAmounts(memory=format_bytes(snap.used.memory), cores=str(snap.used.cores)),
            pending=snap.pending,
            queue=tuple(str(k) for k in snap.queue),
            conditions=tuple(conditions),
        )
