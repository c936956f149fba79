"""Slim records of the cluster objects the placement needs, parsed from plain JSON-like dicts.

The extender's cache (fed by list+watch), `fracgpu extender --snapshot FILE` and
`fracgpu simulate --snapshot FILE` all turn Kubernetes objects into these records with the same
functions, so a snapshot file behaves like the cluster it was taken from. A malformed object never
raises here: the record carries the error (a node with a broken inventory is unusable with that
reason; a pod with a broken request fails scheduling with it). Reading files is the adapters' job.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_INVENTORY,
    ANN_PHASE,
    LABEL_ENABLED,
    LABEL_ZONE,
    TAINT_GPU_FAILED,
)
from fracgpu.core.dralower import lower_dra
from fracgpu.core.pod import PodObject, decode_pod, pod_finished
from fracgpu.core.quantity import MAX_QUANTITY, MAX_WHOLE_MILLI, QuantityError, parse_bytes, parse_milli
from fracgpu.core.request import GpuRequest, RequestError, effective_host, parse_pod_request

# Why a node takes no new pod. Identical strings for identical causes (kube-scheduler groups them).
NODE_NOT_OPTED_IN = f"node is not opted in to fracgpu (label {LABEL_ENABLED}=true)"
NODE_NO_INVENTORY = "node has no fracgpu GPU inventory yet (device plugin not running?)"
NODE_BAD_INVENTORY = "node's fracgpu GPU inventory annotation is invalid"
NODE_GPUS_UNREACHABLE = "node's GPUs are unreachable (NVML or driver failure)"
NODE_NO_HEARTBEAT = "no device plugin heartbeat seen for this node"
NODE_STALE_HEARTBEAT = "device plugin heartbeat is stale"


def node_priority(name: str) -> int:
    """The fixed tie-break rank of a node: stable across restarts and replicas, never random."""
    return zlib.crc32(name.encode())


def node_tainted(taint_key: str) -> str:
    return f"node is tainted {taint_key}:NoSchedule"


def node_unreadable_reservation(pods: Iterable[str]) -> str:
    """Why a node takes no new GPU pod while bound pods on it hold reservations that cannot be read
    (which GPUs and device IDs they hold is unknown: fail closed). Names the first pod by key."""
    keys = sorted(pods)
    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
    return (f"node runs pod {keys[0]}{more} whose {ANN_ASSIGNED} reservation cannot be read; "
            "no new GPU pod here until it is fixed or the pod ends")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    zone: str = ""
    cpu_milli: int = 0  # allocatable
    memory_bytes: int = 0
    no_schedule_taints: frozenset[str] = frozenset()
    inventory: NodeInventoryDoc | None = None
    inventory_error: str = ""  # why the annotation could not be read (for logs)
    inventory_text: str = ""  # the raw annotation, so an unchanged node is not re-parsed
    problem: str = ""  # why its GPUs cannot be used, found beside the annotation (DRA: slices unreadable)

    def unusable(self, taint_key: str = TAINT_GPU_FAILED) -> str:
        """The static reason no new pod may land here ("" = usable; heartbeat is judged apart)."""
        if self.labels.get(LABEL_ENABLED) != "true":
            return NODE_NOT_OPTED_IN
        if taint_key in self.no_schedule_taints:
            return node_tainted(taint_key)
        if self.problem:
            return self.problem
        if self.inventory_error:
            return NODE_BAD_INVENTORY
        if self.inventory is None:
            return NODE_NO_INVENTORY
        if not self.inventory.node_healthy:
            return NODE_GPUS_UNREACHABLE
        return ""


def node_record(obj: Mapping[str, Any], previous: NodeRecord | None = None) -> NodeRecord:
    meta = _meta(obj)
    name = str(meta.get("name") or "")
    labels = _str_map(meta.get("labels"))
    annotations = meta.get("annotations")
    text = ""
    if isinstance(annotations, Mapping) and isinstance(annotations.get(ANN_INVENTORY), str):
        text = annotations[ANN_INVENTORY]
    inventory: NodeInventoryDoc | None = None
    error = ""
    if previous is not None and previous.inventory_text == text:
        inventory, error = previous.inventory, previous.inventory_error
    elif text:
        try:
            inventory = NodeInventoryDoc.from_json(text)
        except InvalidDocument as e:
            error = str(e)
    spec = obj.get("spec")
    taints: set[str] = set()
    if isinstance(spec, Mapping) and isinstance(spec.get("taints"), list):
        for t in spec["taints"]:
            if isinstance(t, Mapping) and t.get("effect") in ("NoSchedule", "NoExecute"):
                taints.add(str(t.get("key", "")))
    status = obj.get("status")
    alloc = status.get("allocatable") if isinstance(status, Mapping) else None
    cpu = mem = 0
    if isinstance(alloc, Mapping):
        try:
            cpu = parse_milli(alloc.get("cpu", 0))
            mem = parse_bytes(alloc.get("memory", 0))
        except QuantityError:
            cpu = mem = 0
    return NodeRecord(
        name=name,
        labels=labels,
        zone=labels.get(LABEL_ZONE, ""),
        cpu_milli=cpu,
        memory_bytes=mem,
        no_schedule_taints=frozenset(taints),
        inventory=inventory,
        inventory_error=error,
        inventory_text=text,
    )


@dataclass(frozen=True, slots=True)
class PodRecord:
    namespace: str
    name: str
    uid: str = ""
    node: str = ""  # spec.nodeName, "" while pending
    phase: str = "Pending"  # status.phase
    created: str = ""  # metadata.creationTimestamp (RFC 3339)
    priority: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    request: GpuRequest | None = None  # None: asks for no vgpu-core (or the request is invalid)
    request_error: str = ""
    assignment: Assignment | None = None
    assignment_error: str = ""
    gpu_phase: str = ""  # fracgpu.io/phase
    cpu_milli: int = 0
    memory_bytes: int = 0
    deleting: bool = False  # deletionTimestamp set: still holds its share until it ends
    pod: PodObject | None = None  # the decoded pod, kept only for pending GPU pods (bind decides again on it)
    claims: bool = False  # its GPUs come from DRA claims: prepared by claim uid, never confusable at Allocate

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        return pod_finished(self.phase)

    @property
    def wants_gpu(self) -> bool:
        return self.request is not None or bool(self.request_error)


def host_requests(pod: PodObject) -> tuple[int, int]:
    """The pod's effective cpu (milli) and memory (bytes) requests; 0 for what cannot be read (or adds up
    past the quantities' bound)."""
    host: list[tuple[str, int, int]] = []
    for c in pod.containers:
        req = c.resources.get("requests") if isinstance(c.resources, Mapping) else None
        req = req if isinstance(req, Mapping) else {}
        try:
            host.append((c.kind, parse_milli(req.get("cpu", 0)), parse_bytes(req.get("memory", 0))))
        except QuantityError:
            host.append((c.kind, 0, 0))
    cpu, mem = effective_host(host)
    return (cpu if cpu <= MAX_WHOLE_MILLI * 1000 else 0), (mem if mem <= MAX_QUANTITY else 0)


