"""A pod object decoded once, and the one rule for when a pod is finished.

Every program reads pods the same way: the extender's cache and snapshot files (core.records),
the device plugin's node view and quota cache, the controller, the webhook and the extender's
filter all call ``decode_pod`` on the JSON object and work on the ``PodObject`` it returns. Users
that need more (the GPU request, the reservation) build it from the record, never from the dict.

``decode_pod`` is pure and never raises: a malformed object keeps what could be read, and the
first structural problem is recorded where ``core.request.parse_pod_request`` reports it, in the
same order the containers are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

POD_SUCCEEDED = "Succeeded"
POD_FAILED = "Failed"


def pod_finished(phase: str) -> bool:
    """Whether a pod with this ``status.phase`` holds nothing any more (its share and quota are free).

    The one rule (docs/architecture.md, "Quota enforcement"): Succeeded or Failed. A pod that is
    gone holds nothing either; that is the caller's delete. A deletionTimestamp alone does not
    finish a pod: during the grace period its containers run and the kubelet holds the devices.
    Terminated containers in a Running pod do not either (a restartPolicy may start them again).
    """
    return phase in (POD_SUCCEEDED, POD_FAILED)


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str  # "#<index>" when the container has no name
    kind: str  # init | sidecar | app
    resources: Any  # the container's ``resources`` value as sent (core.request validates it)


@dataclass(frozen=True, slots=True)
class PodObject:
    namespace: str  # "" when unset
    name: str
    uid: str = ""
    node: str = ""  # spec.nodeName, "" while pending
    phase: str = ""  # status.phase, "" when unset
    created: str = ""  # metadata.creationTimestamp (RFC 3339)
    deleting: bool = False  # deletionTimestamp set: still holds its share until it is finished or gone
    priority: int = 0  # spec.priority
    scheduler_name: str = ""  # spec.schedulerName, "" when unset
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    containers: tuple[ContainerSpec, ...] = ()  # every well-formed container: init (and sidecars), then app
    # The first structural problem, and how many of `containers` come before it in spec order.
    shape_error: str = ""
    shape_error_at: int = 0
    meta_maps_error: str = ""  # annotations or labels are not maps (reported only for a GPU pod)

    @property
    def finished(self) -> bool:
        return pod_finished(self.phase)


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def decode_pod(obj: Any) -> PodObject:
    """The pod as the API server (or a snapshot file, or an AdmissionReview) sends it. Never raises."""
    if not isinstance(obj, Mapping):
        return PodObject(namespace="", name="", shape_error="pod: expected a JSON object")
    raw_meta = obj.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    raw_spec = obj.get("spec")
    spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
    status = obj.get("status")
    status = status if isinstance(status, Mapping) else {}
    shape_error = ""
    if not isinstance(raw_spec, Mapping) or (raw_meta and not isinstance(raw_meta, Mapping)):
        shape_error = "pod: spec and metadata must be objects"
    containers: list[ContainerSpec] = []
    error_at = 0
    for key, default_kind in (("initContainers", "init"), ("containers", "app")):
        items = spec.get(key)
        if items is None:
            items = []
        if not isinstance(items, list):
            if not shape_error:
                shape_error, error_at = f"pod: spec.{key} must be a list", len(containers)
            continue
        for i, c in enumerate(items):
            if not isinstance(c, Mapping):
                if not shape_error:
                    shape_error, error_at = f"pod: spec.{key}[{i}] must be an object", len(containers)
                continue
            kind = "sidecar" if default_kind == "init" and c.get("restartPolicy") == "Always" else default_kind
            name = c.get("name")
            containers.append(ContainerSpec(
                name=name if isinstance(name, str) and name else f"#{i}",
                kind=kind,
                resources=c.get("resources"),
            ))
    raw_annotations = meta.get("annotations") or {}
    raw_labels = meta.get("labels") or {}
    maps_error = ""
    if not isinstance(raw_annotations, Mapping) or not isinstance(raw_labels, Mapping):
        maps_error = "pod: metadata.annotations and metadata.labels must be maps"
    prio = spec.get("priority")
    return PodObject(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        node=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        deleting=meta.get("deletionTimestamp") is not None,
        priority=prio if isinstance(prio, int) and not isinstance(prio, bool) else 0,
        scheduler_name=str(spec.get("schedulerName") or ""),
        labels=_str_map(raw_labels),
        annotations=_str_map(raw_annotations),
        containers=tuple(containers),
        shape_error=shape_error,
        shape_error_at=error_at if shape_error.startswith("pod: spec.") else 0,
        meta_maps_error=maps_error,
    )
