"""What the controller sees of Nodes, Pods and heartbeat Leases, decoded once from the API's dicts.

Pure: the reconcile logic only ever sees these values, never raw objects. A malformed annotation
becomes an ``error`` on the view (reported, never a crash).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, LEASE_PREFIX
from fracgpu.core.pod import decode_pod
from fracgpu.kube import objects


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    inventory: NodeInventoryDoc | None = None  # None: no (valid) inventory annotation
    tainted: bool = False  # carries the controller's taint key (any effect)
    error: str = ""  # why the inventory annotation could not be read
    dra: bool = False  # GPUs published as ResourceSlices (docs/dra.md): no heartbeat Lease to judge


@dataclass(frozen=True, slots=True)
class PodView:
    namespace: str
    name: str
    uid: str
    node: str
    gpus: frozenset[str]  # uuids of the GPUs the pod's reservation holds
    terminating: bool = False  # deletionTimestamp set: being evicted or deleted
    finished: bool = False  # core.pod.pod_finished: holds nothing any more

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class World:
    """One consistent look at the cluster, as far as the controller cares."""

    nodes: Mapping[str, NodeView]
    pods: tuple[PodView, ...]
    heartbeats: Mapping[str, str]  # node -> a marker that changes on every renewal of its Lease
    recovery_jobs: Mapping[str, bool] = field(default_factory=dict)  # node -> a recovery Job of it runs


def node_view(obj: Mapping[str, Any], taint_key: str) -> NodeView:
    name = objects.name(obj)
    spec = obj.get("spec")
    taints = spec.get("taints") if isinstance(spec, Mapping) else None
    tainted = isinstance(taints, list) and any(isinstance(t, Mapping) and t.get("key") == taint_key for t in taints)
    text = objects.annotations(obj).get(ANN_INVENTORY)
    if text is None:
        return NodeView(name=name, tainted=tainted)
    try:
        return NodeView(name=name, inventory=NodeInventoryDoc.from_json(str(text)), tainted=tainted)
    except InvalidDocument as e:
        return NodeView(name=name, tainted=tainted, error=str(e))


def pod_view(obj: Mapping[str, Any]) -> PodView | None:
    """None for a pod without a (valid) fracgpu reservation: the controller leaves it alone."""
    pod = decode_pod(obj)
    text = pod.annotations.get(ANN_ASSIGNED)
    if text is None:
        return None
    try:
        assignment = Assignment.from_json(text)
    except InvalidDocument:
        return None
    return PodView(
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        node=pod.node or assignment.node,
        gpus=frozenset(g.uuid for g in assignment.gpus),
        terminating=pod.deleting,
        finished=pod.finished,
    )


def heartbeat(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(node, marker) for a plugin heartbeat Lease, None for any other Lease.

    The marker is the renew time and holder as written: the controller judges staleness by when
    it saw the marker change on its own clock, never by comparing the writer's clock with its own.
    """
    name = objects.name(obj)
    if not name.startswith(LEASE_PREFIX) or len(name) == len(LEASE_PREFIX):
        return None
    spec = obj.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    marker = f"{spec.get('renewTime')}|{spec.get('holderIdentity')}|{objects.meta(obj).get('resourceVersion')}"
    return name[len(LEASE_PREFIX) :], marker