def pod_record(obj: Mapping[str, Any], *, keep_pod: bool = True) -> PodRecord:
    pod = decode_pod(obj)
    request: GpuRequest | None = None
    request_error = ""
    try:
        request = parse_pod_request(pod)
    except RequestError as e:
        request_error = str(e)
    assignment: Assignment | None = None
    assignment_error = ""
    if ANN_ASSIGNED in pod.annotations:
        try:
            assignment = Assignment.from_json(pod.annotations[ANN_ASSIGNED])
        except InvalidDocument as e:
            assignment_error = str(e)
    cpu, mem = host_requests(pod)
    wants = request is not None or bool(request_error)
    return PodRecord(
        namespace=pod.namespace or "default",
        name=pod.name,
        uid=pod.uid,
        node=pod.node,
        phase=pod.phase or "Pending",
        created=pod.created,
        priority=pod.priority,
        labels=pod.labels,
        request=request,
        request_error=request_error,
        assignment=assignment,
        assignment_error=assignment_error,
        gpu_phase=pod.annotations.get(ANN_PHASE, ""),
        cpu_milli=cpu,
        memory_bytes=mem,
        deleting=pod.deleting,
        pod=pod if keep_pod and wants and not pod.node else None,
    )


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def namespace_record(obj: Mapping[str, Any]) -> NamespaceRecord:
    meta = _meta(obj)
    return NamespaceRecord(
        name=str(meta.get("name") or ""),
        labels=_str_map(meta.get("labels")),
        annotations=_str_map(meta.get("annotations")),
    )


