"""The DRA side of the extender's cache: ResourceSlices, ResourceClaims and their templates, read as the
device-plugin path's records, so that one Scheduler decides for both paths with the same ranking, quotas,
queue and zone rules.

Raw objects are kept for the nodes labelled ``fracgpu.io/dra=true``, their pools' slices, the claims and
templates, and the pods that name claims. Every change lowers what it touches with ``core.dralower``
(the code ``fracgpu simulate`` and ``inspect`` use on a snapshot) and feeds the result to the Scheduler:
a node's pool becomes its inventory, a pod's claims its vgpu request and, once allocated, its
reservation on the pool's node. The allocator (``draallocator``) reads the pods that wait for an
allocation from here. Thread-safe: the reflectors feed it, the allocator reads it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fracgpu.api.v1beta1.dra.resource import ResourceClaim, ResourceSlice
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import DRA_ALLOCATOR_FRACGPU, DRA_DRIVER, LABEL_DRA
from fracgpu.core.draclaims import PodDra
from fracgpu.core.dralower import lower_node, lower_pod, pool_inventories
from fracgpu.core.draslices import device_allocator
from fracgpu.core.nodematch import NodeFacts
from fracgpu.core.records import node_record, pod_record
from fracgpu.extender.scheduler import Scheduler

Obj = Mapping[str, Any]
Clock = Callable[[], float]

REVOKED_TTL_S = 300.0  # a node whose allocation the scheduler undid is not chosen again for that pod this long


def _meta(obj: Obj) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def obj_key(obj: Obj) -> str:
    m = _meta(obj)
    ns = m.get("namespace")
    return f"{ns}/{m.get('name')}" if ns else str(m.get("name") or "")


def is_dra_node(obj: Obj) -> bool:
    labels = _meta(obj).get("labels")
    return isinstance(labels, Mapping) and labels.get(LABEL_DRA) == "true"


def has_claims(pod: Obj) -> bool:
    spec = pod.get("spec")
    return isinstance(spec, Mapping) and bool(spec.get("resourceClaims"))


def _refs(pod: Obj) -> tuple[set[str], set[str]]:
    """The claim keys (by name, or generated from a template) and template keys a pod names."""
    ns = str(_meta(pod).get("namespace") or "default")
    spec = pod.get("spec")
    refs = spec.get("resourceClaims") if isinstance(spec, Mapping) else None
    status = pod.get("status")
    made: dict[str, str] = {}
    if isinstance(status, Mapping) and isinstance(status.get("resourceClaimStatuses"), list):
        for st in status["resourceClaimStatuses"]:
            if isinstance(st, Mapping) and isinstance(st.get("resourceClaimName"), str):
                made[str(st.get("name"))] = st["resourceClaimName"]
    claims: set[str] = set()
    templates: set[str] = set()
    for ref in refs if isinstance(refs, list) else ():
        if not isinstance(ref, Mapping):
            continue
        if isinstance(ref.get("resourceClaimName"), str):
            claims.add(f"{ns}/{ref['resourceClaimName']}")
        elif isinstance(ref.get("resourceClaimTemplateName"), str):
            templates.add(f"{ns}/{ref['resourceClaimTemplateName']}")
            if str(ref.get("name")) in made:
                claims.add(f"{ns}/{made[str(ref.get('name'))]}")
    return claims, templates


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


def _allocated_pool(claim: Obj) -> str:
    try:
        c = ResourceClaim.from_json(claim)
    except InvalidDocument:
        return ""
    return next((r.pool for r in c.results if r.driver == DRA_DRIVER), "") if c.allocated else ""


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


@dataclass(slots=True)
class _Pod:
    raw: Obj
    dra: PodDra | None
    lowered: Obj
    problem: str
    claims: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    node: str = ""  # where the lowering put it (bound, or its claims allocated there)


class DraView:
    def __init__(self, scheduler: Scheduler, clock: Clock) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._lock = threading.RLock()
        self._nodes: dict[str, Obj] = {}  # DRA nodes (labelled), raw
        self._slices: dict[str, dict[str, Obj]] = {}  # pool -> slice name -> slice
        self._devices: dict[str, Mapping[str, GpuInfo]] = {}  # node -> device name -> GPU
        self._ours: set[str] = set()  # nodes whose every device says allocator: fracgpu
        self._facts: list[NodeFacts] | None = None  # nodes() as last built; None after a node change
        self._claims: dict[str, Obj] = {}
        self._templates: dict[str, Obj] = {}
        self._pods: dict[str, _Pod] = {}
        self._by_claim: dict[str, set[str]] = {}  # claim key -> pod keys naming it
        self._waiting: set[str] = set()  # pods the allocator has to place (Waiting)
        self._clearing: set[str] = set()  # claims the allocator is clearing itself
        self._partial: set[str] = set()  # pods half-allocated (Partial)
        self._revoked: dict[str, dict[str, float]] = {}  # pod key -> node -> when its allocation was undone
        self.changed = threading.Event()  # set on every change: the allocator's wake-up

    # ---- nodes and slices ---------------------------------------------------------------------
    def apply_node(self, obj: Obj) -> bool:
        """Take a node labelled fracgpu.io/dra=true (its inventory is its pool's); False for any other
        node (one that lost the label is forgotten here), which the caller reads as usual."""
        name = str(_meta(obj).get("name") or "")
        with self._lock:
            if not is_dra_node(obj):
                if self._nodes.pop(name, None) is not None:
                    self._devices.pop(name, None)
                    self._ours.discard(name)
                    self._facts = None
                return False
            self._nodes[name] = obj
            self._lower_node(name, obj)
        self.changed.set()
        return True

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._nodes.pop(name, None)
            self._devices.pop(name, None)
            self._ours.discard(name)
            self._facts = None

    def apply_slice(self, obj: Obj, deleted: bool = False) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, Mapping) or spec.get("driver") != DRA_DRIVER:
            return
        pool = spec.get("pool")
        name = str(pool.get("name") or "") if isinstance(pool, Mapping) else ""
        slice_name = str(_meta(obj).get("name") or "")
        with self._lock:
            slices = self._slices.setdefault(name, {})
            if deleted:
                slices.pop(slice_name, None)
            else:
                slices[slice_name] = obj
            if not slices:
                self._slices.pop(name, None)
            raw = self._nodes.get(name)
            if raw is not None:
                self._lower_node(name, raw)
                self._relower([k for k, p in self._pods.items() if p.node == name])
        self.changed.set()

    def _lower_node(self, name: str, raw: Obj) -> None:
        self._facts = None
        slices = list(self._slices.get(name, {}).values())
        if _allocators(slices) == {DRA_ALLOCATOR_FRACGPU}:
            self._ours.add(name)
        else:  # kube-scheduler allocates them (or an older driver does not say): never fracgpu
            self._ours.discard(name)
        inventories, problems = pool_inventories(slices)
        ln = lower_node(raw, inventories, problems)
        self._devices[name] = ln.devices
        rec = node_record(ln.obj, self._scheduler.cached_node(name))
        self._scheduler.apply_node(replace(rec, problem=ln.problem))

    # ---- claims and templates -----------------------------------------------------------------
    def apply_claim(self, obj: Obj, deleted: bool = False) -> None:
        key = obj_key(obj)
        with self._lock:
            before = self._claims.get(key)
            if deleted:
                self._claims.pop(key, None)
            else:
                self._claims[key] = obj
            users = list(self._by_claim.get(key, ()))
            was = _allocated_pool(before) if before is not None else ""
            cleared = bool(was) and (deleted or not _allocated_pool(obj))
            ours = cleared and key in self._clearing  # the allocator's own roll back: not a revocation
            if cleared:
                self._clearing.discard(key)
            if cleared and not ours:
                now = self._clock()
                for k in users:  # undone before its pod was bound there: kube-scheduler's PostFilter did
                    p = self._pods.get(k)
                    if p is not None and not _bound_node(p.raw):
                        self._revoked.setdefault(k, {})[was] = now
            self._relower(users)
        self.changed.set()

    def apply_template(self, obj: Obj, deleted: bool = False) -> None:
        key = obj_key(obj)
        with self._lock:
            if deleted:
                self._templates.pop(key, None)
            else:
                self._templates[key] = obj
            self._relower([k for k, p in self._pods.items() if key in p.templates])
        self.changed.set()

    # ---- pods ---------------------------------------------------------------------------------
    def apply_pod(self, obj: Obj) -> None:
        key = obj_key(obj)
        with self._lock:
            self._lower_pod(key, obj)
        self.changed.set()

    def delete_pod(self, key: str) -> None:
        with self._lock:
            p = self._pods.pop(key, None)
            self._waiting.discard(key)
            self._partial.discard(key)
            if p is not None:
                for c in p.claims:
                    self._by_claim.get(c, set()).discard(key)
            self._revoked.pop(key, None)

    def _relower(self, keys: list[str]) -> None:
        for k in keys:
            p = self._pods.get(k)
            if p is not None:
                self._lower_pod(k, p.raw)

    def _lower_pod(self, key: str, raw: Obj) -> None:
        old = self._pods.get(key)
        if old is not None:
            for c in old.claims:
                self._by_claim.get(c, set()).discard(key)
        claims, templates = _refs(raw)
        lp = lower_pod(raw, self._claims, self._templates, self._devices)
        spec = lp.obj.get("spec")
        node = str(spec.get("nodeName") or "") if isinstance(spec, Mapping) else ""
        self._pods[key] = _Pod(raw, lp.dra, lp.obj, lp.problem, claims, templates, node)
        d, unbound = lp.dra, not _bound_node(raw)
        if d is not None and unbound and not d.node and not d.generating and d.claims and not _meta(raw).get(
                "deletionTimestamp"):
            self._waiting.add(key)  # its fracgpu claims all exist and none is allocated
        else:
            self._waiting.discard(key)
        if d is not None and unbound and d.partial:
            self._partial.add(key)
        else:
            self._partial.discard(key)
        for c in claims:
            self._by_claim.setdefault(c, set()).add(key)
        rec = replace(pod_record(lp.obj), claims=lp.dra is not None)
        if lp.problem:  # pending: refused with the reason (the allocator tells the pod)
            rec = replace(rec, request=None, request_error=lp.problem)
        if lp.node_problem[0]:  # what it holds cannot be read: its node takes no new GPU pod (fail closed)
            rec = replace(rec, assignment=None, assignment_error=lp.node_problem[1],
                          request_error=rec.request_error or lp.node_problem[1])
        self._scheduler.apply_pod(rec)

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

    def devices(self, node: str) -> Mapping[str, GpuInfo]:
        with self._lock:
            return self._devices.get(node, {})


def _bound_node(pod: Obj) -> str:
    spec = pod.get("spec")
    return str(spec.get("nodeName") or "") if isinstance(spec, Mapping) else ""


__all__ = ["DraView", "Partial", "Waiting", "has_claims", "is_dra_node", "obj_key"]
