"""The extender's in-memory view of the cluster and its three decisions: filter, prioritize, reserve.

One `Scheduler` owns a `ClusterState` and the slim records it was built from. Cache feeders
(watch threads, a snapshot file) call the `apply_*` methods; the HTTP handlers call `filter`,
`prioritize` and `reserve`, then `confirm` or `binding_failed`. Every method takes the same short lock
and never does I/O under it: the Binding write happens outside, between `reserve` and its outcome.

A reservation's life (docs/extender.md "Bind"): taken at `reserve` (assumed: the Binding is in
flight); confirmed when the Binding call returns success (kube-scheduler never expires a pod whose
binding finished, neither do we); released at once on a definite refusal from the API server; kept
assumed when the outcome is unknown (timeout, dropped connection) until the watch resolves it (the
pod bound, gone or recreated), a retry re-sends the same Binding, or `assume_ttl_s` passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.extender import (
    MAX_SCORE,
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderFilterResult,
    HostPriority,
)
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_PHASE,
    DEFAULT_NAMESPACE,
    PHASE_ALLOCATING,
    TAINT_GPU_FAILED,
)
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core import confusable, zone
from fracgpu.core.cluster import ClusterState, GpuUse, IntArray, NodeSpec, PodUse
from fracgpu.core.fit import FitOptions, reason_unhealthy_room
from fracgpu.core.inventory import split_device_id
from fracgpu.core.quota import (
    PendingPod,
    PodKey,
    QuotaConfig,
    QuotaLedger,
    Usage,
    charge_of,
    merge_conditions,
    should_write_status,
)
from fracgpu.core.ranking import Ranked, Ranking, Weighted, rank
from fracgpu.core.registry import DEFAULT_POLICIES, parse_policies, workload_histograms
from fracgpu.core.request import GpuRequest, RequestError, parse_pod_request
from fracgpu.core.reservation import NoFreeDeviceIds, build_assignment
from fracgpu.core.snapshot import (
    NODE_NO_HEARTBEAT,
    NODE_STALE_HEARTBEAT,
    NamespaceRecord,
    NodeRecord,
    PodRecord,
    node_priority,
    node_unreadable_reservation,
)
from fracgpu.core.tenant import UNLIMITED, Limits, NamespaceInfo, Tenants, tq_tenant
from fracgpu.core.workload import shape_of
from fracgpu.kube.errors import outcome_unknown

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # seconds; which origin is the caller's (see Scheduler)

UNKNOWN_NODE = "node is not in the fracgpu extender's cache yet"
NOT_READY = "the fracgpu extender's cache is not synced yet"
NO_GPU_REQUEST = "the pod asks for no fracgpu.io/vgpu-core"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    k: int = 1  # filter keeps the best k nodes
    policies: str = DEFAULT_POLICIES
    heartbeat_stale_s: float = 40.0  # 0 = do not judge heartbeats (snapshot mode)
    stuck_allocating_s: float = confusable.DEFAULT_STUCK_TIMEOUT_S
    # a bind whose outcome is unknown (timeout, dropped connection) and that nothing resolved is
    # dropped after this; keep it longer than the API server's request timeout (60 s by default)
    assume_ttl_s: float = 120.0
    namespace: str = DEFAULT_NAMESPACE
    taint_key: str = TAINT_GPU_FAILED
    max_pods_per_gpu: int = 0
    check_host: bool = False  # kube-scheduler's own filters check CPU/RAM before the extender runs
    refresh_s: float = 1.0  # how often staleness is re-judged at most
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    default_limits: Limits = UNLIMITED  # the cluster-wide default quota of a tenant without one

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.heartbeat_stale_s < 0 or self.stuck_allocating_s <= 0:
            raise ValueError("heartbeat staleness must be >= 0 and the allocating timeout > 0")
        parse_policies(self.policies)  # raises PolicyConfigError with the reason


class BindRefused(Exception):
    """The pod cannot be reserved on the node; the message is returned to kube-scheduler."""


@dataclass(frozen=True, slots=True)
class GpuHold:
    uuid: str
    cores: int
    memory: int
    ids: int  # bit k set = device id <uuid>::<k> reserved


@dataclass(slots=True)
class _Held:
    """A pod's reservation, compact: 40,000 pods must not cost 40,000 x 50 device-id strings."""

    node: str
    gpus: tuple[GpuHold, ...]
    uid: str = ""  # the pod instance it is for ("" = not known)
    # set while the outcome of our Binding is not known: in flight, or it ended without a definite
    # answer (then the time it ended: the assume TTL counts from there)
    assumed_at: float | None = None
    assignment: Assignment | None = None  # kept only while assumed (identifies the bind; a retry re-sends it)
    inflight: int = 0  # Binding requests for this reservation running now
    unknown: bool = False  # an earlier Binding for it ended with an unknown outcome (it may still land)
    ours: bool = False  # taken by our bind, and the watch has not shown the pod bound yet


