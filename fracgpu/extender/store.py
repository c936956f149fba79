"""The object store: the slim records the watches deliver (nodes, heartbeats, pods), the
`ClusterState` the rankings read, and the indexes the decisions look up. Lock held by the caller
(the Scheduler), no I/O.

A pod record changes three books at once: the GPUs it uses (`ClusterState`), its reservation
(`Holds`, the assume state machine) and its tenant's charge (`TenantBook`). `apply_pod` keeps
them in step, kube-scheduler's AddPod / UpdatePod / RemovePod for a cache that also assumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from fracgpu.api import rfc3339
from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.names import LABEL_DRA, PHASE_ALLOCATING
from fracgpu.core import confusable
from fracgpu.core.cluster import ClusterState, GpuUse, IntArray, NodeSpec, PodUse
from fracgpu.core.quota import PodKey, Usage, charge_of
from fracgpu.core.records import (
    NODE_NO_HEARTBEAT,
    NODE_STALE_HEARTBEAT,
    NodeRecord,
    PodRecord,
    node_priority,
    node_unreadable_reservation,
)
from fracgpu.extender.assume import Hold, Holds, gpu_holds
from fracgpu.extender.config import SchedulerConfig
from fracgpu.extender.indexes import Allocating, Groups, Unreadable
from fracgpu.extender.tenants import TenantBook, pod_key

Clock = Callable[[], float]
# a pod placed (cpu milli, its reservation, units per GPU): fed once to the workload histograms
Observe = Callable[[int, Assignment, int], None]

_NO_LABELS: Mapping[str, str] = {}


def _slim(rec: PodRecord) -> PodRecord:
    """What the cache keeps of a pod: bound pods drop their parsed reservation (the hold has it) and,
    unless they are in a zone group, their parsed request."""
    if not rec.node:
        return replace(rec, assignment=None, labels=_NO_LABELS)
    keep = rec.request if rec.request is not None and rec.request.group else None
    return replace(rec, assignment=None, request=keep, pod=None, labels=_NO_LABELS)


def _bound(rec: PodRecord, node: str) -> PodRecord:
    return replace(rec, node=node, gpu_phase=PHASE_ALLOCATING)


def _unbound(rec: PodRecord) -> PodRecord:
    return replace(rec, node="", gpu_phase="")


class Store:
    def __init__(self, config: SchedulerConfig, clock: Clock, wall: Clock, holds: Holds, book: TenantBook,
                 observe: Observe) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.holds = holds
        self.book = book
        self._observe = observe
        self.state = ClusterState()
        self.nodes: dict[str, NodeRecord] = {}
        self.pods: dict[str, PodRecord] = {}
        self.beats: dict[str, float] = {}  # node -> when its plugin's Lease renewal was seen
        self.allocating = Allocating()
        self.unreadable = Unreadable()
        self.groups = Groups()
        self._node_gen = 0  # bumped when a node appears or goes (rows move); keys the lookup cache
        self._rows_cache: tuple[tuple[str, ...], int, IntArray, list[str]] | None = None

    # ---- nodes and heartbeats -----------------------------------------------------------------
    def apply_node(self, rec: NodeRecord) -> None:
        if rec.name not in self.state.index:
            self._node_gen += 1
        self.nodes[rec.name] = rec
        gpus = rec.inventory.gpus if rec.inventory is not None else ()
        self.state.upsert_node(NodeSpec(
            name=rec.name, gpus=gpus, cpu_milli=rec.cpu_milli, memory_bytes=rec.memory_bytes, zone=rec.zone,
            labels=rec.labels, unusable=self.unusable(rec, self.clock()), priority=node_priority(rec.name),
        ))

    def delete_node(self, name: str) -> None:
        self.nodes.pop(name, None)
        self._node_gen += 1
        if name in self.state.index:
            self._remove_node(name)
        for key in list(self.allocating.on(name)):
            self.allocating.unset(key)

    def _remove_node(self, name: str) -> None:
        for key in self.state.pods_on(name):
            self.holds.drop(key)
        self.state.remove_node(name)

    def apply_heartbeat(self, node: str) -> None:
        """A Lease renewal seen now (the extender's own receive time, no trust in the writer's clock)."""
        now = self.clock()
        self.beats[node] = now
        rec = self.nodes.get(node)
        if rec is not None:
            self.state.set_unusable(node, self.unusable(rec, now))

    def delete_heartbeat(self, node: str) -> None:
        self.beats.pop(node, None)
        self.rejudge(node)

    # ---- node usability -----------------------------------------------------------------------
    def unusable(self, rec: NodeRecord, now: float) -> str:
        static = rec.unusable(self.config.taint_key)
        if static:
            return static
        bad = self.unreadable.on(rec.name)
        if bad:
            return node_unreadable_reservation(bad)
        if self.config.heartbeat_stale_s <= 0 or rec.labels.get(LABEL_DRA) == "true":
            # a DRA node's driver writes no Lease: the kubelet deletes its slices when it is gone
            return ""
        seen = self.beats.get(rec.name)
        if seen is None:
            return NODE_NO_HEARTBEAT
        if now - seen > self.config.heartbeat_stale_s:
            return NODE_STALE_HEARTBEAT
        return ""

    def rejudge(self, node: str) -> None:
        rec = self.nodes.get(node)
        if rec is not None:
            self.state.set_unusable(node, self.unusable(rec, self.clock()))

    def rejudge_heartbeats(self, now: float) -> None:
        if self.config.heartbeat_stale_s > 0:
            for name, rec in self.nodes.items():
                self.state.set_unusable(name, self.unusable(rec, now))

    # ---- pods ---------------------------------------------------------------------------------
    def apply_pod(self, rec: PodRecord) -> None:
        key = rec.key
        if rec.finished:
            self.forget_pod(key)
            return
        held = self.holds.get(key)
        if held is not None and held.uid and rec.uid and held.uid != rec.uid:
            # the pod was deleted and created again under its name: the reservation was the old pod's
            # (a Binding carries the uid as a precondition, so ours cannot land on the new pod)
            self._drop(key)
            held = None
        if held is not None and held.ours and not rec.node:
            # an event from before our Binding landed, or while its outcome is unknown: keep the
            # reservation (a bound pod never becomes unbound), do not charge twice
            self.pods[key] = _bound(_slim(rec), held.node)
            return
        if not rec.wants_gpu and rec.node not in self.nodes:
            # a CPU pod on a node fracgpu does not manage: not needed
            self.forget_pod(key)
            return
        previous = self.pods.get(key)
        self.pods[key] = _slim(rec)
        if previous is not None and previous.request is not None and previous.request.group:
            self.groups.discard(previous.namespace, previous.request.group, key)
        if not rec.node:
            self._drop(key)
            return
        if held is not None and held.node != rec.node:
            # bound to another node than the one we reserved: our Binding did not land (nodeName is final)
            self._drop(key)
            held = None
        gpus: tuple[GpuUse, ...] = ()
        reservation: confusable.AllocatingPod | None = None
        unreadable = False
        if rec.assignment is not None and rec.assignment.node == rec.node:
            a = rec.assignment
            if key not in self.holds:  # first sight of this reservation (ours was observed at reserve)
                self._observe(rec.cpu_milli, a, self.state.units_per_gpu)
            hold = Hold(rec.node, gpu_holds(a), uid=rec.uid)
            self.holds.put(key, hold)
            gpus = tuple(GpuUse(g.uuid, g.cores, g.memory) for g in hold.gpus)
            # a reservation read from claims names no tenant: the namespace's, as at bind
            tenant = a.tenant or self.book.tenants().tenant_of(rec.namespace)
            self.book.charge(PodKey(rec.namespace, rec.name), tenant, *charge_of(a))
            if rec.gpu_phase == PHASE_ALLOCATING:
                reservation = self._allocating_from(key, a)
        elif held is not None:
            # bound by us, the watch shows the node but not (yet) the annotation: keep what we reserved
            gpus = tuple(GpuUse(g.uuid, g.cores, g.memory) for g in held.gpus)
            reservation = self.allocating.of(key)
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
            self.allocating.set(key, rec.node, reservation)
        else:
            self.allocating.unset(key)
        if rec.request is not None and rec.request.group:
            self.groups.add(rec.namespace, rec.request.group, key)

    def forget_pod(self, key: str) -> None:
        rec = self.pods.pop(key, None)
        self._drop(key)
        self.book.ledger.dequeue(pod_key(key))
        if rec is not None and rec.request is not None and rec.request.group:
            self.groups.discard(rec.namespace, rec.request.group, key)

    def assume(self, rec: PodRecord, a: Assignment, uid: str, now: float) -> None:
        """Our bind reserved `a` for the pending pod `rec` (its quota is already taken): the pod's
        record says where it is going at once, so the zone rules count it."""
        key = rec.key
        self.holds.assume(key, a, uid, now)
        self._observe(rec.cpu_milli, a, self.state.units_per_gpu)
        uses = tuple(GpuUse(g.uuid, g.cores, g.memory) for g in a.gpus)
        self.state.add_pod(key, PodUse(a.node, uses, rec.cpu_milli, rec.memory_bytes))
        if not rec.claims:  # the device plugin cannot tell same-size pods apart while they allocate
            self.allocating.set(key, a.node, confusable.AllocatingPod.of(key, a, now))
        if rec.request is not None and rec.request.group:
            self.groups.add(rec.namespace, rec.request.group, key)
        self.pods[key] = _bound(rec, a.node)

    def release(self, key: str) -> None:
        """Give back what a reservation of ours took: the pod is pending again."""
        self._drop(key)
        rec = self.pods.get(key)
        if rec is not None:
            self.pods[key] = _unbound(rec)

    def _drop(self, key: str) -> None:
        self.state.remove_pod(key)
        self.holds.drop(key)
        self.allocating.unset(key)
        self._mark_unreadable(key, "")
        self.book.release(key)

    def _charge_unreadable(self, rec: PodRecord) -> None:
        req = rec.request
        if req is None:  # the request cannot be read either: nothing to charge the tenant with
            return
        node = self.nodes.get(rec.node)
        inv = node.inventory if node is not None else None
        largest = max((g.memory for g in inv.gpus), default=0) if inv is not None else 0
        usage = Usage.for_pod(req.cores, req.memory_on(largest))
        self.book.charge_unreadable(rec.key, usage.cores, usage.memory)

    def _mark_unreadable(self, key: str, node: str) -> None:
        changed = self.unreadable.mark(key, node)
        if changed and not node:
            self.book.readable_again(key)
        for name in changed:
            self.rejudge(name)

    def _allocating_from(self, key: str, a: Assignment) -> confusable.AllocatingPod:
        """The confusable-rule record of a reservation the watch shows `allocating`, its start on our
        monotonic clock: the age the annotation's assign time gives is read from the wall clock once,
        at first sight; later events of the same reservation keep that start (a wall-clock step in
        between moves nothing)."""
        res = confusable.AllocatingPod.of(key, a, 0.0)
        known = self.allocating.of(key)
        if known is not None and known.gpus == res.gpus and known.counts == res.counts:
            return known
        age = max(0.0, self.wall() - rfc3339.parse_or_zero(a.assigned_at))  # unreadable: as old as the epoch
        return replace(res, assigned_at=self.clock() - age)

    # ---- lookups ------------------------------------------------------------------------------
    def zone_of(self, node: str) -> str:
        rec = self.nodes.get(node)
        return rec.zone if rec is not None else ""

    def rows_of(self, names: Sequence[str]) -> tuple[IntArray, list[str]]:
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
