"""The DRA side of the extender's cache: ResourceSlices, ResourceClaims and their templates lowered
(``kube.dralowering``, the code of ``core.dralower`` that ``fracgpu simulate`` and ``inspect`` use on a snapshot)
into the records the Scheduler already reads, so that one Scheduler decides for both paths with the same
ranking, quotas, queue and zone rules: a node's pool becomes its inventory, a pod's claims its vgpu request and,
once allocated, its reservation on the pool's node.

Besides feeding the Scheduler, ``DraView`` keeps what the allocator (``draallocator``) reads: the pods whose
claims wait for an allocation, the half-allocated ones, the nodes whose devices fracgpu allocates, and the nodes
where kube-scheduler undid a pod's allocation. Thread-safe: the reflectors feed it, the allocator reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fracgpu.api.v1beta1.dra.resource import ResourceSlice
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.names import DRA_ALLOCATOR_FRACGPU
from fracgpu.core.dralower import LoweredNode, LoweredPod
from fracgpu.core.draslices import device_allocator
from fracgpu.core.nodematch import NodeFacts
from fracgpu.core.records import node_record, pod_record
from fracgpu.extender.scheduler import Scheduler
from fracgpu.kube.dralowering import DraLowering, LoweredPodState, bound_node

Obj = Mapping[str, Any]
Clock = Callable[[], float]

REVOKED_TTL_S = 300.0  # a node whose allocation the scheduler undid is not chosen again for that pod this long


def _allocators(slices: list[Obj]) -> set[str]:
    """Who allocates the devices of a pool's newest generation (the devices' `allocator` attribute)."""
    parsed = []
    for raw in slices:
        try:
            parsed.append(ResourceSlice.from_json(raw))
        except InvalidDocument:
            continue
    newest = max((s.spec.pool.generation for s in parsed), default=0)
    return {device_allocator(d) for s in parsed if s.spec.pool.generation == newest for d in s.spec.devices}


@dataclass(frozen=True, slots=True)
class Waiting:
    """A pod whose fracgpu claims all exist and none is allocated: the allocator's work."""

    key: str
    pod: Obj  # the lowered pod (vgpu request), what the Scheduler decides on
    raw: Obj  # the pod as the API server has it
    claims: tuple[Obj, ...]  # its fracgpu claims, in the pod's order
    problem: str = ""  # why its claims cannot be placed (the pod is told, nothing is allocated)


@dataclass(frozen=True, slots=True)
class Partial:
    """A pod not bound yet with some of its claims allocated and some not (an allocation cut short)."""

    key: str
    allocated: tuple[Obj, ...]


class DraView(DraLowering):
    def __init__(self, scheduler: Scheduler, clock: Clock) -> None:
        super().__init__()
        self._scheduler = scheduler
        self._clock = clock
        self._ours: set[str] = set()  # nodes whose every device says allocator: fracgpu
        self._facts: list[NodeFacts] | None = None  # nodes() as last built; None after a node change
        self._waiting: set[str] = set()  # pods the allocator has to place (Waiting)
        self._partial: set[str] = set()  # pods half-allocated (Partial)
        self._clearing: set[str] = set()  # claims the allocator is clearing itself
        self._revoked: dict[str, dict[str, float]] = {}  # pod key -> node -> when its allocation was undone

    # ---- the lowered objects, to the Scheduler --------------------------------------------------
    def node_lowered(self, name: str, slices: list[Obj], lowered: LoweredNode) -> None:
        self._facts = None
        if _allocators(slices) == {DRA_ALLOCATOR_FRACGPU}:
            self._ours.add(name)
        else:  # kube-scheduler allocates them (or an older driver does not say): never fracgpu
            self._ours.discard(name)
        rec = node_record(lowered.obj, self._scheduler.cached_node(name))
        self._scheduler.apply_node(replace(rec, problem=lowered.problem))

    def node_gone(self, name: str) -> None:
        self._ours.discard(name)
        self._facts = None

    def pod_lowered(self, key: str, state: LoweredPodState, lowered: LoweredPod) -> None:
        d, unbound = lowered.dra, not bound_node(state.raw)
        deleting = bool((state.raw.get("metadata") or {}).get("deletionTimestamp"))
        if d is not None and unbound and not d.node and not d.generating and d.claims and not deleting:
            self._waiting.add(key)  # its fracgpu claims all exist and none is allocated
        else:
            self._waiting.discard(key)
        if d is not None and unbound and d.partial:
            self._partial.add(key)
        else:
            self._partial.discard(key)
        rec = replace(pod_record(lowered.obj), claims=lowered.dra is not None)
        if lowered.problem:  # pending: refused with the reason (the allocator tells the pod)
            rec = replace(rec, request=None, request_error=lowered.problem)
        if lowered.node_problem[0]:  # what it holds cannot be read: its node takes no new GPU pod (fail closed)
            rec = replace(rec, assignment=None, assignment_error=lowered.node_problem[1],
                          request_error=rec.request_error or lowered.node_problem[1])
        self._scheduler.apply_pod(rec)

    def pod_gone(self, key: str) -> None:
        self._waiting.discard(key)
        self._partial.discard(key)
        self._revoked.pop(key, None)

    def claim_cleared(self, key: str, pool: str, users: list[str]) -> None:
        if key in self._clearing:  # the allocator's own roll back: not a revocation
            self._clearing.discard(key)
            return
        now = self._clock()
        for k in users:  # undone before its pod was bound there: kube-scheduler's PostFilter did
            p = self._pods.get(k)
            if p is not None and not bound_node(p.raw):
                self._revoked.setdefault(k, {})[pool] = now

    # ---- what the allocator reads -------------------------------------------------------------
    def waiting(self) -> list[Waiting]:
        with self._lock:
            out = []
            for key in self._waiting:
                p = self._pods[key]
                assert p.dra is not None
                out.append(Waiting(key, p.lowered, p.raw, tuple(self._claims[c] for c in p.dra.claims), p.problem))
            return out

    def partial(self) -> list[Partial]:
        with self._lock:
            out = []
            for key in self._partial:
                d = self._pods[key].dra
                assert d is not None
                out.append(Partial(key, tuple(self._claims[c] for c in d.claims if c not in d.unallocated)))
            return out

    def clearing(self, claim_key: str) -> None:
        """The allocator is about to clear this claim's allocation itself (a roll back): when the watch
        shows it cleared, that is no sign that kube-scheduler refused the node."""
        with self._lock:
            self._clearing.add(claim_key)

    def revoked(self, key: str) -> frozenset[str]:
        now = self._clock()
        with self._lock:
            nodes = self._revoked.get(key, {})
            for n in [n for n, at in nodes.items() if now - at > REVOKED_TTL_S]:
                del nodes[n]
            return frozenset(nodes)

    def nodes(self) -> list[NodeFacts]:
        """The DRA nodes whose devices fracgpu allocates, by name, for the allocator's node checks."""
        with self._lock:
            if self._facts is None:
                self._facts = [NodeFacts.of(self._nodes[n]) for n in sorted(self._ours & set(self._nodes))]
            return self._facts


__all__ = ["DraView", "Partial", "Waiting"]