def _holds(a: Assignment) -> tuple[GpuHold, ...]:
    out: list[GpuHold] = []
    for g in a.gpus:
        mask = 0
        for i in g.device_ids:
            parsed = split_device_id(i)
            if parsed is not None:
                mask |= 1 << parsed[1]
        out.append(GpuHold(g.uuid, g.cores, g.memory, mask))
    return tuple(out)


_NO_LABELS: Mapping[str, str] = {}


def _slim(rec: PodRecord) -> PodRecord:
    """What the cache keeps of a pod: bound pods drop their parsed reservation (the hold has it) and,
    unless they are in a zone group, their parsed request."""
    if not rec.node:
        return replace(rec, assignment=None, labels=_NO_LABELS)
    keep = rec.request if rec.request is not None and rec.request.group else None
    return replace(rec, assignment=None, request=keep, raw=None, labels=_NO_LABELS)


@dataclass(slots=True)
class _Decision:
    """What `_decide` found for one pod: the ranking with every refusal filled in, the nodes kept,
    and a pod-level error ("" when the request is valid)."""

    ranking: Ranking
    kept: list[Ranked]
    error: str = ""
    req: GpuRequest | None = None
    # nodes where the pod fits but that were refused only because a confusable pod is still allocating
    waiting: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Stats:
    nodes: int = 0
    pods: int = 0
    reservations: int = 0
    assumed: int = 0  # binds whose outcome is not known yet (in flight or unknown)
    awaiting_watch: int = 0  # our binds the pod watch has not shown yet (snapshot mode: all of them)
    unreadable: int = 0  # bound pods whose fracgpu.io/assigned cannot be read (their nodes take no new pod)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        self.policies: tuple[Weighted, ...] = parse_policies(config.policies)
        # the rolling workload histograms the fragmentation-aware policies follow: fed with every
        # reservation that enters the cache (our binds, and bound pods seen by list/watch), once
        self.histograms = workload_histograms(self.policies)
        self.observed = 0
        self.opts = FitOptions(check_host=config.check_host, max_pods_per_gpu=config.max_pods_per_gpu)
        self.lock = threading.Lock()
        self.state = ClusterState()
        self.nodes: dict[str, NodeRecord] = {}
        self.pods: dict[str, PodRecord] = {}
        self.beats: dict[str, float] = {}
        # (node, GPU uuid) -> bit mask of device indices reserved. A GPU is (node, uuid): UUIDs are
        # unique on real hardware but not in a simulated fleet or a cloned VM image
        self.held_ids: dict[tuple[str, str], int] = {}
        self.held: dict[str, _Held] = {}  # pod key -> its reservation
        self.assumed: set[str] = set()  # pods whose Binding's outcome is not known yet
        # bound pods whose fracgpu.io/assigned cannot be read: their nodes fail closed (no new pods)
        self.unreadable: dict[str, set[str]] = {}  # node -> pod keys
        self._unreadable_on: dict[str, str] = {}  # pod key -> node
        # what their tenants are charged (their requests); re-charged when tenants change, since the
        # tenant comes from the namespace here, not from a reservation written at bind
        self._unreadable_charge: dict[str, tuple[int, int]] = {}  # pod key -> (cores, memory)
        self.allocating: dict[str, dict[str, confusable.Reservation]] = {}  # node -> pod -> reservation
        self._allocating_on: dict[str, str] = {}  # pod -> node, the reverse of `allocating`
        self.groups: dict[tuple[str, str], set[str]] = {}  # (namespace, group) -> pod keys
        self.namespaces: dict[str, NamespaceRecord] = {}
        self.quotas: dict[str, TenantQuota] = {}
        self._tenants: Tenants | None = None
        self.ledger = QuotaLedger(self.tenants().limits, config.quota)
        self._fits_cache: dict[str, tuple[int, bool]] = {}
        self._node_gen = 0  # bumped when a node appears or goes (rows move); keys the lookup cache
        self._rows_cache: tuple[tuple[str, ...], int, IntArray, list[str]] | None = None
        self._last_refresh = float("-inf")
        self.synced = False

    # ---- cache feeding ------------------------------------------------------------------------
    def apply_node(self, rec: NodeRecord) -> None:
        with self.lock:
            if rec.name not in self.state.index:
                self._node_gen += 1
            self.nodes[rec.name] = rec
            gpus = rec.inventory.gpus if rec.inventory is not None else ()
            spec = NodeSpec(
                name=rec.name,
                gpus=gpus,
                cpu_milli=rec.cpu_milli,
                memory_bytes=rec.memory_bytes,
                zone=rec.zone,
                labels=rec.labels,
                unusable=self._unusable(rec, self.clock()),
                priority=node_priority(rec.name),
            )
            self.state.upsert_node(spec)

    def delete_node(self, name: str) -> None:
        with self.lock:
            self.nodes.pop(name, None)
            self._node_gen += 1
            if name in self.state.index:
                for key in self.state.pods_on(name):
                    self._release_ids(key)
                self.state.remove_node(name)
            for key in list(self.allocating.get(name, {})):
                self._unset_allocating(key)

    def apply_heartbeat(self, node: str) -> None:
        """A Lease renewal seen now (the extender's own receive time, no trust in the writer's clock)."""
        with self.lock:
            now = self.clock()
            self.beats[node] = now
            rec = self.nodes.get(node)
            if rec is not None:
                self.state.set_unusable(node, self._unusable(rec, now))

    def delete_heartbeat(self, node: str) -> None:
        with self.lock:
            self.beats.pop(node, None)
            self._rejudge(node)

    def apply_namespace(self, rec: NamespaceRecord) -> None:
        with self.lock:
            self.namespaces[rec.name] = rec
            self._tenants = None

    def delete_namespace(self, name: str) -> None:
        with self.lock:
            self.namespaces.pop(name, None)
            self._tenants = None

    def apply_tenant_quota(self, quota: TenantQuota) -> None:
        with self.lock:
            self.quotas[quota.name] = quota
            self._tenants = None

    def delete_tenant_quota(self, name: str) -> None:
        with self.lock:
            self.quotas.pop(name, None)
            self._tenants = None

    def apply_pod(self, rec: PodRecord) -> None:
        with self.lock:
            self._apply_pod(rec)

    def delete_pod(self, key: str) -> None:
        with self.lock:
            self._forget_pod(key)

    def replace_all(
        self,
        *,
        nodes: Iterable[NodeRecord] | None = None,
        pods: Iterable[PodRecord] | None = None,
    ) -> None:
        """A relist: objects not in the new list are gone (assumed binds survive until confirmed)."""
        with self.lock:
            if nodes is not None:
                fresh = {r.name: r for r in nodes}
                for name in [n for n in self.nodes if n not in fresh]:
                    self._node_gen += 1
                    self.nodes.pop(name, None)
                    for key in self.state.pods_on(name):
                        self._release_ids(key)
                    self.state.remove_node(name)
                for rec in fresh.values():
                    self.nodes[rec.name] = rec
            if pods is not None:
                fresh_pods = {r.key: r for r in pods}
                for key in [k for k in self.pods if k not in fresh_pods]:
                    held = self.held.get(key)
                    if held is not None and held.assumed_at is not None:
                        continue
                    self._forget_pod(key)
                for prec in fresh_pods.values():
                    self._apply_pod(prec)
        if nodes is not None:
            for rec in list(self.nodes.values()):
                self.apply_node(rec)

    def mark_synced(self) -> None:
        with self.lock:
            self.synced = True

    # ---- pods (lock held) ---------------------------------------------------------------------
    def _apply_pod(self, rec: PodRecord) -> None:
        key = rec.key
        if rec.finished:
            self._forget_pod(key)
            return
        held = self.held.get(key)
        if held is not None and held.uid and rec.uid and held.uid != rec.uid:
            # the pod was deleted and created again under its name: the reservation was the old pod's
            # (a Binding carries the uid as a precondition, so ours cannot land on the new pod)
            self._drop_charge(key)
            held = None
        if held is not None and held.ours and not rec.node:
            # an event from before our Binding landed, or while its outcome is unknown: keep the
            # reservation (a bound pod never becomes unbound), do not charge twice
            self.pods[key] = _bound(_slim(rec), held.node)
            return
        if not rec.wants_gpu and rec.node not in self.nodes:
            # a CPU pod on a node fracgpu does not manage: not needed
            self._forget_pod(key)
            return
        previous = self.pods.get(key)
        self.pods[key] = _slim(rec)
        if previous is not None and previous.request is not None and previous.request.group:
            self.groups.get((previous.namespace, previous.request.group), set()).discard(key)
        if not rec.node:
            self._drop_charge(key)
            return
        if held is not None and held.node != rec.node:
            # bound to another node than the one we reserved: our Binding did not land (nodeName is final)
            self._drop_charge(key)
            held = None
        gpus: tuple[GpuUse, ...] = ()
        reservation: confusable.Reservation | None = None
        unreadable = False
        if rec.assignment is not None and rec.assignment.node == rec.node:
            a = rec.assignment
            if key not in self.held:  # first sight of this reservation (ours was observed at reserve)
                self._observe(rec.cpu_milli, a)
            self._release_ids(key)
            hold = _Held(rec.node, _holds(a), uid=rec.uid)
            self._take_ids(key, hold)
            gpus = tuple(GpuUse(g.uuid, g.cores, g.memory) for g in hold.gpus)
            pk = PodKey(rec.namespace, rec.name)
            self.ledger.charge(pk, a.tenant, *charge_of(a))
            self.ledger.dequeue(pk)
            if rec.gpu_phase == PHASE_ALLOCATING:
                reservation = self._allocating_from(key, a)
        elif held is not None:
            # bound by us, the watch shows the node but not (yet) the annotation: keep what we reserved
            gpus = tuple(GpuUse(g.uuid, g.cores, g.memory) for g in held.gpus)
            reservation = self._allocating_reservation(key)
        elif rec.assignment_error and rec.wants_gpu:
            # a GPU pod bound with a reservation we cannot read (corrupt, or a newer format): fail
            # closed. The node takes no new GPU pod (which GPUs and device IDs the pod holds is
            # unknown) and the tenant is charged the pod's request (VRAM unset: its share of the
            # node's largest GPU). A pod that asks for no vgpu-core cannot hold GPU devices.
            unreadable = True
            self._charge_unreadable(rec)
        self.state.add_pod(key, PodUse(rec.node, gpus, rec.cpu_milli, rec.memory_bytes))
        self._mark_unreadable(key, rec.node if unreadable else "")
        if reservation is not None:
            self._add_allocating(key, rec.node, reservation)
        else:
            self._unset_allocating(key)
        if rec.request is not None and rec.request.group:
            self.groups.setdefault((rec.namespace, rec.request.group), set()).add(key)

    def _charge_unreadable(self, rec: PodRecord) -> None:
        req = rec.request
        if req is None:  # the request cannot be read either: nothing to charge the tenant with
            return
        node = self.nodes.get(rec.node)
        inv = node.inventory if node is not None else None
        largest = max((g.memory for g in inv.gpus), default=0) if inv is not None else 0
        usage = Usage.for_pod(req.cores, req.memory_on(largest))
        pk = PodKey(rec.namespace, rec.name)
        self._unreadable_charge[rec.key] = (usage.cores, usage.memory)
        self.ledger.charge(pk, self.tenants().tenant_of(rec.namespace), usage.cores, usage.memory)
        self.ledger.dequeue(pk)

    def _mark_unreadable(self, key: str, node: str) -> None:
        """Record on which node (none: "") a pod holds an unreadable reservation; re-judge the nodes."""
        old = self._unreadable_on.get(key, "")
        if old == node:
            return
        if old:
            del self._unreadable_on[key]
            if not node:
                self._unreadable_charge.pop(key, None)
            left = self.unreadable.get(old)
            if left is not None:
                left.discard(key)
                if not left:
                    del self.unreadable[old]
            self._rejudge(old)
        if node:
            self._unreadable_on[key] = node
            self.unreadable.setdefault(node, set()).add(key)
            self._rejudge(node)

    def _rejudge(self, node: str) -> None:
        rec = self.nodes.get(node)
        if rec is not None:
            self.state.set_unusable(node, self._unusable(rec, self.clock()))

    def _observe(self, cpu_milli: int, a: Assignment) -> None:
        """One more placed pod of this shape for the workload histograms (lock held)."""
        if not self.histograms:
            return
        shape = shape_of(cpu_milli, sum(g.cores for g in a.gpus), self.state.units_per_gpu)
        for h in self.histograms:
            h.observe(shape)
        self.observed += 1

    def _take_ids(self, key: str, hold: _Held) -> None:
        self.held[key] = hold
        if hold.assumed_at is not None:
            self.assumed.add(key)
        else:
            self.assumed.discard(key)
        for g in hold.gpus:
            gpu = (hold.node, g.uuid)
            self.held_ids[gpu] = self.held_ids.get(gpu, 0) | g.ids

    def _allocating_from(self, key: str, a: Assignment) -> confusable.Reservation:
        """The confusable-rule record of a reservation the watch shows `allocating`, its start on our
        monotonic clock: the age the annotation's assign time gives is read from the wall clock once,
        at first sight; later events of the same reservation keep that start (a wall-clock step in
        between moves nothing)."""
        res = confusable.Reservation.of(key, a, 0.0)
        known = self._allocating_reservation(key)
        if known is not None and known.gpus == res.gpus and known.counts == res.counts:
            return known
        age = max(0.0, self.wall() - confusable.parse_time(a.assigned_at))  # unreadable: as old as the epoch
        return replace(res, assigned_at=self.clock() - age)

    def _allocating_reservation(self, key: str) -> confusable.Reservation | None:
        node = self._allocating_on.get(key)
        return self.allocating.get(node, {}).get(key) if node is not None else None

    def _add_allocating(self, key: str, node: str, res: confusable.Reservation) -> None:
        self._unset_allocating(key)
        self.allocating.setdefault(node, {})[key] = res
        self._allocating_on[key] = node

    def _unset_allocating(self, key: str) -> None:
        node = self._allocating_on.pop(key, None)
        if node is None:
            return
        on = self.allocating.get(node)
        if on is not None:
            on.pop(key, None)
            if not on:
                del self.allocating[node]

    def _drop_charge(self, key: str) -> None:
        self.state.remove_pod(key)
        self._release_ids(key)
        self._unset_allocating(key)
        self._mark_unreadable(key, "")
        self.ledger.release(_pod_key(key))

    def _forget_pod(self, key: str) -> None:
        rec = self.pods.pop(key, None)
        self._drop_charge(key)
        self.ledger.dequeue(_pod_key(key))
        if rec is not None and rec.request is not None and rec.request.group:
            self.groups.get((rec.namespace, rec.request.group), set()).discard(key)

    def _release_ids(self, key: str) -> None:
        held = self.held.pop(key, None)
        self.assumed.discard(key)
        if held is None:
            return
        for g in held.gpus:
            gpu = (held.node, g.uuid)
            left = self.held_ids.get(gpu, 0) & ~g.ids
            if left:
                self.held_ids[gpu] = left
            else:
                self.held_ids.pop(gpu, None)

    # ---- node usability (lock held) -----------------------------------------------------------
    def _unusable(self, rec: NodeRecord, now: float) -> str:
        static = rec.unusable(self.config.taint_key)
        if static:
            return static
        bad = self.unreadable.get(rec.name)
        if bad:
            return node_unreadable_reservation(bad)
        if self.config.heartbeat_stale_s <= 0:
            return ""
        seen = self.beats.get(rec.name)
        if seen is None:
            return NODE_NO_HEARTBEAT
        if now - seen > self.config.heartbeat_stale_s:
            return NODE_STALE_HEARTBEAT
        return ""

    def _refresh(self, now: float) -> None:
        """Re-judge heartbeats and expire assumed binds, at most every refresh_s."""
        if now - self._last_refresh < self.config.refresh_s:
            return
        self._last_refresh = now
        if self.config.heartbeat_stale_s > 0:
            for name, rec in self.nodes.items():
                self.state.set_unusable(name, self._unusable(rec, now))
        for key in list(self.assumed):
            held = self.held[key]
            if (held.inflight == 0 and held.assumed_at is not None
                    and now - held.assumed_at > self.config.assume_ttl_s):
                # a Binding of unknown outcome that nothing resolved (the watch never showed the pod
                # bound, no retry landed): the write was lost; give the share back. A Binding in
                # flight is never expired: the writer's timeout ends it first.
                self._release(key)

    def tenants(self) -> Tenants:
        if self._tenants is None:
            infos = [NamespaceInfo(n.name, n.labels, n.annotations) for n in self.namespaces.values()]
            self._tenants = Tenants(infos, self.quotas.values(), self.config.default_limits)
            if hasattr(self, "ledger"):
                self.ledger.set_limits(self._tenants.limits)
                for key, (cores, memory) in self._unreadable_charge.items():
                    pk = _pod_key(key)
                    self.ledger.charge(pk, self._tenants.tenant_of(pk.namespace), cores, memory)
        return self._tenants

    # ---- decisions ----------------------------------------------------------------------------
    def _zone_rule(self, key: str, namespace: str, created: str, req: GpuRequest, tenant: str) -> zone.ZoneRule:
        members: list[zone.GroupMember] = []
        if req.group:
            for other in self.groups.get((namespace, req.group), ()):
                rec = self.pods.get(other)
                if rec is None or not rec.node or other == key or rec.request is None:
                    continue
                node = self.nodes.get(rec.node)
                members.append(zone.GroupMember(other, rec.created, rec.request.zone_policy,
                                                node.zone if node is not None else ""))
        return zone.zone_rule(key, created, req.zone_policy, req.group, members, tenant=tenant,
                              allowed_zones=self.tenants().allowed_zones(tenant))

    def _decide(
        self, pod: Mapping[str, Any], names: Sequence[str], want: int, *, admit: bool = False
    ) -> _Decision:
        """Rank `names` for the pod and keep the best `want` that pass the zone and confusable rules;
        with `admit`, the tenant's quota and queue order too (a refused pod joins its tenant's queue).
        Lock held.
        """
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        key = f"{namespace}/{meta.get('name')}"
        empty = Ranking([], {}, {}, [])
        try:
            req = parse_pod_request(pod)
        except RequestError as e:
            return _Decision(empty, [], f"invalid GPU request: {e}")
        if req is None:
            return _Decision(empty, [], NO_GPU_REQUEST)
        now = self.clock()
        self._refresh(now)
        held = self.held.get(key)
        if (held is not None and held.assumed_at is not None
                and (not held.uid or str(meta.get("uid") or held.uid) == held.uid)):
            # the pod holds a reservation whose Binding's outcome is unknown (kube-scheduler retries
            # after our Error): only that node, where the bind re-sends the very same Binding
            row = self.state.index.get(held.node)
            reason = reason_already_reserved(key, held.node)
            refused = {n: reason for n in names if n != held.node}
            kept_held = [Ranked(held.node, row, 0.0, ())] if row is not None and held.node in names else []
            return _Decision(Ranking([], {}, refused, []), kept_held)
        tenant = self.tenants().tenant_of(namespace)
        rule = self._zone_rule(key, namespace, str(meta.get("creationTimestamp") or ""), req, tenant)
        zone_refused: dict[str, str] = {}
        candidates = list(names)
        if rule.active:
            candidates = []
            for n in names:
                rec = self.nodes.get(n)
                reason = zone.check_static(rule, rec.zone) if rec is not None else ""
                if reason:
                    zone_refused[n] = reason
                else:
                    candidates.append(n)
        limit = None if rule.counts is not None else want + len(self.allocating)
        rows, unknown = self._rows_of(candidates)
        ranking = rank(self.state, req, self.policies, opts=self.opts, limit=limit, rows=rows)
        ranking.unknown = unknown
        ranking.unresolvable.update(zone_refused)
        ranked = ranking.ranked
        if rule.counts is not None:
            zones_ok = zone.spread_zones(rule, (self._zone_of(r.node) for r in ranked))
            if zones_ok is not None:
                keep = []
                for r in ranked:
                    if self._zone_of(r.node) in zones_ok:
                        keep.append(r)
                    else:
                        ranking.unresolvable[r.node] = zone.reason_spread(rule)
                ranked = keep
        kept: list[Ranked] = []
        waiting: list[str] = []
        counts = frozenset(c.cores for c in req.containers if c.cores > 0)
        for r in ranked:
            if len(kept) >= want:
                break
            if self.allocating.get(r.node) and self._confused(key, req, r, counts, now):
                ranking.unresolvable[r.node] = confusable.reason_confusable(counts)
                waiting.append(r.node)
                continue
            kept.append(r)
        if admit:
            mem = req.memory
            if mem is None and kept:
                spec = self.state.specs[kept[0].row]
                assert spec is not None
                mem = req.memory_on(spec.gpus[kept[0].gpus[0]].memory)
            if mem is not None:
                prio = pod.get("spec", {}).get("priority")
                pending = PendingPod(
                    PodKey(namespace, str(meta.get("name"))), tenant, Usage.for_pod(req.cores, mem),
                    prio if isinstance(prio, int) and not isinstance(prio, bool) else 0,
                    confusable.parse_time(str(meta.get("creationTimestamp") or "")),
                )
                out = self.ledger.admit(pending, now, self._fits_somewhere)
                if not out.ok:
                    return _Decision(Ranking([], {}, {n: out.reason for n in names}, []), [])
        return _Decision(ranking, kept, req=req, waiting=waiting)

    def _fits_somewhere(self, pk: PodKey) -> bool:
        """Does a queued pod fit some node now? Cached per cluster-state version."""
        key = str(pk)
        hit = self._fits_cache.get(key)
        if hit is not None and hit[0] == self.state.version:
            return hit[1]
        rec = self.pods.get(key)
        ok = False
        if rec is not None and rec.request is not None and not rec.node:
            ok = bool(rank(self.state, rec.request, self.policies, opts=self.opts, limit=1).ranked)
        if len(self._fits_cache) > 10_000:
            self._fits_cache.clear()
        self._fits_cache[key] = (self.state.version, ok)
        return ok

    def _rows_of(self, names: Sequence[str]) -> tuple[IntArray, list[str]]:
        """Rows of the named nodes and the names not known; the last lookup is cached, since
        kube-scheduler sends the same list (every node) on every filter."""
        key = tuple(names)
        small = len(key) <= 64  # binds and short lists: not worth evicting the big list's entry
        cached = self._rows_cache
        if not small and cached is not None and cached[1] == self._node_gen and cached[0] == key:
            return cached[2], cached[3]
        index = self.state.index
        found = np.fromiter((index.get(n, -1) for n in key), dtype=np.int64, count=len(key))
        missing = found < 0
        unknown = [n for n, m in zip(key, missing, strict=True) if m] if missing.any() else []
        rows: IntArray = found[~missing]
        if not small:
            self._rows_cache = (key, self._node_gen, rows, unknown)
        return rows, list(unknown)

    def _zone_of(self, node: str) -> str:
        rec = self.nodes.get(node)
        return rec.zone if rec is not None else ""

    def _confused(self, key: str, req: GpuRequest, r: Ranked, counts: frozenset[int], now: float) -> bool:
        spec = self.state.specs[r.row]
        assert spec is not None
        gpus = tuple(sorted((spec.gpus[s].uuid, req.memory_on(spec.gpus[s].memory)) for s in r.gpus))
        mine = confusable.Reservation(key, gpus, counts, now)
        others = self.allocating.get(r.node, {}).values()
        return confusable.blocker(mine, others, now, self.config.stuck_allocating_s) is not None

    def filter(self, args: ExtenderArgs) -> ExtenderFilterResult:
        """The filter answer. Two refusals that clear within seconds are answered as an `Error`, not
        as failed nodes: the cache not synced yet, and "no node now, because a confusable pod is
        still allocating on the nodes that fit". kube-scheduler parks a pod whose nodes an extender
        failed until some cluster event (a pod's annotation changing is none) or for up to 5 min;
        an Error sends it to its backoff queue and it is retried after 1-10 s (docs/extender.md,
        "Why a still-allocating refusal is an error")."""
        names = list(dict.fromkeys(args.node_names))  # each candidate once, with one outcome
        with self.lock:
            if not self.synced:
                return ExtenderFilterResult(error=NOT_READY)
            d = self._decide(args.pod, names, self.config.k, admit=True)
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

    def _log_unhealthy_room(self, d: _Decision) -> None:
        """Name, per node, the unhealthy GPUs that would have room: the refusal itself carries only
        the pod's numbers, the same on every node (lock held)."""
        if d.req is None or not log.isEnabledFor(logging.DEBUG):
            return
        text = reason_unhealthy_room(d.req)
        for node, why in d.ranking.failed.items():
            rec = self.nodes.get(node)
            if why != text or rec is None or rec.inventory is None:
                continue
            bad = [f"{g.uuid} ({g.reason or 'unhealthy'})" for g in rec.inventory.gpus if not g.healthy]
            log.debug("filter node=%s refusal=%r unhealthy_gpus=%s", node, why, ", ".join(bad))

    def prioritize(self, args: ExtenderArgs) -> list[HostPriority]:
        """0..10 by rank: the best node alone gets 10, the next 9, ...; nodes that do not fit get 0."""
        names = list(dict.fromkeys(args.node_names))
        with self.lock:
            kept = self._decide(args.pod, names, len(names)).kept
        score = {r.node: max(0, MAX_SCORE - i) for i, r in enumerate(kept)}
        return [HostPriority(n, score.get(n, 0)) for n in names]

    # ---- bind ---------------------------------------------------------------------------------
    def reserve(self, args: ExtenderBindingArgs) -> Assignment | None:
        """Take the pod's reservation on args.node and return it; None when the pod already holds a
        reservation there (a repeated bind: nothing to write). Raises BindRefused."""
        key = args.pod_key
        with self.lock:
            held = self.held.get(key)
            if held is not None:
                if held.node != args.node:
                    raise BindRefused(f"pod {key} is already reserved on node {held.node}")
                if held.uid and args.pod_uid != held.uid:
                    raise BindRefused(f"pod {key} is reserved on node {held.node} for uid {held.uid}, the bind "
                                      f"names uid {args.pod_uid}: a recreated pod is placed once the old one is gone")
                if held.assumed_at is None:
                    return None  # known bound: a repeated bind is idempotent
                # the outcome of our Binding is not known (in flight, or it timed out): send the very
                # same Binding again; it lands once (a second one is a 409 the writer knows as its own)
                assert held.assignment is not None
                held.inflight += 1
                return held.assignment
            rec = self.pods.get(key)
            if rec is None or rec.raw is None:
                raise BindRefused(f"pod {key} is not a pending GPU pod in the extender's cache")
            if rec.uid and args.pod_uid != rec.uid:
                raise BindRefused(f"pod {key} has uid {rec.uid}, the bind names {args.pod_uid}")
            if args.node not in self.state.index:
                raise BindRefused(f"node {args.node}: {UNKNOWN_NODE}")
            d = self._decide(rec.raw, [args.node], 1)
            if d.error:
                raise BindRefused(d.error)
            kept = d.kept
            if not kept:
                ranking = d.ranking
                reason = ranking.unresolvable.get(args.node) or ranking.failed.get(args.node) or "does not fit"
                raise BindRefused(f"node {args.node}: {reason}")
            req = rec.request
            assert req is not None
            chosen = kept[0]
            spec = self.state.specs[chosen.row]
            assert spec is not None
            gpus = [(spec.gpus[s].uuid, spec.gpus[s].memory) for s in chosen.gpus]
            now = self.clock()
            try:
                a = build_assignment(
                    req,
                    args.node,
                    self.tenants().tenant_of(rec.namespace),
                    rfc3339(self.wall()),
                    gpus,
                    [self.held_ids.get((args.node, u), 0) for u, _ in gpus],
                )
            except NoFreeDeviceIds as e:
                raise BindRefused(f"node {args.node}: {e}") from None
            taken = self.ledger.try_reserve(PodKey(rec.namespace, rec.name), a.tenant, *charge_of(a))
            if not taken.ok:
                raise BindRefused(taken.reason)
            self._take_ids(key, _Held(args.node, _holds(a), uid=rec.uid or args.pod_uid, assumed_at=now,
                                      assignment=a, inflight=1, ours=True))
            self._observe(rec.cpu_milli, a)
            uses = tuple(GpuUse(g.uuid, g.cores, g.memory) for g in a.gpus)
            self.state.add_pod(key, PodUse(args.node, uses, rec.cpu_milli, rec.memory_bytes))
            self._add_allocating(key, args.node, confusable.Reservation.of(key, a, now))
            if req.group:
                self.groups.setdefault((rec.namespace, req.group), set()).add(key)
            # the pod record now says where it is going (zone rules count it at once)
            self.pods[key] = _bound(rec, args.node)
            return a

    def confirm(self, key: str, assignment: Assignment | None = None) -> None:
        """The Binding call returned success: the pod is bound with this reservation, whatever the watch
        says (or does not say yet). Never expired by the assume TTL from now on; the reservation ends
        when the pod ends, is gone or is recreated (seen by the watch)."""
        with self.lock:
            held = self.held.get(key)
            if held is None or (assignment is not None and held.assignment is not assignment):
                return
            held.inflight = max(0, held.inflight - 1)
            held.assumed_at = None
            held.assignment = None
            held.unknown = False
            self.assumed.discard(key)

    def binding_failed(self, key: str, assignment: Assignment, error: BaseException) -> str:
        """The Binding call for `assignment` raised `error`; returns the bind's answer (an Error text).

        A definite refusal from the API server (4xx, and 429/5xx it answered) releases the reservation
        and the quota at once, unless an earlier Binding for it may still land. An unknown outcome
        (timeout, dropped connection, the server's own 504) keeps the reservation assumed: the watch
        resolves it (the pod bound, gone, recreated), a retry re-sends the same Binding, or it is
        dropped `assume_ttl_s` after this attempt ended."""
        unknown = outcome_unknown(error)
        node = assignment.node
        with self.lock:
            held = self.held.get(key)
            if held is None or held.assignment is not assignment:
                return f"binding pod {key} to {node}: {error}"
            held.inflight = max(0, held.inflight - 1)
            if unknown:
                held.unknown = True
                held.assumed_at = self.clock()
                self.assumed.add(key)
            elif not held.unknown and not held.inflight:
                self._release(key)
                return f"binding pod {key} to {node}: {error}"
            ttl = f"{self.config.assume_ttl_s:g}"
        if unknown:
            return (f"binding pod {key} to {node}: outcome unknown ({error}); its reservation on {node} is kept "
                    f"until the pod is seen bound or gone, a retry sends the same Binding, or {ttl} s pass")
        return (f"binding pod {key} to {node}: {error}; another Binding of this reservation may still land, "
                f"so the reservation on {node} is kept (at most {ttl} s after it ends)")

    def release(self, key: str, assignment: Assignment) -> None:
        """This attempt's Binding was not sent, or was refused: undo the reservation (only if it is
        still that reservation, and no other Binding of it may still land)."""
        with self.lock:
            held = self.held.get(key)
            if held is None or held.assignment is not assignment:
                return
            held.inflight = max(0, held.inflight - 1)
            if not held.unknown and not held.inflight:
                self._release(key)

    def _release(self, key: str) -> None:
        self._drop_charge(key)
        rec = self.pods.get(key)
        if rec is not None:
            self.pods[key] = _unbound(rec)

    def quota_status_writes(self, last_write: Mapping[str, float]) -> list[tuple[str, dict[str, Any]]]:
        """TenantQuota statuses due for a write: changed, and not written in the last min interval
        (`last_write`: when each was last written, read from `self.clock`)."""
        now = self.clock()
        wall = self.wall()  # lastTransitionTime is written into the object
        out: list[tuple[str, dict[str, Any]]] = []
        with self.lock:
            tenants = self.tenants()
            for name, quota in sorted(self.quotas.items()):
                old = quota.status
                conditions = merge_conditions(old.conditions if old is not None else (),
                                              tenants.conditions(name, wall, quota.generation))
                new = self.ledger.status(tq_tenant(name), conditions)
                if should_write_status(old, new, last_write.get(name), now, self.config.quota.status_min_interval):
                    out.append((name, new.to_dict()))
        return out

    def stats(self) -> Stats:
        with self.lock:
            return Stats(
                nodes=len(self.nodes),
                pods=len(self.pods),
                reservations=len(self.held),
                assumed=len(self.assumed),
                awaiting_watch=sum(1 for h in self.held.values() if h.ours),
                unreadable=len(self._unreadable_on),
            )


