"""The closed set of filter refusal kinds: the `reason` label of `fracgpu_extender_filter_nodes_total`.

A refusal's text carries the pod's and the tenant's numbers and sometimes pod names ("waiting
behind ns/pod-7 ..."); as a metric label it would make one series per pod. The label is the
refusal's kind instead, one of `ReasonKind`; the text stays in the answer to kube-scheduler and in
the logs. Every refusal text is built by a function or constant of the core or the extender; the
table below recognises each of them (tests/extender/test_metrics.py builds every one and checks
its kind), and anything else is `other`, so the set stays closed whatever a refusal says.
"""

from __future__ import annotations

import re
from enum import StrEnum

from fracgpu.core import fit, records


class ReasonKind(StrEnum):
    CACHE_NOT_SYNCED = "cache_not_synced"
    NODE_NOT_IN_CACHE = "node_not_in_cache"
    INVALID_REQUEST = "invalid_request"
    NODE_NOT_OPTED_IN = "node_not_opted_in"
    NODE_TAINTED = "node_tainted"
    NODE_INVENTORY = "node_inventory"  # missing or invalid
    NODE_GPUS_UNREACHABLE = "node_gpus_unreachable"
    NODE_HEARTBEAT = "node_heartbeat"  # missing or stale
    NODE_UNREADABLE_RESERVATION = "node_unreadable_reservation"
    NO_GPUS = "no_gpus"
    GPU_MODEL = "gpu_model"
    NO_HEALTHY_GPU = "no_healthy_gpu"
    UNHEALTHY_ROOM = "gpu_with_room_unhealthy"
    CAPACITY = "capacity"
    PODS_PER_GPU = "pods_per_gpu"
    TOPOLOGY = "topology"
    HOST_CPU = "host_cpu"
    HOST_MEMORY = "host_memory"
    ZONE_POLICY = "zone_policy"
    TENANT_ZONES = "tenant_zones"
    STILL_ALLOCATING = "still_allocating"
    QUOTA_EXCEEDED = "quota_exceeded"
    QUOTA_INVALID = "quota_invalid"
    QUOTA_QUEUE = "quota_queue"
    ALREADY_RESERVED = "already_reserved"
    OTHER = "other"


# Texts that never vary (module constants), then patterns for the templated ones, first match wins.
# The literal fragments are those of the functions named beside them.
_EXACT: dict[str, ReasonKind] = {
    records.NODE_NOT_OPTED_IN: ReasonKind.NODE_NOT_OPTED_IN,
    records.NODE_NO_INVENTORY: ReasonKind.NODE_INVENTORY,
    records.NODE_BAD_INVENTORY: ReasonKind.NODE_INVENTORY,
    records.NODE_GPUS_UNREACHABLE: ReasonKind.NODE_GPUS_UNREACHABLE,
    records.NODE_NO_HEARTBEAT: ReasonKind.NODE_HEARTBEAT,
    records.NODE_STALE_HEARTBEAT: ReasonKind.NODE_HEARTBEAT,
    fit.NO_GPUS: ReasonKind.NO_GPUS,
    fit.NO_HEALTHY: ReasonKind.NO_HEALTHY_GPU,
}
_PATTERNS: tuple[tuple[re.Pattern[str], ReasonKind], ...] = tuple(
    (re.compile(p), kind) for p, kind in (
        (r"^the fracgpu extender's cache is not synced yet$", ReasonKind.CACHE_NOT_SYNCED),  # decide.NOT_READY
        (r"^node is not in the fracgpu extender's cache yet$", ReasonKind.NODE_NOT_IN_CACHE),  # decide.UNKNOWN_NODE
        (r"^invalid GPU request: ", ReasonKind.INVALID_REQUEST),  # decide.read_request
        (r"^node is tainted \S+:NoSchedule$", ReasonKind.NODE_TAINTED),  # records.node_tainted
        (r"^node runs pod \S+ .*reservation cannot be read", ReasonKind.NODE_UNREADABLE_RESERVATION),
        (r"^no GPU of a model allowed by ", ReasonKind.GPU_MODEL),  # fit.reason_model
        (r"^the GPUs with room are unhealthy ", ReasonKind.UNHEALTHY_ROOM),  # fit.reason_unhealthy_room
        (r"^(no single GPU with \d+ free vgpu-core|no whole free GPU|fewer than \d+ whole free GPUs)",
         ReasonKind.CAPACITY),  # fit.reason_capacity
        (r"^every fitting GPU already holds \d+ pods$", ReasonKind.PODS_PER_GPU),  # fit.reason_pod_limit
        (r"^no \d+ free GPUs joined by the node's best link", ReasonKind.TOPOLOGY),  # fit.reason_topology
        (r"^insufficient cpu ", ReasonKind.HOST_CPU),  # fit.reason_cpu
        (r"^insufficient memory ", ReasonKind.HOST_MEMORY),  # fit.reason_memory
        (r"^zone policy (same|spread): ", ReasonKind.ZONE_POLICY),  # zone.reason_same / reason_spread
        (r"^tenant \S+ may use only zones ", ReasonKind.TENANT_ZONES),  # zone.allowed_zones_refusal
        (r"^(a pod with containers of the same vgpu-core count|waiting for a pod still allocating: )",
         ReasonKind.STILL_ALLOCATING),  # confusable.reason_confusable, decide.reason_retry_allocating
        (r"^tenant \S+: quota unusable, ", ReasonKind.QUOTA_INVALID),  # tenant.QuotaError.reason
        (r"^tenant \S+: vgpu-(memory|core) ", ReasonKind.QUOTA_EXCEEDED),  # quota.refusal
        (r"^waiting behind \S+ \(priority -?\d+\) in tenant \S+'s queue$", ReasonKind.QUOTA_QUEUE),
        (r"^pod \S+ already holds a reservation on node \S+$", ReasonKind.ALREADY_RESERVED),
    )
)


def reason_kind(reason: str) -> ReasonKind:
    """The kind of a refusal text; `other` for a text none of the builders makes."""
    exact = _EXACT.get(reason)
    if exact is not None:
        return exact
    for pattern, kind in _PATTERNS:
        if pattern.search(reason):
            return kind
    return ReasonKind.OTHER
