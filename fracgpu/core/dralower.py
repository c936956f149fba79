"""DRA objects in a snapshot read as the device-plugin path's objects, so simulate and inspect judge both alike.

``lower_dra`` rewrites a snapshot's DRA side into what the rest of fracgpu already reads:

- a node without a ``fracgpu.io/gpu-inventory`` annotation whose pool (driver gpu.fracgpu.io, pool = node) has
  ResourceSlices gets that annotation, read back from the devices (``core.draslices.gpus_from_devices``); a
  node labelled ``fracgpu.io/dra=true`` counts as opted in;
- a pod whose ``spec.resourceClaims`` ask for gpu.fracgpu.io devices gets the equivalent ``vgpu-core`` /
  ``vgpu-memory`` (class vgpu.fracgpu.io with capacity cores=N, memory=M: a share of N cores / M bytes; class
  gpu.fracgpu.io with count K: K whole GPUs) and, once bound, a ``fracgpu.io/assigned`` reservation built
  from its claims' ``status.allocation`` (consumedCapacity per device; none = the device whole).

What has no such equivalent (another driver, CEL selectors, constraints, several shares, a share without
``memory`` ...) is not guessed: the pod keeps its objects and the reason is recorded in ``pod_problems``
(the node's in ``node_problems``), which ``inspect.view.build_world`` shows as the pod's refusal. Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.dra.resource import ResourceSlice
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_INVENTORY,
    CORES_PER_GPU,
    DRA_DRIVER,
    LABEL_DRA,
    LABEL_ENABLED,
    RESOURCE_CORE,
    RESOURCE_MEMORY,
)
from fracgpu.core.draclaims import Demand, PodDra, pod_dra
from fracgpu.core.draslices import SliceReadError, device_names, gpus_from_devices

NODE_BAD_SLICES = f"node's {DRA_DRIVER} ResourceSlices cannot be read as GPUs"


@dataclass(frozen=True, slots=True)
class Lowered:
    nodes: tuple[Mapping[str, Any], ...]
    pods: tuple[Mapping[str, Any], ...]
    dra_nodes: frozenset[str] = frozenset()  # nodes whose inventory came from ResourceSlices
    dra_pods: frozenset[str] = frozenset()  # pods (namespace/name) whose GPU request came from claims
    node_problems: Mapping[str, str] = field(default_factory=dict)
    pod_problems: Mapping[str, str] = field(default_factory=dict)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> str:
    m = _meta(obj)
    return f"{m.get('namespace') or 'default'}/{m.get('name') or ''}"


# -- nodes ----------------------------------------------------------------------------------------------


def pool_inventories(slices: Sequence[Mapping[str, Any]]) -> tuple[dict[str, tuple[GpuInfo, ...]], dict[str, str]]:
    """Per pool (= node) of driver gpu.fracgpu.io, its GPUs; or why they cannot be read. Only the newest
    generation of a pool counts, and only when all its slices are there (as kube-scheduler's allocator)."""
    by_pool: dict[str, list[ResourceSlice]] = {}
    problems: dict[str, str] = {}
    for raw in slices:
        try:
            s = ResourceSlice.from_json(raw)
        except InvalidDocument as e:
            node = str((raw.get("spec") or {}).get("nodeName") or "") if isinstance(raw.get("spec"), Mapping) else ""
            if node:
                problems[node] = f"ResourceSlice {_meta(raw).get('name')}: {e}"
            continue
        if s.spec.driver == DRA_DRIVER:
            by_pool.setdefault(s.spec.pool.name, []).append(s)
    out: dict[str, tuple[GpuInfo, ...]] = {}
    for pool, items in by_pool.items():
        if pool in problems:
            continue
        newest = max(s.spec.pool.generation for s in items)
        current = [s for s in items if s.spec.pool.generation == newest]
        if any(s.spec.node_name != pool for s in current):
            problems[pool] = f"pool {pool} of {DRA_DRIVER}: a slice's nodeName is not the pool's node"
            continue
        if len(current) != current[0].spec.pool.resource_slice_count:
            problems[pool] = (f"pool {pool} of {DRA_DRIVER}: {len(current)} of "
                              f"{current[0].spec.pool.resource_slice_count} slices of generation {newest}")
            continue
        try:
            out[pool] = gpus_from_devices([dev for s in sorted(current, key=lambda x: x.name)
                                           for dev in s.spec.devices])
        except SliceReadError as e:
            problems[pool] = f"pool {pool} of {DRA_DRIVER}: {e}"
    return out, problems


# -- the snapshot -----------------------------------------------------------------------------------------


def _with_request(pod: Mapping[str, Any], demand: Demand) -> dict[str, Any]:
    out = copy.deepcopy(dict(pod))
    containers = out["spec"].get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        return out  # parse_pod_request reports the pod's broken containers itself
    amounts: dict[str, str] = {}
    if demand.shares:
        cores, memory = demand.shares[0]
        amounts = {RESOURCE_CORE: str(cores), RESOURCE_MEMORY: str(memory)}
    elif demand.whole:
        amounts = {RESOURCE_CORE: str(CORES_PER_GPU * demand.whole)}
    first = dict(containers[0])
    res = dict(first.get("resources") or {}) if isinstance(first.get("resources"), Mapping | None) else {}
    for part in ("requests", "limits"):
        cur = res.get(part)
        res[part] = {**(cur if isinstance(cur, Mapping) else {}), **amounts}
    first["resources"] = res
    containers[0] = first
    return out


def _asks_vgpu(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    lists = [spec.get(k) for k in ("initContainers", "containers")]
    for c in (c for cs in lists if isinstance(cs, list) for c in cs if isinstance(c, Mapping)):
        res = c.get("resources")
        if isinstance(res, Mapping) and any(isinstance(res.get(p), Mapping) and RESOURCE_CORE in res[p]
                                            for p in ("requests", "limits")):
            return True
    return False


@dataclass(frozen=True, slots=True)
class LoweredNode:
    obj: Mapping[str, Any]
    dra: bool = False  # its inventory came from ResourceSlices
    problem: str = ""  # why its slices cannot be read as GPUs (the node takes no GPU pod)
    devices: Mapping[str, GpuInfo] = field(default_factory=dict)  # device name -> GPU


def lower_node(node: Mapping[str, Any], inventories: Mapping[str, tuple[GpuInfo, ...]],
               pool_problems: Mapping[str, str]) -> LoweredNode:
    """A node with its pool's GPUs as the inventory annotation (a node that has the annotation, or no
    pool of fracgpu's, is kept as it is)."""
    meta = _meta(node)
    name = str(meta.get("name") or "")
    annotations = meta.get("annotations")
    has_annotation = isinstance(annotations, Mapping) and ANN_INVENTORY in annotations
    if has_annotation or (name not in inventories and name not in pool_problems):
        return LoweredNode(node)
    out = copy.deepcopy(dict(node))
    m = out.setdefault("metadata", {})
    labels = dict(m.get("labels") or {})
    if labels.get(LABEL_DRA) == "true":
        labels[LABEL_ENABLED] = "true"  # the DRA path's opt-in, as LABEL_ENABLED is the device plugin's
    m["labels"] = labels
    if name in pool_problems:
        return LoweredNode(out, True, f"{NODE_BAD_SLICES}: {pool_problems[name]}")
    gpus = inventories[name]
    m["annotations"] = {**dict(m.get("annotations") or {}), ANN_INVENTORY: NodeInventoryDoc(gpus=gpus).to_json()}
    names = device_names(gpus)
    return LoweredNode(out, True, devices={names[g.uuid]: g for g in gpus})


@dataclass(frozen=True, slots=True)
class LoweredPod:
    obj: Mapping[str, Any]
    dra: PodDra | None = None  # None: no claim of fracgpu's
    problem: str = ""  # why its request cannot be read (a pending pod is refused with it)
    node_problem: tuple[str, str] = ("", "")  # (node, why): what it holds there cannot be read


def lower_pod(pod: Mapping[str, Any], claims: Mapping[str, Mapping[str, Any]],
              templates: Mapping[str, Mapping[str, Any]],
              devices: Mapping[str, Mapping[str, GpuInfo]]) -> LoweredPod:
    """A pod with its fracgpu claims as vgpu resources and, once they are allocated, as the
    ``fracgpu.io/assigned`` reservation on their node (a pod whose claims fracgpu allocated ahead of
    the scheduler is shown on that node: it holds those shares)."""
    dra = pod_dra(pod, claims, templates, devices)
    if dra is None:
        return LoweredPod(pod)
    key = _key(pod)
    if _asks_vgpu(pod):
        return LoweredPod(pod, dra, f"the pod asks for {RESOURCE_CORE} and for {DRA_DRIVER} claims; one or the other")
    out = _with_request(pod, dra.demand) if dra.demand is not None else copy.deepcopy(dict(pod))
    problem = f"claims not understood: {dra.problem}" if dra.problem else ""
    spec = out.get("spec")
    bound = str(spec.get("nodeName") or "") if isinstance(spec, Mapping) else ""
    if not bound and dra.node:
        bound = dra.node
        out["spec"] = {**dict(spec or {}), "nodeName": bound}
    node_problem = ("", "")
    if bound and dra.held_problem:  # what it holds is unknown: fail closed, as for an unreadable reservation
        node_problem = (bound, f"node runs pod {key} whose {DRA_DRIVER} claims cannot be read "
                               f"({dra.held_problem}); no new GPU pod here until it is fixed or the pod ends")
    if bound and dra.gpus:
        m = out.setdefault("metadata", {})
        m["annotations"] = {**dict(m.get("annotations") or {}), ANN_ASSIGNED: Assignment(
            node=bound, tenant="", assigned_at=str(m.get("creationTimestamp") or ""), gpus=dra.gpus,
            containers=()).to_json()}
    return LoweredPod(out, dra, problem, node_problem)


def lower_dra(nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]],
              slices: Sequence[Mapping[str, Any]], claims: Sequence[Mapping[str, Any]],
              templates: Sequence[Mapping[str, Any]]) -> Lowered:
    """The snapshot's nodes and pods with their DRA side read as annotations and vgpu resources."""
    if not slices and not claims and not templates:
        return Lowered(tuple(nodes), tuple(pods))
    inventories, pool_problems = pool_inventories(slices)
    new_nodes: list[Mapping[str, Any]] = []
    dra_nodes: set[str] = set()
    node_problems: dict[str, str] = {}
    devices: dict[str, Mapping[str, GpuInfo]] = {}
    for node in nodes:
        ln = lower_node(node, inventories, pool_problems)
        new_nodes.append(ln.obj)
        if not ln.dra:
            continue
        name = str(_meta(node).get("name") or "")
        dra_nodes.add(name)
        if ln.problem:
            node_problems[name] = ln.problem
        else:
            devices[name] = ln.devices
    claim_map = {_key(c): c for c in claims}
    tpl_map = {_key(t): t for t in templates}
    new_pods: list[Mapping[str, Any]] = []
    dra_pods: set[str] = set()
    pod_problems: dict[str, str] = {}
    for pod in pods:
        lp = lower_pod(pod, claim_map, tpl_map, devices)
        new_pods.append(lp.obj)
        if lp.dra is None:
            continue
        key = _key(pod)
        dra_pods.add(key)
        if lp.problem:
            pod_problems[key] = lp.problem
        if lp.node_problem[0]:
            node_problems.setdefault(*lp.node_problem)
    return Lowered(tuple(new_nodes), tuple(new_pods), frozenset(dra_nodes), frozenset(dra_pods), node_problems,
                   pod_problems)


__all__ = ["Lowered", "LoweredNode", "LoweredPod", "lower_dra", "lower_node", "lower_pod", "pool_inventories"]
