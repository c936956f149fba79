"""`fracgpu extender --snapshot FILE`: the cache loaded from a `kubectl get -o yaml` style List.

Parsing of the objects is the core's (`fracgpu.core.records`, shared with `fracgpu simulate`);
this module reads the file and feeds the Scheduler. Binds update the in-memory snapshot only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.records import SnapshotDoc, namespace_record, node_record, pod_record
from fracgpu.extender.scheduler import Scheduler
from fracgpu.kube.snapshot import SnapshotError, read_snapshot

log = logging.getLogger(__name__)

__all__ = ["SnapshotBinder", "SnapshotError", "load_file", "load_into", "read_snapshot"]


def load_into(scheduler: Scheduler, doc: SnapshotDoc) -> None:
    """Feed every object of the snapshot to the scheduler and mark it synced."""
    for ns in doc.namespaces:
        scheduler.apply_namespace(namespace_record(ns))
    for raw in doc.tenant_quotas:
        try:
            scheduler.apply_tenant_quota(TenantQuota.from_dict(raw))
        except InvalidDocument as e:
            log.warning("snapshot tenantquota skipped error=%s", e)
    for node in doc.nodes:
        scheduler.apply_node(node_record(node))
    for pod in doc.pods:
        scheduler.apply_pod(pod_record(pod))
    scheduler.mark_synced()


@dataclass(slots=True)
class SnapshotBinder:
    """Binds into the in-memory snapshot: records the Binding, writes nothing anywhere."""

    bindings: list[tuple[str, str, str, Mapping[str, str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bind_pod(
        self, namespace: str, name: str, node: str, *, annotations: Mapping[str, str] | None = None,
        uid: str | None = None,
    ) -> None:
        with self._lock:
            self.bindings.append((namespace, name, node, dict(annotations or {})))


def load_file(scheduler: Scheduler, path: str | Path) -> dict[str, Any]:
    doc = read_snapshot(path)
    load_into(scheduler, doc)
    return {"nodes": len(doc.nodes), "pods": len(doc.pods), "namespaces": len(doc.namespaces),
            "tenantquotas": len(doc.tenant_quotas)}