@dataclass(frozen=True, slots=True)
class SnapshotDoc:
    """A `kubectl get -o yaml` style List, sorted by kind. TenantQuotas stay plain dicts here."""

    nodes: tuple[Mapping[str, Any], ...] = ()
    pods: tuple[Mapping[str, Any], ...] = ()
    namespaces: tuple[Mapping[str, Any], ...] = ()
    tenant_quotas: tuple[Mapping[str, Any], ...] = ()
    leases: tuple[Mapping[str, Any], ...] = ()
    # resource.k8s.io/v1 (DRA), read into the nodes' and pods' fracgpu form by parse_list (core.dralower)
    resource_slices: tuple[Mapping[str, Any], ...] = ()
    resource_claims: tuple[Mapping[str, Any], ...] = ()
    resource_claim_templates: tuple[Mapping[str, Any], ...] = ()
    device_classes: tuple[Mapping[str, Any], ...] = ()
    dra_nodes: frozenset[str] = frozenset()  # nodes whose GPU inventory came from ResourceSlices
    dra_pods: frozenset[str] = frozenset()  # pods (namespace/name) whose GPU request came from claims
    dra_node_problems: Mapping[str, str] = field(default_factory=dict)  # why a node's slices cannot be read
    dra_pod_problems: Mapping[str, str] = field(default_factory=dict)  # why a pod's claims cannot be read


KINDS = ("Node", "Pod", "Namespace", "TenantQuota", "Lease", "ResourceSlice", "ResourceClaim",
         "ResourceClaimTemplate", "DeviceClass")


def parse_list(doc: Any, where: str = "snapshot") -> SnapshotDoc:
    """Split a List (or a single object, or a YAML stream's documents given as a list) by kind.

    Unknown kinds are an error (naming the item), so that a typo does not silently drop objects.
    """
    items: Sequence[Any] = (
        [i for d in doc if d is not None for i in _items(d, where)] if isinstance(doc, list) else _items(doc, where)
    )
    by_kind: dict[str, list[Mapping[str, Any]]] = {k: [] for k in KINDS}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidDocument(f"{where}.items[{i}]: expected an object")
        kind = item.get("kind")
        if kind not in by_kind:
            raise InvalidDocument(f"{where}.items[{i}].kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(_meta(item).get("name"), str) or not _meta(item).get("name"):
            raise InvalidDocument(f"{where}.items[{i}].metadata.name: expected a non-empty string")
        by_kind[str(kind)].append(item)
    return snapshot_of(by_kind)


def snapshot_of(by_kind: Mapping[str, Sequence[Mapping[str, Any]]]) -> SnapshotDoc:
    """The snapshot of these objects (keys of KINDS, any missing = none), the DRA side read into the nodes'
    and pods' fracgpu form: the one way a snapshot file and a live read (`fracgpu inspect`) become a view."""
    def kind(k: str) -> tuple[Mapping[str, Any], ...]:
        return tuple(by_kind.get(k, ()))

    dra = lower_dra(kind("Node"), kind("Pod"), kind("ResourceSlice"), kind("ResourceClaim"),
                    kind("ResourceClaimTemplate"))
    return SnapshotDoc(
        nodes=dra.nodes,
        pods=dra.pods,
        namespaces=kind("Namespace"),
        tenant_quotas=kind("TenantQuota"),
        leases=kind("Lease"),
        resource_slices=kind("ResourceSlice"),
        resource_claims=kind("ResourceClaim"),
        resource_claim_templates=kind("ResourceClaimTemplate"),
        device_classes=kind("DeviceClass"),
        dra_nodes=dra.dra_nodes,
        dra_pods=dra.dra_pods,
        dra_node_problems=dra.node_problems,
        dra_pod_problems=dra.pod_problems,
    )


def _items(doc: Any, where: str) -> Sequence[Any]:
    if not isinstance(doc, Mapping):
        raise InvalidDocument(f"{where}: expected a List object")
    if doc.get("kind") == "List" or (doc.get("kind") or "").endswith("List"):
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise InvalidDocument(f"{where}.items: expected a list")
        return items
    return [doc]