def reason_already_reserved(key: str, node: str) -> str:
    return f"pod {key} already holds a reservation on node {node}"


RETRY_ALLOCATING = "waiting for a pod still allocating"


def reason_retry_allocating(failed: Mapping[str, str], unresolvable: Mapping[str, str]) -> str:
    """The filter's Error when the only nodes that fit wait for a confusable pod to be allocated:
    every node's reason, grouped as kube-scheduler groups failed nodes, so the event reads the same."""
    counted: dict[str, int] = {}
    for why in (*failed.values(), *unresolvable.values()):
        counted[why] = counted.get(why, 0) + 1
    total = len(failed) + len(unresolvable)
    grouped = ", ".join(f"{n} {why}" for why, n in sorted(counted.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{RETRY_ALLOCATING}: 0/{total} nodes are available: {grouped}"


def binding_annotations(a: Assignment) -> dict[str, str]:
    return {ANN_ASSIGNED: a.to_json(), ANN_PHASE: PHASE_ALLOCATING}


def _pod_key(key: str) -> PodKey:
    namespace, _, name = key.partition("/")
    return PodKey(namespace, name)


def _bound(rec: PodRecord, node: str) -> PodRecord:
    return replace(rec, node=node, gpu_phase=PHASE_ALLOCATING)


def _unbound(rec: PodRecord) -> PodRecord:
    return replace(rec, node="", gpu_phase="")
