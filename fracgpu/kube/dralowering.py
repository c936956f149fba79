"""The DRA side of a watch-fed cache: ResourceSlices, ResourceClaims, their templates and the pods that name
claims, lowered one object at a time with ``core.dralower`` (the code ``fracgpu simulate`` and ``inspect``
use on a snapshot) into what the device-plugin path's readers already understand: a node labelled
``fracgpu.io/dra=true`` gets its pool as its GPU inventory, a pod's claims become its vgpu request and, once
allocated, its ``fracgpu.io/assigned`` reservation on the pool's node.

``DraLowering`` keeps the raw objects and the indexes that say what a change touches (a slice: its node and
the pods on it; a claim: the pods that name it; a template: the pods waiting for it) and hands every lowered
node and pod to its subclass: the extender's (``extender.dracache``, which feeds its Scheduler and its
allocator) and the controller's (which evicts pods from failed GPUs). Thread-safe: the reflectors feed it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fracgpu.api.v1beta1.dra.resource import ResourceClaim
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import DRA_DRIVER, LABEL_DRA
from fracgpu.core.draclaims import PodDra
from fracgpu.core.dralower import LoweredNode, LoweredPod, lower_node, lower_pod, pool_inventories
from fracgpu.kube.client import Transport
from fracgpu.kube.errors import NotFound, ServerError, TooManyRequests, Unavailable
from fracgpu.kube.resources import RESOURCECLAIMS

Obj = Mapping[str, Any]
DRA_MODES = ("auto", "on", "off")  # the programs' --dra: auto = on when the API server serves resource.k8s.io/v1


def dra_wanted(mode: str, transport: Transport, *, wait_s: float = 0.0,
               sleep: Callable[[float], bool | None] = time.sleep) -> bool:
    """--dra on/off as given; auto: on when the API server's discovery lists resource.k8s.io/v1 resourceclaims.

    An API server that cannot be reached, or answers 429/5xx, is asked again every second for up to
    `wait_s` (a program starting beside its API server waits, as its watches would); then, and on any
    other refusal, the KubeAPIError is raised: whether DRA is served is unknown. `sleep` returning True
    (a stop event's wait) gives up at once."""
    if mode != "auto":
        return mode == "on"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = transport.request("GET", f"/apis/{RESOURCECLAIMS.api_version}")
        except NotFound:
            return False
        except (Unavailable, ServerError, TooManyRequests):
            if time.monotonic() >= deadline or sleep(1.0):
                raise
            continue
        return any(isinstance(r, dict) and r.get("name") == RESOURCECLAIMS.plural
                   for r in found.get("resources") or [])


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


def bound_node(pod: Obj) -> str:
    spec = pod.get("spec")
    return str(spec.get("nodeName") or "") if isinstance(spec, Mapping) else ""


def allocated_pool(claim: Obj) -> str:
    """The pool (node) of a claim's gpu.fracgpu.io allocation; "" when it has none."""
    try:
        c = ResourceClaim.from_json(claim)
    except InvalidDocument:
        return ""
    return next((r.pool for r in c.results if r.driver == DRA_DRIVER), "") if c.allocated else ""


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


@dataclass(slots=True)
class LoweredPodState:
    raw: Obj
    dra: PodDra | None
    lowered: Obj
    problem: str
    claims: set[str] = field(default_factory=set)  # every claim key it names (existing or not)
    templates: set[str] = field(default_factory=set)
    node: str = ""  # where the lowering put it (bound, or its claims allocated there)


class DraLowering:
    """Raw DRA objects in, lowered nodes and pods out through the `node_lowered` / `pod_lowered` hooks
    (called with the lock held, so a subclass's own state changes in step)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._nodes: dict[str, Obj] = {}  # DRA nodes (labelled), raw
        self._slices: dict[str, dict[str, Obj]] = {}  # pool -> slice name -> slice
        self._devices: dict[str, Mapping[str, GpuInfo]] = {}  # node -> device name -> GPU
        self._claims: dict[str, Obj] = {}
        self._templates: dict[str, Obj] = {}
        self._pods: dict[str, LoweredPodState] = {}
        self._by_claim: dict[str, set[str]] = {}  # claim key -> pod keys naming it
        self.changed = threading.Event()  # set on every change

    # ---- hooks ----------------------------------------------------------------------------------
    def node_lowered(self, name: str, slices: list[Obj], lowered: LoweredNode) -> None:
        """A DRA node, lowered (its inventory from its pool)."""

    def node_gone(self, name: str) -> None:
        """A DRA node deleted or no longer labelled."""

    def pod_lowered(self, key: str, state: LoweredPodState, lowered: LoweredPod) -> None:
        """A pod that names claims, lowered."""

    def pod_gone(self, key: str) -> None:
        """A pod deleted."""

    def claim_cleared(self, key: str, pool: str, users: list[str]) -> None:
        """A claim allocated on `pool` is no longer (its allocation cleared, or the claim deleted)."""

    # ---- nodes and slices -----------------------------------------------------------------------
    def apply_node(self, obj: Obj) -> bool:
        """Take a node labelled fracgpu.io/dra=true (its inventory is its pool's); False for any other
        node (one that lost the label is forgotten here), which the caller reads as usual."""
        name = str(_meta(obj).get("name") or "")
        with self._lock:
            if not is_dra_node(obj):
                if self._nodes.pop(name, None) is not None:
                    self._devices.pop(name, None)
                    self.node_gone(name)
                return False
            self._nodes[name] = obj
            self._lower_node(name, obj)
        self.changed.set()
        return True

    def delete_node(self, name: str) -> None:
        with self._lock:
            if self._nodes.pop(name, None) is not None:
                self._devices.pop(name, None)
                self.node_gone(name)

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
        slices = list(self._slices.get(name, {}).values())
        inventories, problems = pool_inventories(slices)
        ln = lower_node(raw, inventories, problems)
        self._devices[name] = ln.devices
        self.node_lowered(name, slices, ln)

    def knows_allocation(self, key: str, pool: str) -> bool:
        """Whether the claim is known here allocated on `pool` (a new leader's fence asks this of every
        claim the API server lists allocated)."""
        with self._lock:
            claim = self._claims.get(key)
            return claim is not None and allocated_pool(claim) == pool

    def devices(self, node: str) -> Mapping[str, GpuInfo]:
        with self._lock:
            return self._devices.get(node, {})

    # ---- claims and templates -------------------------------------------------------------------
    def apply_claim(self, obj: Obj, deleted: bool = False) -> None:
        key = obj_key(obj)
        with self._lock:
            before = self._claims.get(key)
            if deleted:
                self._claims.pop(key, None)
            else:
                self._claims[key] = obj
            users = list(self._by_claim.get(key, ()))
            was = allocated_pool(before) if before is not None else ""
            if was and (deleted or not allocated_pool(obj)):
                self.claim_cleared(key, was, users)
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

    # ---- pods -----------------------------------------------------------------------------------
    def apply_pod(self, obj: Obj) -> None:
        with self._lock:
            self._lower_pod(obj_key(obj), obj)
        self.changed.set()

    def delete_pod(self, key: str) -> None:
        with self._lock:
            p = self._pods.pop(key, None)
            if p is not None:
                for c in p.claims:
                    self._by_claim.get(c, set()).discard(key)
            self.pod_gone(key)

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
        state = LoweredPodState(raw, lp.dra, lp.obj, lp.problem, claims, templates, bound_node(lp.obj))
        self._pods[key] = state
        for c in claims:
            self._by_claim.setdefault(c, set()).add(key)
        self.pod_lowered(key, state, lp)


__all__ = ["DRA_MODES", "DraLowering", "LoweredPodState", "allocated_pool", "bound_node", "dra_wanted", "has_claims",
           "is_dra_node", "obj_key"]
