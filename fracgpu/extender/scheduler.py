"""The extender's in-memory view of the cluster and its three decisions: filter, prioritize, bind.

`Scheduler` is the facade that owns the one lock; the work is done by the parts it holds:

- `store.Store`: the records the cache feeders deliver and the indexes over them;
- `assume.Holds`: each pod's reservation and its life through a Binding (assume, confirm, fail, expire);
- `decide.Decider`: the decision for one pod, in named steps;
- `tenants.TenantBook`: tenants, the quota ledger and the TenantQuota status writes.

Cache feeders (watch threads, a snapshot file) call the `apply_*` / `delete_*` methods; the HTTP
handlers call `filter`, `prioritize` and `reserve`, then `confirm`, `binding_failed` or `release`.
Every method takes the same short lock and never does I/O under it: the Binding write happens
outside, between `reserve` and its outcome. A reservation's life is described in `assume.py`
and docs/extender.md "Bind".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fracgpu.api.rfc3339 import format_time
from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.extender import (
    MAX_SCORE,
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderFilterResult,
    HostPriority,
)
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, PHASE_ALLOCATING
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.fit import reason_unhealthy_room
from fracgpu.core.pod import PodObject, decode_pod
from fracgpu.core.quota import PodKey, TenantSummary, charge_of
from fracgpu.core.records import NamespaceRecord, NodeRecord, PodRecord
from fracgpu.core.reservation import NoFreeDeviceIds, build_assignment
from fracgpu.extender.assume import BindRefused, Failure, Holds
from fracgpu.extender.config import SchedulerConfig
from fracgpu.extender.decide import (
    NO_GPU_REQUEST,
    NOT_READY,
    UNKNOWN_NODE,
    Decider,
    Decision,
    Workload,
    read_request,
    reason_retry_allocating,
)
from fracgpu.extender.store import Clock, Store
from fracgpu.extender.tenants import TenantBook
from fracgpu.kube.errors import outcome_unknown

__all__ = ["BindRefused", "Scheduler", "SchedulerConfig", "Stats", "binding_annotations"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Stats:
    nodes: int = 0
    pods: int = 0
    reservations: int = 0
    assumed: int = 0  # binds whose outcome is not known yet (in flight or unknown)
    awaiting_watch: int = 0  # our binds the pod watch has not shown yet (snapshot mode: all of them)
    unreadable: int = 0  # bound pods whose fracgpu.io/assigned cannot be read (their nodes take no new pod)
    observed: int = 0  # placed pods fed to the policies' workload histograms


def binding_annotations(a: Assignment) -> dict[str, str]:
    return {ANN_ASSIGNED: a.to_json(), ANN_PHASE: PHASE_ALLOCATING}


class Scheduler:
    """Thread-safe: cache feeders run in threads, handlers on the event loop; one lock, no I/O under it."""

    def __init__(self, config: SchedulerConfig, clock: Clock, *, wall: Clock) -> None:
        """`clock` measures every duration (heartbeat staleness, the assume TTL, the stuck-allocating
        timeout, the quota queue's head wait, status write intervals): give it a monotonic clock, so
        that a step of the wall clock (NTP, a VM resumed) cannot mark every node stale or expire every
        assumption. `wall` (seconds since the epoch) is read only where an API object carries a
        timestamp: the assign time written at bind, the age of a reservation read from the watch,
        a condition's lastTransitionTime."""
        self.config = config
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._holds = Holds()
        self._book = TenantBook(config.quota, config.default_limits)
        self._workload = Workload(config.policies)
        self._store = Store(config, clock, wall, self._holds, self._book, self._workload.observe)
        self._decider = Decider(config, self._store, self._workload)
        self._last_refresh = float("-inf")
        self._synced = False

    @property
    def synced(self) -> bool:
        return self._synced

    def mark_synced(self) -> None:
        with self._lock:
            self._synced = True

    # ---- cache feeding ------------------------------------------------------------------------
    def apply_node(self, rec: NodeRecord) -> None:
        with self._lock:
            self._store.apply_node(rec)

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._store.delete_node(name)

    def apply_heartbeat(self, node: str) -> None:
        with self._lock:
            self._store.apply_heartbeat(node)

    def delete_heartbeat(self, node: str) -> None:
        with self._lock:
            self._store.delete_heartbeat(node)

    def apply_namespace(self, rec: NamespaceRecord) -> None:
        with self._lock:
            self._book.apply_namespace(rec)

    def delete_namespace(self, name: str) -> None:
        with self._lock:
            self._book.delete_namespace(name)

    def apply_tenant_quota(self, quota: TenantQuota) -> None:
        with self._lock:
            self._book.apply_quota(quota)

    def delete_tenant_quota(self, name: str) -> None:
        with self._lock:
            self._book.delete_quota(name)

    def apply_pod(self, rec: PodRecord) -> None:
        with self._lock:
            self._store.apply_pod(rec)

    def delete_pod(self, key: str) -> None:
        with self._lock:
            self._store.forget_pod(key)

    # ---- what the cache holds -----------------------------------------------------------------
    def cached_node(self, name: str) -> NodeRecord | None:
        """The node's record as last seen (the watch re-parses an inventory only when it changed)."""
        with self._lock:
            return self._store.nodes.get(name)

    def not_held(self, bound: Iterable[PodRecord]) -> list[str]:
        """Keys of the bound pods (each with a reservation for its node) whose reservation the cache
        does not hold yet; pods the cache keeps no reservation for (not a GPU pod, not a fracgpu
        node) count as held."""
        missing: list[str] = []
        with self._lock:
            for rec in bound:
                if not rec.wants_gpu and rec.node not in self._store.nodes:
                    continue
                hold = self._holds.get(rec.key)
                if hold is None or hold.node != rec.node:
                    missing.append(rec.key)
        return missing

    def stats(self) -> Stats:
        with self._lock:
            return Stats(
                nodes=len(self._store.nodes),
                pods=len(self._store.pods),
                reservations=len(self._holds),
                assumed=self._holds.assumed,
                awaiting_watch=sum(1 for h in self._holds if h.ours),
                unreadable=len(self._store.unreadable),
                observed=self._workload.observed,
            )

    # ---- decisions ----------------------------------------------------------------------------
    def _decide(self, pod: PodObject, names: Sequence[str], want: int, *, admit: bool = False) -> Decision:
        ask = read_request(pod)
        if isinstance(ask, Decision):
            return ask
        now = self.clock()
        self._refresh(now)
        return self._decider.decide(ask, names, want, now, admit=admit)

    def _refresh(self, now: float) -> None:
        """Re-judge heartbeats and expire assumed binds, at most every refresh_s (lock held)."""
        if now - self._last_refresh < self.config.refresh_s:
            return
        self._last_refresh = now
        self._store.rejudge_heartbeats(now)
        for key in self._holds.expired(now, self.config.assume_ttl_s):
            self._store.release(key)

    def filter(self, args: ExtenderArgs) -> ExtenderFilterResult:
        """The filter answer. Two refusals that clear within seconds are answered as an `Error`, not
        as failed nodes: the cache not synced yet, and "no node now, because a confusable pod is
        still allocating on the nodes that fit". kube-scheduler parks a pod whose nodes an extender
        failed until some cluster event (a pod's annotation changing is none) or for up to 5 min;
        an Error sends it to its backoff queue and it is retried after 1-10 s (docs/extender.md,
        "Why a still-allocating refusal is an error")."""
        names = list(dict.fromkeys(args.node_names))  # each candidate once, with one outcome
        pod = decode_pod(args.pod)
        with self._lock:
            if not self._synced:
                return ExtenderFilterResult(error=NOT_READY)
            d = self._decide(pod, names, self.config.k, admit=True)
            self._log_unhealthy_room(d)
        if d.error == NO_GPU_REQUEST:  # not ours (an extender without managedResources sees every pod)
            return ExtenderFilterResult(node_names=tuple(names))
        if d.error:
            return ExtenderFilterResult(unresolvable={n: d.error for n in names})
        ranking = d.ranking
        failed = dict(ranking.failed)
        for n in ranking.unknown:
            failed[n] = UNKNOWN_NODE
        if not d.kept and d.waiting:
            return ExtenderFilterResult(error=reason_retry_allocating(failed, ranking.unresolvable))
        return ExtenderFilterResult(
            node_names=tuple(r.node for r in d.kept), failed=failed, unresolvable=ranking.unresolvable
        )

    def _log_unhealthy_room(self, d: Decision) -> None:
        """Name, per node, the unhealthy GPUs that would have room: the refusal itself carries only
        the pod's numbers, the same on every node (lock held)."""
        if d.req is None or not log.isEnabledFor(logging.DEBUG):
            return
        text = reason_unhealthy_room(d.req)
        for node, why in d.ranking.failed.items():
            rec = self._store.nodes.get(node)
            if why != text or rec is None or rec.inventory is None:
                continue
            bad = [f"{g.uuid} ({g.reason or 'unhealthy'})" for g in rec.inventory.gpus if not g.healthy]
            log.debug("filter node=%s refusal=%r unhealthy_gpus=%s", node, why, ", ".join(bad))

    def prioritize(self, args: ExtenderArgs) -> list[HostPriority]:
        """0..10 by rank: the best node alone gets 10, the next 9, ...; nodes that do not fit get 0."""
        names = list(dict.fromkeys(args.node_names))
        pod = decode_pod(args.pod)
        with self._lock:
            kept = self._decide(pod, names, len(names)).kept
        score = {r.node: max(0, MAX_SCORE - i) for i, r in enumerate(kept)}
        return [HostPriority(n, score.get(n, 0)) for n in names]

    # ---- bind ---------------------------------------------------------------------------------
    def reserve(self, args: ExtenderBindingArgs) -> Assignment | None:
        """Take the pod's reservation on args.node and return it; None when the pod already holds a
        reservation there (a repeated bind: nothing to write). Raises BindRefused."""
        key = args.pod_key
        with self._lock:
            if key in self._holds:
                return self._holds.resend(key, args.node, args.pod_uid)
            store = self._store
            rec = store.pods.get(key)
            if rec is None or rec.pod is None:
                raise BindRefused(f"pod {key} is not a pending GPU pod in the extender's cache")
            if rec.uid and args.pod_uid != rec.uid:
                raise BindRefused(f"pod {key} has uid {rec.uid}, the bind names {args.pod_uid}")
            if args.node not in store.state.index:
                raise BindRefused(f"node {args.node}: {UNKNOWN_NODE}")
            d = self._decide(rec.pod, [args.node], 1)
            if d.error:
                raise BindRefused(d.error)
            if not d.kept:
                ranking = d.ranking
                reason = ranking.unresolvable.get(args.node) or ranking.failed.get(args.node) or "does not fit"
                raise BindRefused(f"node {args.node}: {reason}")
            req = rec.request
            assert req is not None
            chosen = d.kept[0]
            spec = store.state.specs[chosen.row]
            assert spec is not None
            gpus = [(spec.gpus[s].uuid, spec.gpus[s].memory) for s in chosen.gpus]
            now = self.clock()
            try:
                a = build_assignment(req, args.node, self._book.tenants().tenant_of(rec.namespace),
                                     format_time(self.wall()), gpus,
                                     [self._holds.ids_on(args.node, u) for u, _ in gpus])
            except NoFreeDeviceIds as e:
                raise BindRefused(f"node {args.node}: {e}") from None
            taken = self._book.ledger.try_reserve(PodKey(rec.namespace, rec.name), a.tenant, *charge_of(a))
            if not taken.ok:
                raise BindRefused(taken.reason)
            store.assume(rec, a, rec.uid or args.pod_uid, now)
            return a

    def confirm(self, key: str, assignment: Assignment | None = None) -> None:
        """The Binding call returned success: the pod is bound with this reservation, whatever the watch
        says (or does not say yet). Never expired by the assume TTL from now on; the reservation ends
        when the pod ends, is gone or is recreated (seen by the watch)."""
        with self._lock:
            self._holds.confirm(key, assignment)

    def binding_failed(self, key: str, assignment: Assignment, error: BaseException) -> str:
        """The Binding call for `assignment` raised `error`; returns the bind's answer (an Error text).

        A definite refusal from the API server (4xx, and 429/5xx it answered) releases the reservation
        and the quota at once, unless an earlier Binding for it may still land. An unknown outcome
        (timeout, dropped connection, the server's own 504) keeps the reservation assumed: the watch
        resolves it (the pod bound, gone, recreated), a retry re-sends the same Binding, or it is
        dropped `assume_ttl_s` after this attempt ended."""
        node = assignment.node
        unknown = outcome_unknown(error)
        with self._lock:
            what = self._holds.failed(key, assignment, unknown=unknown, now=self.clock())
            if what is Failure.RELEASE:
                self._store.release(key)
        ttl = f"{self.config.assume_ttl_s:g}"
        if what is Failure.UNKNOWN:
            return (f"binding pod {key} to {node}: outcome unknown ({error}); its reservation on {node} is kept "
                    f"until the pod is seen bound or gone, a retry sends the same Binding, or {ttl} s pass")
        if what is Failure.MAY_LAND:
            return (f"binding pod {key} to {node}: {error}; another Binding of this reservation may still land, "
                    f"so the reservation on {node} is kept (at most {ttl} s after it ends)")
        return f"binding pod {key} to {node}: {error}"

    def release(self, key: str, assignment: Assignment) -> None:
        """This attempt's Binding was not sent, or was refused: undo the reservation (only if it is
        still that reservation, and no other Binding of it may still land)."""
        with self._lock:
            if self._holds.abandon(key, assignment):
                self._store.release(key)

    # ---- quota ---------------------------------------------------------------------------------
    def quota_status_writes(self, last_write: Mapping[str, float]) -> list[tuple[str, dict[str, Any]]]:
        """TenantQuota statuses due for a write: changed, and not written in the last min interval
        (`last_write`: when each was last written, read from `self.clock`)."""
        now = self.clock()
        wall = self.wall()  # lastTransitionTime is written into the object
        with self._lock:
            return self._book.status_writes(last_write, now, wall)

    def tenant_usage(self) -> list[TenantSummary]:
        """One consistent view of every tenant worth a metric series (extender/metrics.py), sorted."""
        with self._lock:
            return self._book.usage()

